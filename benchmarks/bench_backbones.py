"""Backbone table: parameters, FLOPs at 256x128, inference images/s (PyTorch and ONNX Runtime).

    python -m benchmarks.bench_backbones [--models resnet50,osnet_x1_0,...] [--batch 32]
                                         [--budget 3] [--device cpu] [--no-onnx]

Per backbone (no head, random weights: speed does not depend on the values):

* parameters of the backbone;
* FLOPs of one 256x128 image counted by ``torch.utils.flop_counter.FlopCounterMode``
  (2 per multiply-add; attention counted through the math SDPA path, since the counter does not
  see the fused CPU kernel). Papers usually quote multiply-adds ("GMACs" = GFLOPs / 2);
* PyTorch images/s at the given batch (``forward_features``, eval, no grad) as the best of the
  timed batches within ``--budget`` seconds, and the ratio to ResNet-50 measured in the same run
  (ResNet-50 is always measured first, as the reference);
* ONNX Runtime images/s of the same graph exported with a dynamic batch (CPU provider).

Writes ``benchmarks/results/backbones.json`` and ``backbones.md``. CPU figures on a shared
machine are noisy; the ratios to ResNet-50 from the same run are the comparable part.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.common import RESULTS_DIR, machine_info, write_result

# name -> (registry name, builder options)
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "resnet50": ("resnet50", {}),
    "osnet_x1_0": ("osnet_x1_0", {}),
    "osnet_x0_25": ("osnet_x0_25", {}),
    "osnet_ain_x1_0": ("osnet_ain_x1_0", {}),
    "vit_small_patch16": ("vit_small_patch16", {}),
    "vit_base_patch16": ("vit_base_patch16", {}),
    "vit_base_patch16 (stride 12)": ("vit_base_patch16", {"stride_size": 12}),
    "swin_tiny": ("swin_tiny", {"semantic_weight": 0.2}),
    "swin_small": ("swin_small", {"semantic_weight": 0.2}),
    "swin_base": ("swin_base", {"semantic_weight": 0.2}),
}
SIZE = (256, 128)


class _Features(nn.Module):
    """forward = the backbone's forward_features (one tensor in, one out: what export traces)."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's feature map."""
        return self.backbone.forward_features(x)


def count_flops(model: nn.Module) -> int:
    """FLOPs of one 256x128 image (2 per multiply-add), attention included."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 3, *SIZE)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return int(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def torch_speed(model: nn.Module, batch: int, budget: float, device: torch.device) -> float:
    """Best images/s over the batches that fit in ``budget`` seconds (after one warm-up batch)."""
    model = model.to(device)
    x = torch.randn(batch, 3, *SIZE, device=device)
    best = 0.0
    with torch.no_grad():
        model(x)
        _sync(device)
        start = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            model(x)
            _sync(device)
            best = max(best, batch / (time.perf_counter() - t0))
            if time.perf_counter() - start > budget:
                break
    return best


def onnx_speed(model: nn.Module, batch: int, budget: float, folder: Path) -> tuple[float, float]:
    """ONNX Runtime (CPU) images/s and the max abs difference to PyTorch on the timed batch."""
    import onnxruntime as ort

    path = folder / "model.onnx"
    x = torch.randn(batch, 3, *SIZE)
    with torch.no_grad():
        torch.onnx.export(
            model.cpu(),
            (x[:2],),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["images"],
            output_names=["features"],
            dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
        )
        ref = model(x).numpy()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feed = {"images": x.numpy()}
    out = sess.run(None, feed)[0]
    best = 0.0
    start = time.perf_counter()
    while True:
        t0 = time.perf_counter()
        sess.run(None, feed)
        best = max(best, batch / (time.perf_counter() - t0))
        if time.perf_counter() - start > budget:
            break
    return best, float(abs(out - ref).max())


def run(models: list[str], batch: int, budget: float, device: str, with_onnx: bool) -> dict[str, Any]:
    """Measure every model (ResNet-50 first, as the reference); returns rows and the machine info."""
    from reidkit.models.backbones import build_backbone

    dev = torch.device(device)
    names = ["resnet50"] + [m for m in models if m != "resnet50"]
    rows: list[dict[str, Any]] = []
    ref_speed = None
    for name in names:
        reg, opts = MODELS[name]
        torch.manual_seed(0)
        model = _Features(build_backbone(reg, **opts)).eval()
        params = sum(p.numel() for p in model.parameters())
        flops = count_flops(model)
        speed = torch_speed(model, batch, budget, dev)
        ref_speed = speed if name == "resnet50" else ref_speed
        row: dict[str, Any] = {
            "model": name,
            "params_m": params / 1e6,
            "gflops": flops / 1e9,
            "torch_img_s": speed,
            "ratio_to_resnet50": speed / ref_speed,
        }
        if with_onnx:
            with tempfile.TemporaryDirectory() as tmp:
                row["onnx_img_s"], row["onnx_max_abs_diff"] = onnx_speed(model.cpu(), batch, budget, Path(tmp))
        rows.append(row)
        print(f"{name}: {row}", flush=True)
        del model
    return {"rows": rows, "batch": batch, "size": list(SIZE), "device": device, "budget_s": budget}


def markdown(result: dict[str, Any]) -> str:
    """The results as a Markdown table."""
    info = result.get("machine") or machine_info()
    dev = result["device"]
    lines = [
        f"Backbones at {result['size'][0]}x{result['size'][1]}, batch {result['batch']}, device {dev} "
        f"(torch {info['torch']}, {info['torch_threads']} threads, {info['cpu_count']} CPUs, "
        f"load {info['load_avg_1m']:.1f}); `python -m benchmarks.bench_backbones`.",
        "FLOPs: 2 per multiply-add (GMACs = GFLOPs / 2). ResNet-50 with the ReID last stride 1; Swin with "
        "SOLIDER's semantic weight and window-7 padding; no head. Speeds are the best batch within a "
        f"{result['budget_s']} s budget; the ratio is to ResNet-50 in the same run (PyTorch).",
        "",
        "| backbone | params (M) | GFLOPs | torch img/s | x ResNet-50 | ONNX Runtime img/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        onnx = f"{r['onnx_img_s']:.1f}" if "onnx_img_s" in r else "-"
        lines.append(
            f"| {r['model']} | {r['params_m']:.2f} | {r['gflops']:.2f} | {r['torch_img_s']:.1f} | "
            f"{r['ratio_to_resnet50']:.2f} | {onnx} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Command-line entry."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated names: " + ", ".join(MODELS))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--budget", type=float, default=3.0, help="seconds of timed batches per model and runtime")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch/ORT threads (0: torch's default)")
    ap.add_argument("--no-onnx", action="store_true")
    ap.add_argument("--name", default="backbones", help="results file stem in benchmarks/results/")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; expected some of {', '.join(MODELS)}")
    result = run(models, args.batch, args.budget, args.device, not args.no_onnx)
    path = write_result(args.name, result)
    result["machine"] = machine_info()
    md = RESULTS_DIR / f"{args.name}.md"
    md.write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {path} and {md}")


if __name__ == "__main__":
    main()
