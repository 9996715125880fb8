"""Embedder speed: eager PyTorch vs BatchNorm-folded PyTorch vs ONNX Runtime (float and int8), one thread.

    python -m benchmarks.bench_embed [--threads 1] [--batches 1 8 32 64] [--size 256 128] [--seconds 2]

Models: the default embedder (ImageNet EfficientNet-Lite0, GeM, 1280-d: what ``reidkit video`` and
``index build`` use without --weights) and OSNet x0.25 (a ReID backbone with BNNeck). Inputs are
synthetic person crops, normalised (decode and resize excluded: they are the same for every engine). Each
figure is crops/s (median of timed windows after a warm-up); the ratio is to eager PyTorch of the
same model and batch in this run. The folded and ONNX outputs are checked against eager (max abs
difference printed) so a speed-up never hides a different feature; the int8 model
(reidkit.models.quantize) changes features by design: its lowest cosine similarity to eager's features
is printed instead.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch


def _models(size: tuple[int, int]) -> dict[str, torch.nn.Module]:
    from reidkit.models.build import ModelConfig, build_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lite = build_model(ModelConfig(backbone="efficientnet_lite0", pretrained=True, pooling="gem", neck="none"), 1)
        osnet = build_model(ModelConfig(backbone="osnet_x0_25", pretrained=False), 751)
    for m in (lite, osnet):
        m.input_size = list(size)
        m.eval()
    return {"efficientnet_lite0": lite, "osnet_x0_25": osnet}


def _rate(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, seconds: float) -> float:
    """Median crops/s of ``fn(x)`` over timed windows of about ``seconds / 3`` each, after a warm-up."""
    with torch.no_grad():
        fn(x)
        fn(x)
        rates = []
        for _ in range(3):
            n, t0 = 0, time.perf_counter()
            while True:
                fn(x)
                n += 1
                dt = time.perf_counter() - t0
                if dt >= seconds / 3:
                    break
            rates.append(n * x.shape[0] / dt)
    return statistics.median(rates)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--size", type=int, nargs=2, default=[256, 128])
    p.add_argument("--seconds", type=float, default=2.0, help="timed seconds per figure")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    size = (args.size[0], args.size[1])
    from reidkit.export import export_model_to
    from reidkit.models.exported import OnnxFeatureModel
    from reidkit.models.fold import fold_batchnorm
    from reidkit.models.quantize import calibration_crops, quantize_onnx

    results: dict[str, Any] = {"threads": args.threads, "size": list(size), "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in _models(size).items():
            folded = fold_batchnorm(model)
            onnx = OnnxFeatureModel(export_model_to(model, Path(tmp) / f"{name}.onnx", size=size), threads=args.threads)
            int8 = OnnxFeatureModel(
                quantize_onnx(onnx.path, Path(tmp) / f"{name}-int8.onnx", size, model.mean, model.std),
                threads=args.threads,
            )
            engines = {"eager": model, "folded": folded, "onnxruntime": onnx, "int8": int8}
            rows = {}
            for b in args.batches:
                x = torch.from_numpy(calibration_crops(size, model.mean, model.std, n=b, seed=1))  # unseen crops
                with torch.no_grad():
                    ref = model(x)
                    diffs = {
                        k: float((e(x) - ref).abs().max()) for k, e in engines.items() if k not in ("eager", "int8")
                    }
                    cos = torch.nn.functional.cosine_similarity(int8(x), ref, dim=1)
                rates = {k: _rate(e, x, args.seconds) for k, e in engines.items()}
                rows[b] = {
                    "crops_per_s": rates,
                    "ratio_to_eager": {k: v / rates["eager"] for k, v in rates.items()},
                    "max_abs_diff": diffs,
                    "feature_scale": float(ref.abs().max()),
                    "int8_min_cosine": float(cos.min()),
                }
                print(
                    f"{name:18s} batch {b:3d}: "
                    + "  ".join(f"{k} {v:7.1f}/s (x{rows[b]['ratio_to_eager'][k]:.2f})" for k, v in rates.items())
                    + "  |diff| "
                    + " ".join(f"{k} {v:.1e}" for k, v in diffs.items())
                    + f"  int8 cos >= {float(cos.min()):.3f}",
                    flush=True,
                )
            results["models"][name] = rows
    if args.out:
        from reidkit.utils.io import write_json

        write_json(args.out, results)
    return results


if __name__ == "__main__":
    main()
