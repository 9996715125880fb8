"""The steps of ``benchmarks/gpu_run.sh`` that are not already a benchmark module, and its summary.

    python -m benchmarks.gpu_steps tag                      # the GPU name slug (or "cpu-dryrun")
    python -m benchmarks.gpu_steps data    --out DIR [--tiny]
    python -m benchmarks.gpu_steps full    --out DIR [--tiny] --seconds 150
    python -m benchmarks.gpu_steps usl     --out DIR [--tiny] [--ghost]
    python -m benchmarks.gpu_steps video   --out DIR [--tiny]
    python -m benchmarks.gpu_steps summary --out DIR

Each step writes ``<out>/<tag>-<step>.json`` atomically when it finishes (a step killed by its
timeout leaves no file, and the summary says so); the summary reads every JSON present and
prints one markdown table (also written to ``<out>/<tag>-summary.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import python

ROOT = Path(__file__).resolve().parents[1]

# Market1501 sizes (as benchmarks.run's "full" preset, so the generated tree is shared with it)
# and the dry-run's tiny sizes.
SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "ids": 1501,
        "images_per_id": 18,
        "size": [256, 128],
        "n_train": 12936,
        "backbone": "resnet50",
        "p": 16,
        "k": 4,
        "usl_batch": 256,
        "usl_instances": 16,
        "usl_iters": 200,
        "bn_groups": 4,
        "scene": {"cams": 3, "ids": 8, "frames": 120, "size": [240, 320]},
    },
    "tiny": {
        "ids": 16,
        "images_per_id": 6,
        "size": [64, 32],
        "n_train": None,
        "backbone": "resnet18",
        "p": 4,
        "k": 4,
        "usl_batch": 16,
        "usl_instances": 4,
        "usl_iters": 2,
        "bn_groups": 2,
        "scene": {"cams": 1, "ids": 2, "frames": 12, "size": [96, 128]},
    },
}


def gpu_tag() -> str:
    """The GPU's name as a file-name slug (``nvidia-h200``), or ``cpu-dryrun`` without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return "cpu-dryrun"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-")


def data_dir(out: Path, tiny: bool) -> Path:
    """Where the shared synthetic Market tree lives (benchmarks.run's own layout for the full size)."""
    s = SIZES["tiny" if tiny else "full"]
    name = f"{'tiny' if tiny else 'full'}-{s['ids']}x{s['images_per_id']}-{s['size'][0]}x{s['size'][1]}"
    return out / "_data" / name


def _write(out: Path, step: str, data: dict[str, Any]) -> Path:
    from reidkit.utils.io import write_json

    data.setdefault("step", step)
    data.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S"))
    path = out / f"{gpu_tag()}-{step}.json"
    write_json(path, data)
    return path


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def step_data(out: Path, tiny: bool) -> dict[str, Any]:
    """Generate (or reuse) the synthetic Market-format tree that the later steps share."""
    from benchmarks.bench_train import prepare_synthetic

    s = SIZES["tiny" if tiny else "full"]
    d = data_dir(out, tiny)
    d.mkdir(parents=True, exist_ok=True)
    (out / "_data").mkdir(parents=True, exist_ok=True)
    (out / "_data" / ".gitignore").write_text("*\n")
    t0 = time.perf_counter()
    root = prepare_synthetic(
        d,
        s["ids"],
        s["images_per_id"],
        s["size"],
        n_train=s["n_train"],
        workers=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    )
    n_train = sum(1 for p in (root / "bounding_box_train").iterdir() if p.suffix == ".jpg")
    return {
        "root": str(root),
        "seconds": time.perf_counter() - t0,
        "train_images": n_train,
        **{k: s[k] for k in ("ids", "images_per_id", "size")},
    }


def _data_root(out: Path, tiny: bool) -> Path:
    info = out / f"{gpu_tag()}-data.json"
    if info.exists():
        return Path(json.loads(info.read_text())["root"])
    return Path(step_data(out, tiny)["root"])


def _train_paths(root: Path) -> list[str]:
    from benchmarks.bench_train import train_split

    return train_split(root)[0]


