"""The whole bot_r50 recipe (120 epochs) on a Market1501-sized synthetic set, timed end to end.

    python -m benchmarks.full_run --device cuda --out /path/full_run      # run again until "done"
    python -m benchmarks.full_run --quick                                  # CPU check: tiny everything

Phases, each timed and recorded in ``<out>/full_run.json`` (all files stay under ``--out``):
1. generate: 1,501 synthetic identities at 256x128 (751 train ids, train split trimmed to 12,936
   images, as Market1501); reused when present.
2. train: ``reidkit.train("bot_r50", ...)`` (engine Python API) in a child process with
   ``resume=auto``. With ``--max-seconds`` the child is stopped at the deadline and the command
   exits with status 3: run the same command again and training resumes from ``last.pt``
   (saved every epoch); the train time counts each invocation up to its last saved checkpoint.
   Decoding into the uint8 cache happens inside the trainer and is part of the train time.
3. evaluate: ``reidkit.engine.api.test`` on the final weights (decode query/gallery, extract,
   rank), then once more with k-reciprocal re-ranking.
Pretrained ImageNet weights need the network or a local file (``--pretrained PATH``); the
default trains from scratch, which times the same work (the accuracy is then not the paper's).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import python

PRESETS = {
    "full": {
        "ids": 1501,
        "images_per_id": 18,
        "size": [256, 128],
        "n_train": 12936,
        "backbone": "resnet50",
        "epochs": 120,
        "eval_period": 10,
        "p": 16,
        "k": 4,
    },
    "quick": {
        "ids": 20,
        "images_per_id": 6,
        "size": [64, 32],
        "n_train": None,
        "backbone": "resnet18",
        "epochs": 2,
        "eval_period": 2,
        "p": 8,
        "k": 4,
    },
}


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _save(path: Path, data: dict[str, Any]) -> None:
    from reidkit.utils.io import write_json

    write_json(path, data)


def overrides(p: dict[str, Any]) -> dict[str, Any]:
    """Engine overrides: the recipe as is, except data location, device, precision and size knobs."""
    ov: dict[str, Any] = {
        "output_dir": p["train_dir"],
        "device": p["device"],
        "seed": p["seed"],
        "resume": "auto",  # a run stopped at --max-seconds continues; a new one starts fresh
        "compile": bool(p["compile"]),
        "data": {
            "datasets": [{"name": "market1501", "root": p["root"]}],
            "size": p["size"],
            "loader": p["loader"],
            "num_workers": p["num_workers"],
            "cache_dir": p["cache_dir"],
            "channels_last": p["device"] != "cpu",
        },
        "model": {"backbone": p["backbone"], "pretrained": p["pretrained"]},
        "solver": {"amp": p["amp"], "eval_period": p["eval_period"]},
        "sampler": {"p": p["p"], "k": p["k"]},
    }
    if p["epochs"] != 120:
        # A shortened run keeps the recipe's shape: warmup and lr steps scaled with it.
        e = p["epochs"]
        ov["solver"].update(
            {
                "max_epochs": e,
                "warmup_epochs": max(1, round(e * 10 / 120)),
                "steps": [max(1, round(e * 40 / 120)), max(2, round(e * 70 / 120))],
            }
        )
    return ov


def _train_worker(p: dict[str, Any]) -> None:
    import reidkit

    if p.get("threads"):
        import torch

        torch.set_num_threads(int(p["threads"]))
    res = reidkit.train("bot_r50", **overrides(p))
    print(json.dumps({"epoch": res.get("epoch"), "mean": res.get("mean"), "train": res.get("train")}, default=float))


def _eval_worker(p: dict[str, Any]) -> None:
    from reidkit.engine.api import test

    ov = overrides(p)
    ov.pop("resume")
    ov.pop("compile")
    ov["test"] = {"rerank": bool(p["rerank"])}
    t0 = time.perf_counter()
    res = test("bot_r50", p["weights"], out_dir=p["eval_dir"], overrides=ov)
    print(json.dumps({"seconds": time.perf_counter() - t0, "mean": res.get("mean")}, default=float))


def _child(kind: str, p: dict[str, Any], deadline: float | None) -> tuple[int, str, str]:
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(
        [python(), "-m", "benchmarks.full_run", "--worker", kind, "--params", json.dumps(p)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=root,
        env=env,
    )
    try:
        out, err = proc.communicate(timeout=None if deadline is None else max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        return -999, out, err
    return proc.returncode, out, err


def main(argv: list[str] | None = None) -> int:
    """Run (or continue) the timed end-to-end run; 0 done, 3 stopped at --max-seconds, 1 failed."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.full_run", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny CPU check of the machinery")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "full_run"))
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--amp", choices=["none", "bf16", "fp16"], default=None, help="default bf16 on CUDA, else none")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (config key `compile`)")
    ap.add_argument("--loader", choices=["cached", "pil"], default="cached")
    ap.add_argument("--pretrained", default="false", help="false, true (download) or a local weights file")
    ap.add_argument("--num-workers", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="stop training at this wall time (exit 3; rerun to resume), e.g. 540 under a 10-min limit",
    )
    ap.add_argument("--no-rerank", action="store_true", help="skip the re-ranking evaluation")
    ap.add_argument("--data-root", default=None, help="use this Market-format tree instead of generating one")
    ap.add_argument("--eval-period", type=int, default=None, help="validation every N epochs (default: the preset's)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--params", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        (_train_worker if args.worker == "train" else _eval_worker)(json.loads(args.params))
        return 0
    import torch

    from benchmarks.bench_train import prepare_synthetic
    from benchmarks.run import machine

    start = time.time()
    deadline = None if args.max_seconds is None else start + args.max_seconds
    preset = dict(PRESETS["quick" if args.quick else "full"])
    if args.epochs is not None:
        preset["epochs"] = args.epochs
    if args.eval_period is not None:
        preset["eval_period"] = args.eval_period
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    amp = args.amp or ("bf16" if device == "cuda" else "none")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "full_run.json"
    state = _load(state_path)
    state.setdefault("machine", machine())
    state["settings"] = {
        **preset,
        "device": device,
        "amp": amp,
        "compile": args.compile,
        "loader": args.loader,
        "pretrained": args.pretrained,
        "seed": args.seed,
        "recipe": "bot_r50",
    }
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

    # 1. data
    if args.data_root and "generate_s" not in state:
        state["generate_s"], state["data_root"] = 0.0, str(Path(args.data_root).resolve())
    if "generate_s" not in state:
        t0 = time.perf_counter()
        root = prepare_synthetic(
            out / "data",
            preset["ids"],
            preset["images_per_id"],
            preset["size"],
            n_train=preset["n_train"],
            seed=args.seed,
            workers=cores,
        )
        state["generate_s"], state["data_root"] = time.perf_counter() - t0, str(root)
        _save(state_path, state)
        print(f"generated {root} in {state['generate_s']:.0f} s", flush=True)
    pretrained: Any = {"false": False, "true": True}.get(args.pretrained.lower(), args.pretrained)
    p = {
        "root": state["data_root"],
        "train_dir": str(out / "train"),
        "eval_dir": str(out / "eval"),
        "cache_dir": str(out / "cache"),
        "device": device,
        "seed": args.seed,
        "compile": args.compile,
        "size": preset["size"],
        "loader": args.loader,
        "backbone": preset["backbone"],
        "pretrained": pretrained,
        "amp": amp,
        "epochs": preset["epochs"],
        "eval_period": preset["eval_period"],
        "p": preset["p"],
        "k": preset["k"],
        "num_workers": args.num_workers if args.num_workers is not None else min(8, cores),
        "threads": args.threads if args.threads is not None else (1 if args.quick and device == "cpu" else None),
    }

    # 2. train (resumable)
    last = Path(p["train_dir"]) / "last.pt"
    runs = state.setdefault("train_invocations", [])
    if runs and "seconds" not in runs[-1]:
        # The previous invocation was killed from outside: count it up to its last checkpoint.
        began = runs[-1]["started"]
        runs[-1]["seconds"] = max(0.0, last.stat().st_mtime - began) if last.exists() else 0.0
        runs[-1]["killed"] = True
    if "train_result" not in state:
        runs.append({"started": time.time()})
        _save(state_path, state)
        rc, so, se = _child("train", p, deadline)
        inv = runs[-1]
        if rc == 0:
            inv["seconds"] = time.time() - inv["started"]
            state["train_result"] = json.loads(so.strip().splitlines()[-1])
        else:
            inv["seconds"] = max(0.0, last.stat().st_mtime - inv["started"]) if last.exists() else 0.0
            inv["stopped"] = "max-seconds" if rc == -999 else f"exit {rc}"
            if rc != -999:
                inv["stderr"] = se[-3000:]
        state["train_s"] = sum(r.get("seconds", 0.0) for r in runs)
        _save(state_path, state)
        if rc == -999:
            print(
                f"stopped at --max-seconds after {inv['seconds']:.0f} s of saved progress; run again to resume",
                flush=True,
            )
            return 3
        if rc != 0:
            print(f"training failed:\n{se[-3000:]}", file=sys.stderr)
            return 1
    # 3. evaluate the final weights (and with re-ranking)
    for key, rerank in (("eval", False), ("eval_rerank", True)):
        if key in state or (rerank and args.no_rerank):
            continue
        rc, so, se = _child(
            "eval",
            {**p, "weights": str(Path(p["train_dir"]) / "model.pt"), "rerank": rerank, "eval_dir": str(out / key)},
            deadline,
        )
        if rc != 0:
            state[key + "_error"] = se[-3000:] if rc != -999 else "stopped at --max-seconds"
            _save(state_path, state)
            print(f"{key} {'stopped' if rc == -999 else 'failed'}:\n{se[-2000:]}", file=sys.stderr)
            return 3 if rc == -999 else 1
        state[key] = json.loads(so.strip().splitlines()[-1])
        state.pop(key + "_error", None)
        _save(state_path, state)
    state["total_s"] = (
        state.get("generate_s", 0.0)
        + state.get("train_s", 0.0)
        + sum(state[k]["seconds"] for k in ("eval", "eval_rerank") if k in state)
    )
    state["done"] = True
    _save(state_path, state)
    tr = state.get("train_result") or {}
    mean = tr.get("mean") or {}
    n_img = (preset["n_train"] or 0) * preset["epochs"]
    print("| phase | seconds | notes |\n|---|---|---|")
    print(f"| generate | {state['generate_s']:.0f} | {preset['ids']} ids at {preset['size'][0]}x{preset['size'][1]} |")
    print(
        f"| train | {state['train_s']:.0f} | {preset['epochs']} epochs, {len(runs)} invocation(s), {amp}"
        + (f", ~{n_img / state['train_s']:.0f} img/s" if n_img and state["train_s"] else "")
        + " |"
    )
    for k in ("eval", "eval_rerank"):
        if k in state:
            m = state[k].get("mean") or {}
            print(
                f"| {k} | {state[k]['seconds']:.0f} | mAP {m.get('mAP', float('nan')):.2f}, "
                f"rank-1 {m.get('rank1', float('nan')):.2f} |"
            )
    print(f"| total | {state['total_s']:.0f} | final train-time mAP {mean.get('mAP', float('nan')):.2f} |")
    print(f"\nwritten {state_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
