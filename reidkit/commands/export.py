"""`reidkit export`: a checkpoint to ONNX or TorchScript, with a parity check against PyTorch."""

from __future__ import annotations

import argparse

from reidkit.commands import add_from_argument, add_trust_argument
from reidkit.commands._args import side


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `export` parser."""
    p = sub.add_parser(
        "export",
        help="export a model to ONNX or TorchScript",
        description="Export a checkpoint's eval feature (dynamic batch axis; flip TTA is the caller's). "
        "The input size, mean and std are stored in the file's metadata. Models that use the "
        "camera (ViT with SIE) take a second input 'camids' (int64, one per image). "
        "Both formats serve `reidkit extract --weights/--onnx`.",
    )
    p.add_argument("--weights", required=True, help="a checkpoint: reidkit's, or another toolkit's (see --from)")
    add_from_argument(p)
    p.add_argument("--format", dest="fmt", choices=["onnx", "torchscript"], default="onnx")
    p.add_argument("--out", required=True, help="output file (.onnx or .ts/.pt)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument(
        "--size",
        type=side("--size"),
        nargs=2,
        metavar=("H", "W"),
        default=None,
        help="input size (default: the checkpoint's input_size)",
    )
    p.add_argument("--no-check", action="store_true", help="skip the parity check against PyTorch")
    p.set_defaults(func=_export)
    add_trust_argument(p)


def _export(args: argparse.Namespace) -> int:
    from reidkit.export import export_model, parity
    from reidkit.models.loading import load_model

    model = load_model(args.weights, fmt=args.weights_format)
    out = export_model(args.weights, fmt=args.fmt, out=args.out, opset=args.opset, size=args.size, model=model)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    if not args.no_check:
        diff = parity(args.weights, out, batch_sizes=(1, 3), model=model, trust=True)  # the file just written
        print(f"parity vs PyTorch at batch 1 and 3: max abs diff {diff:.2e}")
    return 0
