"""Accuracy equivalence: the fast pipeline (cached, on-device augmentation) and the DataLoader path
(PIL, per-image transforms) trained with the same data and seed must reach the same final mAP
(within --tolerance points, default 1).

    python -m benchmarks.parity --quick                 # CPU: tiny set, resnet18, a few epochs
    python -m benchmarks.parity --device cuda           # GPU: bot_r50 on a mid-size synthetic set

Both runs use the packaged bot_r50 recipe through the engine's Python API (``reidkit.train``) with
identical settings except ``data.loader``; the precision is the same on both sides (``--amp``,
default the recipe's), so the loader is the only difference. Writes ``<out>/parity.json``; exit
status 1 when the difference exceeds the tolerance.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PRESETS = {
    # ~150 train ids x 18 images at full resolution: long enough to converge well above chance.
    "full": {
        "ids": 300,
        "images_per_id": 18,
        "size": [256, 128],
        "backbone": "resnet50",
        "epochs": 30,
        "p": 16,
        "k": 4,
    },
    "quick": {"ids": 40, "images_per_id": 8, "size": [64, 32], "backbone": "resnet18", "epochs": 6, "p": 8, "k": 4},
}


def schedule(epochs: int) -> dict[str, Any]:
    """The recipe's schedule (warmup 10, steps 40/70 of 120 epochs) scaled to `epochs`."""
    return {
        "max_epochs": epochs,
        "warmup_epochs": max(1, round(epochs * 10 / 120)),
        "steps": [max(1, round(epochs * 40 / 120)), max(2, round(epochs * 70 / 120))],
        "eval_period": epochs,
        "checkpoint_period": epochs,
    }


def final_map(result: dict[str, Any]) -> float:
    """Final mAP (percent) from a ``reidkit.train`` result."""
    mean = result.get("mean") or {}
    if "mAP" in mean:
        return float(mean["mAP"])
    first = next(iter((result.get("datasets") or {}).values()))
    return float(first["mAP"])


def train_one(p: dict[str, Any]) -> dict[str, Any]:
    """One training run with loader `p["loader"]`; returns mAP/rank-1 and wall time."""
    import reidkit

    overrides: dict[str, Any] = {
        "output_dir": p["out"],
        "seed": p["seed"],
        "device": p["device"],
        "data": {
            "datasets": [{"name": "market1501", "root": p["root"]}],
            "size": p["size"],
            "loader": p["loader"],
            "num_workers": p["num_workers"],
        },
        "model": {"backbone": p["backbone"], "pretrained": p["pretrained"]},
        "sampler": {"p": p["p"], "k": p["k"]},
        "solver": {**schedule(p["epochs"]), "amp": p["amp"]},
    }
    if p.get("threads"):
        import torch

        torch.set_num_threads(int(p["threads"]))
    t0 = time.perf_counter()
    res = reidkit.train("bot_r50", **overrides)
    mean = res.get("mean") or {}
    return {
        "loader": p["loader"],
        "mAP": final_map(res),
        "rank1": mean.get("rank1"),
        "mINP": mean.get("mINP"),
        "epochs": res.get("epoch"),
        "seconds": time.perf_counter() - t0,
        "output_dir": p["out"],
    }


def main(argv: list[str] | None = None) -> int:
    """Generate the data once, train with both loaders (one fresh process each), compare mAP."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.parity", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "parity"))
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--ids", type=int, default=None, help="synthetic identities (half train, half test)")
    ap.add_argument("--backbone", default=None)
    ap.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none", help="same on both sides")
    ap.add_argument("--pretrained", default="false", help="false, true or a local weights file")
    ap.add_argument("--num-workers", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads per run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tolerance", type=float, default=1.0, help="max |mAP difference| in points")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(train_one(json.loads(args.worker))))
        return 0
    import os

    import torch

    from benchmarks.bench_train import prepare_synthetic

    preset = dict(PRESETS["quick" if args.quick else "full"])
    for key in ("epochs", "ids", "backbone"):
        if getattr(args, key) is not None:
            preset[key] = getattr(args, key)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    t0 = time.perf_counter()
    root = prepare_synthetic(out / "data", preset["ids"], preset["images_per_id"], preset["size"], workers=cores)
    gen_s = time.perf_counter() - t0
    pretrained: Any = {"false": False, "true": True}.get(args.pretrained.lower(), args.pretrained)
    threads = args.threads if args.threads is not None else (1 if args.quick and device == "cpu" else None)
    runs = {}
    for loader in ("cached", "pil"):
        p = {
            "loader": loader,
            "out": str(out / loader),
            "root": str(root),
            "seed": args.seed,
            "device": device,
            "size": preset["size"],
            "backbone": preset["backbone"],
            "pretrained": pretrained,
            "p": preset["p"],
            "k": preset["k"],
            "epochs": preset["epochs"],
            "amp": args.amp,
            "threads": threads,
            "num_workers": args.num_workers if args.num_workers is not None else min(8, cores),
        }
        # A fresh process per run: no state (RNG, allocator, compiled kernels) leaks between sides.
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.parity", "--worker", json.dumps(p)],
            capture_output=True,
            text=True,
            cwd=str(Path(__file__).resolve().parents[1]),
        )
        if proc.returncode != 0:
            runs[loader] = {"error": proc.stderr[-3000:]}
            print(f"{loader}: failed\n{proc.stderr[-3000:]}", file=sys.stderr)
        else:
            runs[loader] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{loader}: mAP {runs[loader]['mAP']:.2f} in {runs[loader]['seconds']:.0f} s", flush=True)
    ok = all("error" not in r for r in runs.values())
    diff = abs(runs["cached"]["mAP"] - runs["pil"]["mAP"]) if ok else None
    result = {
        "preset": "quick" if args.quick else "full",
        "device": device,
        "data_root": str(root),
        "generate_s": gen_s,
        "settings": preset,
        "amp": args.amp,
        "seed": args.seed,
        "runs": runs,
        "map_diff_points": diff,
        "tolerance_points": args.tolerance,
        "passed": bool(ok and diff is not None and diff <= args.tolerance),
    }
    if ok and runs["pil"]["seconds"]:
        result["wall_ratio_pil_over_cached"] = runs["pil"]["seconds"] / runs["cached"]["seconds"]
    (out / "parity.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    print("| loader | mAP | rank-1 | seconds |\n|---|---|---|---|")
    for name, r in runs.items():
        if "error" not in r:
            print(
                f"| {name} | {r['mAP']:.2f} | {r['rank1'] if r['rank1'] is None else round(r['rank1'], 2)} "
                f"| {r['seconds']:.0f} |"
            )
    print(
        f"\n|mAP diff| = {diff if diff is None else round(diff, 3)} points (tolerance {args.tolerance}): "
        f"{'PASS' if result['passed'] else 'FAIL'}; written {out / 'parity.json'}"
    )
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