def step_full(out: Path, tiny: bool, seconds: float) -> dict[str, Any]:
    """A shortened benchmarks.full_run: cache build timed alone, then as many epochs as fit in `seconds`."""
    from reidkit.data import pipeline

    s = SIZES["tiny" if tiny else "full"]
    root = _data_root(out, tiny)
    run_dir = out / "full_run"
    paths = _train_paths(root)
    # Decode once into the cache the trainer will find (same paths, size and cache_dir): its
    # build time is measured here, so the training time below is decoding-free.
    t0 = time.perf_counter()
    pipeline.ImageCache.build(paths, size=tuple(s["size"]), cache_dir=str(run_dir / "cache"))
    cache_s = time.perf_counter() - t0
    # Epochs that fit: from the images/s that step 1 measured for the same recipe, else a guess.
    ips = None
    bench = out / f"{gpu_tag()}-bench-train.json"
    if bench.exists():
        ips = (json.loads(bench.read_text()).get("results", {}).get("train", {}).get("reidkit") or {}).get(
            "images_per_s"
        )
    epochs = 1 if tiny else max(1, int(0.8 * seconds * (ips or 1500.0) / max(len(paths), 1)))
    cmd = [
        python(),
        "-m",
        "benchmarks.full_run",
        "--out",
        str(run_dir),
        "--data-root",
        str(root),
        "--epochs",
        str(epochs),
        "--device",
        _device(),
        "--no-rerank",
        "--eval-period",
        str(epochs),
        "--max-seconds",
        str(seconds),
    ] + (["--quick", "--threads", "1"] if tiny else [])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    state = json.loads((run_dir / "full_run.json").read_text()) if (run_dir / "full_run.json").exists() else {}
    done = epochs if "train_result" in state else _epochs_saved(run_dir / "train" / "last.pt")
    train_s = float(state.get("train_s") or 0.0)
    res = {
        "rc": proc.returncode,
        "wall_s": wall,
        "epochs_planned": epochs,
        "epochs_done": done,
        "train_images": len(paths),
        "cache_build_s": cache_s,
        "train_s": train_s,
        "s_per_epoch": train_s / done if done else None,
        "images_per_s": done * len(paths) / train_s if done and train_s else None,
        "amp": (state.get("settings") or {}).get("amp"),
        "backbone": (state.get("settings") or {}).get("backbone"),
        "eval": state.get("eval"),
        "step1_images_per_s": ips,
    }
    if proc.returncode not in (0, 3):
        res["error"] = proc.stderr[-2000:]
    return res


def _epochs_saved(last: Path) -> int:
    if not last.exists():
        return 0
    from reidkit.engine.checkpoint import load_training_checkpoint

    return int(load_training_checkpoint(last).get("epoch") or 0)


def _usl_round(
    root: Path, out: Path, tiny: bool, init: str | None, bn_groups: int, amp: str, cache_dir: Path
) -> dict[str, Any]:
    import reidkit

    s = SIZES["tiny" if tiny else "full"]
    dev = _device()
    ov: dict[str, Any] = {
        "output_dir": str(out),
        "device": dev,
        "seed": 0,
        "data": {
            "datasets": [{"name": "market1501", "root": str(root)}],
            "size": s["size"],
            "channels_last": dev == "cuda",
            "cache_dir": str(cache_dir),
        },
        "model": {"backbone": s["backbone"], "pretrained": False, "bn_groups": bn_groups},
        "solver": {"max_epochs": 1, "amp": amp, "eval_period": 1000},
        "usl": {"batch_size": s["usl_batch"], "num_instances": s["usl_instances"], "iters_per_epoch": s["usl_iters"]},
    }
    if init:
        # The step-2 model (supervised on this set) gives features that cluster; its head pools by average.
        ov["usl"]["init_weights"] = init
        ov["model"]["pooling"] = "avg"
    t0 = time.perf_counter()
    res = reidkit.train_usl("usl_cluster_contrast", **ov)
    wall = time.perf_counter() - t0
    rep = (res.get("clusters") or [{}])[0]
    n_img = s["usl_batch"] * s["usl_iters"]
    epoch_s = float((res.get("train") or {}).get("time_s") or wall) - float(rep.get("time_s") or 0.0)
    return {
        "wall_s": wall,
        "round_s": rep.get("time_s"),
        "feature_s": rep.get("feature_time_s"),
        "cluster_s": (rep.get("time_s") or 0.0) - (rep.get("feature_time_s") or 0.0),
        "clusters": rep.get("n_clusters"),
        "outliers": rep.get("n_outliers"),
        "epoch_images": n_img,
        "epoch_s_approx": epoch_s,
        "images_per_s_approx": n_img / epoch_s if epoch_s > 0 else None,
        "bn_groups": bn_groups,
        "amp": amp,
        "init_weights": init,
    }


def step_usl(out: Path, tiny: bool, ghost: bool) -> dict[str, Any]:
    """One usl_cluster_contrast round (features, Jaccard + DBSCAN, one epoch) with bf16 + channels_last;
    ``ghost``: with model.bn_groups (4; 2 at the tiny size, whose batches are too small for 4)."""
    root = _data_root(out, tiny)
    model = out / "full_run" / "train" / "model.pt"
    init = str(model) if model.exists() else None
    groups = SIZES["tiny" if tiny else "full"]["bn_groups"] if ghost else 1
    # the decoded cache of step 2 (same images, same size) is reused
    try:
        return _usl_round(
            root, out / "usl" / f"bn_groups_{groups}", tiny, init, groups, "bf16", out / "full_run" / "cache"
        )
    except Exception as exc:  # recorded, so the summary says why
        return {"error": f"{type(exc).__name__}: {str(exc)[-1500:]}", "bn_groups": groups}


def step_video(out: Path, tiny: bool) -> dict[str, Any]:
    """`reidkit video` on a generated scene (ground-truth boxes as detections), the embedder on the device."""
    from reidkit.data.scene import generate_scene

    sc = SIZES["tiny" if tiny else "full"]["scene"]
    scene_dir = out / "_data" / f"scene-{sc['cams']}x{sc['ids']}x{sc['frames']}"
    t0 = time.perf_counter()
    rep = generate_scene(scene_dir, cams=sc["cams"], ids=sc["ids"], frames=sc["frames"], size=tuple(sc["size"]))
    gen_s = time.perf_counter() - t0
    weights = out / "full_run" / "train" / "model.pt"
    if not weights.exists():
        weights = _random_weights(out / "video" / "random.pt", tiny)
    db = out / "video" / "db"
    if db.exists():
        import shutil

        shutil.rmtree(db)
    cmd = [
        python(),
        "-m",
        "reidkit.cli",
        "video",
        "--db",
        str(db),
        "--weights",
        str(weights),
        "--device",
        _device(),
        "--json",
        "--chunk",
        "200",
    ]
    for v, g in zip(rep.videos, rep.gt):
        cmd += ["--detections", str(g)]
    cmd += [str(v) for v in rep.videos]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    frames = sc["cams"] * sc["frames"]
    res = {
        "rc": proc.returncode,
        "wall_s": wall,
        "frames": frames,
        "boxes": rep.boxes,
        "frame_size": sc["size"],
        "frames_per_s": frames / wall,
        "boxes_per_s": rep.boxes / wall,
        "scene_generate_s": gen_s,
        "weights": str(weights),
        "device": _device(),
        "note": "wall time of the whole CLI call (start-up included)",
    }
    if proc.returncode != 0:
        res["error"] = proc.stderr[-2000:]
    return res


def _random_weights(path: Path, tiny: bool) -> Path:
    from reidkit.models.build import ModelConfig, build_model, save_model

    s = SIZES["tiny" if tiny else "full"]
    cfg = ModelConfig(backbone=s["backbone"], pretrained=False)
    save_model(path, build_model(cfg, 2).eval(), cfg, 2, s["size"])
    return path


# ----------------------------------------------------------------------------- summary
def _fmt(x: Any, fmt: str = "{:.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def summary(out: Path) -> str:
    """One markdown table over every step's JSON under `out` (a missing one reads 'not run / killed')."""
    tag = gpu_tag()
    rows = ["| step | figure | value | reference / note |", "|---|---|---|---|"]

    def load(step: str) -> dict[str, Any] | None:
        p = out / f"{tag}-{step}.json"
        return json.loads(p.read_text()) if p.exists() else None

    d = load("data")
    if d is None:
        rows.append("| 0 data | - | missing (killed or failed) | - |")
    else:
        rows.append(
            f"| 0 data | generate {d['train_images']} train images | {d['seconds']:.1f} s | "
            f"{d['ids']} ids at {d['size'][0]}x{d['size'][1]} |"
        )
    b = None
    for part in ("bench-train", "bench-extract", "bench-eval"):
        x = load(part)
        if x is not None:
            b = b or {"results": {}, "machine": x.get("machine")}
            b["results"].update(x.get("results") or {})
    if b is None:
        rows.append("| 1 benchmarks.run | - | missing (killed or failed) | - |")
    else:
        r = b["results"]
        for bench in ("train", "extract"):
            for side in ("reidkit", "reidkit_compile"):
                x = (r.get(bench) or {}).get(side)
                if x is None:
                    continue
                ratio = r[bench].get("speedup_compile" if side == "reidkit_compile" else "speedup")
                ref = (r[bench].get("reference") or {}).get("images_per_s")
                val = (
                    "error: " + x["error"].splitlines()[0][:50]
                    if "error" in x
                    else f"{_fmt(x.get('images_per_s'))} img/s"
                )
                rows.append(f"| 1 {bench} | {side} | {val} | {_fmt(ratio, '{:.2f}x')} of reference {_fmt(ref)} img/s |")
        for bench in ("eval", "rerank", "cluster"):
            x = r.get(bench) or {}
            c, g = x.get("cpu") or {}, x.get("cuda") or {}
            val = g if g else c
            if not val:
                continue
            sec = "error" if "error" in val else f"{val.get('seconds', float('nan')):.3f} s"
            note = (
                f"{_fmt(x.get('speedup_gpu'), '{:.1f}x')} of CPU {_fmt(c.get('seconds'), '{:.3f}')} s"
                if g
                else "CPU only"
            )
            rows.append(f"| 1 {bench} | {'cuda' if g else 'cpu'} | {sec} | {note} |")
    f = load("full_run")
    if f is None:
        rows.append("| 2 full_run | - | missing (killed or failed) | - |")
    else:
        rows.append(
            f"| 2 full_run | train images/s ({f.get('backbone')}, {f.get('amp')}) | "
            f"{_fmt(f.get('images_per_s'))} | {_fmt((f.get('images_per_s') or 0) / f['step1_images_per_s'] if f.get('step1_images_per_s') and f.get('images_per_s') else None, '{:.2f}x')} of step 1's reidkit img/s |"
        )
        rows.append(
            f"| 2 full_run | s/epoch | {_fmt(f.get('s_per_epoch'), '{:.2f}')} | {f.get('epochs_done')} of "
            f"{f.get('epochs_planned')} epochs, {f.get('train_images')} images/epoch |"
        )
        rows.append(
            f"| 2 full_run | cache build | {_fmt(f.get('cache_build_s'), '{:.1f}')} s | decode once, not in s/epoch |"
        )
        if f.get("error"):
            rows.append(f"| 2 full_run | error | rc {f.get('rc')} | {f['error'].strip().splitlines()[-1][:60]} |")
    usl = {"usl": load("usl"), "usl-ghost": load("usl-ghost")}
    for key, x in usl.items():
        if x is None:
            rows.append(f"| 3 {key} | - | missing (killed or failed) | - |")
            continue
        name = f"bn_groups={x.get('bn_groups', '?')}"
        if "error" in x:
            rows.append(f"| 3 usl {name} | error | - | {x['error'].splitlines()[0][:60]} |")
            continue
        rows.append(
            f"| 3 usl {name} ({x.get('amp')}) | round (features + cluster) | {_fmt(x.get('round_s'), '{:.1f}')} s | "
            f"features {_fmt(x.get('feature_s'), '{:.1f}')} s, {x.get('clusters')} clusters; epoch "
            f"~{_fmt(x.get('images_per_s_approx'))} img/s |"
        )
    a, g = usl["usl"] or {}, usl["usl-ghost"] or {}
    if a.get("wall_s") and g.get("wall_s") and "error" not in a and "error" not in g:
        rows.append(
            f"| 3 usl | bn_groups={g.get('bn_groups')} cost | {g['wall_s'] / a['wall_s']:.2f}x | "
            "wall time vs bn_groups=1 |"
        )
    v = load("video")
    if v is None:
        rows.append("| 4 video | - | missing (killed or failed) | - |")
    else:
        val = "error" if v.get("error") else f"{v['frames_per_s']:.1f} frames/s"
        rows.append(
            f"| 4 video ({v.get('device')}) | reidkit video | {val} | {v['frames']} frames "
            f"{v['frame_size'][0]}x{v['frame_size'][1]}, {v['boxes']} boxes ({v['boxes_per_s']:.0f}/s) |"
        )
    machine = (b or {}).get("machine") or {}
    head = (
        f"GPU run summary ({tag}): GPU {machine.get('gpu') or 'none'}, torch {machine.get('torch', '?')}, "
        f"CPU {machine.get('cpu_model', '?')} ({machine.get('affinity_cores', machine.get('cpu_count', '?'))} cores)"
    )
    text = head + "\n\n" + "\n".join(rows) + "\n"
    (out / f"{tag}-summary.md").write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    """Run one step (writing its JSON) or print the summary."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gpu_steps", description=__doc__.splitlines()[0])
    ap.add_argument("step", choices=["tag", "data", "full", "usl", "video", "summary"])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--tiny", action="store_true", help="CPU dry-run sizes")
    ap.add_argument("--seconds", type=float, default=150.0, help="full: training time budget")
    ap.add_argument("--ghost", action="store_true", help="usl: with model.bn_groups (ghost BatchNorm)")
    args = ap.parse_args(argv)
    if args.step == "tag":
        print(gpu_tag())
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.step == "summary":
        print(summary(out))
        return 0
    fn = {
        "data": lambda: step_data(out, args.tiny),
        "full": lambda: step_full(out, args.tiny, args.seconds),
        "usl": lambda: step_usl(out, args.tiny, args.ghost),
        "video": lambda: step_video(out, args.tiny),
    }[args.step]
    t0 = time.perf_counter()
    res = fn()
    res["step_s"] = time.perf_counter() - t0
    name = {"full": "full_run"}.get(args.step, args.step) + ("-ghost" if args.step == "usl" and args.ghost else "")
    path = _write(out, name, res)
    print(f"{args.step}: written {path} ({res['step_s']:.1f} s)", flush=True)
    return 1 if res.get("error") else 0


if __name__ == "__main__":
    sys.exit(main())
