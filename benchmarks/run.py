"""The benchmark suite: training, extraction, evaluation/re-ranking and clustering, ours beside a plain
reference, with peak memory, in one command.

    python -m benchmarks.run --quick                      # CPU-sized, a few minutes
    python -m benchmarks.run --device cuda                # Market1501-sized (12,936 train images)
    python -m benchmarks.run --only train,extract --compile

Every measurement runs in a fresh subprocess (its peak RSS and peak GPU memory are its own) and
prints one JSON line; a failing measurement is recorded as an error and the suite goes on.
Writes ``<out>/<machine-tag>.json`` (tag: ``cpu`` or the GPU name, ``-quick``/``-tiny`` appended)
and prints a markdown table. The synthetic images live under ``<out>/_data`` and are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

BENCHES = ("train", "extract", "eval", "cluster")

# Sizes per preset. "full" is Market1501: 751 train ids, 12,936 train images at 256x128, batch
# 64 = 16 x 4, ResNet-50; query x gallery 3,368 x 15,913; clustering on the 12,936 train features.
PRESETS: dict[str, dict[str, Any]] = {
    "full": {
        "data": {"ids": 1501, "images_per_id": 18, "size": [256, 128], "n_train": 12936},
        "train": {"backbone": "resnet50", "p": 16, "k": 4, "warmup": 20, "iters": 30, "repeats": 5},
        "extract": {"backbone": "resnet50", "repeats": 3, "max_images": None, "batch_fast": 512, "batch_ref": 128},
        "eval": {"num_query": 3368, "num_gallery": 15913, "ids": 750, "dim": 2048, "repeats": 3},
        "rerank": {"dim": 2048, "repeats": 3},
        "cluster": {"n": 12936, "ids": 751, "dim": 2048, "repeats": 3},
    },
    "quick": {
        "data": {"ids": 64, "images_per_id": 8, "size": [128, 64], "n_train": None},
        "train": {"backbone": "resnet18", "p": 8, "k": 4, "warmup": 2, "iters": 3, "repeats": 3},
        "extract": {"backbone": "resnet18", "repeats": 2, "max_images": 384, "batch_fast": 128, "batch_ref": 128},
        "eval": {"num_query": 500, "num_gallery": 2500, "ids": 200, "dim": 256, "repeats": 3},
        "rerank": {"dim": 256, "repeats": 3},
        "cluster": {"n": 2000, "ids": 150, "dim": 256, "repeats": 3},
    },
    # For the smoke test: seconds, not minutes.
    "tiny": {
        "data": {"ids": 12, "images_per_id": 4, "size": [32, 16], "n_train": None},
        "train": {"backbone": "resnet18", "p": 3, "k": 2, "warmup": 1, "iters": 1, "repeats": 1},
        "extract": {"backbone": "resnet18", "repeats": 1, "max_images": 16, "batch_fast": 8, "batch_ref": 8},
        "eval": {"num_query": 40, "num_gallery": 160, "ids": 20, "dim": 32, "repeats": 2},
        "rerank": {"dim": 32, "repeats": 1},
        "cluster": {"n": 160, "ids": 20, "dim": 32, "repeats": 1},
    },
}


# ----------------------------------------------------------------------------- machine
def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (platform.processor() is often empty)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """Where the numbers were taken: platform, CPU, cores, GPU, torch."""
    import torch

    from benchmarks.common import machine_info

    info = {
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpu": None,
        "gpu_memory_gb": None,
        "cuda_version": torch.version.cuda,
    }
    try:
        info["affinity_cores"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    if torch.cuda.is_available():
        prop = torch.cuda.get_device_properties(0)
        info["gpu"], info["gpu_memory_gb"] = prop.name, round(prop.total_memory / 2**30, 1)
    info.update({k: v for k, v in machine_info().items() if k not in info and k != "cuda"})
    return info


def machine_tag(info: dict[str, Any], device: str, preset: str) -> str:
    """File-name tag: "cpu" or the GPU name slug, plus the preset unless it is the full one."""
    base = (
        "cpu" if device == "cpu" or not info.get("gpu") else re.sub(r"[^a-z0-9]+", "-", info["gpu"].lower()).strip("-")
    )
    return base if preset == "full" else f"{base}-{preset}"


# ----------------------------------------------------------------------------- in-process workers
def _median_time(fn: Callable[[], Any], repeats: int, sync: Callable[[], None]) -> tuple[float, list[float], Any]:
    times, out = [], None
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def _features(n_q: int, n_g: int, ids: int, dim: int) -> tuple[Any, Any]:
    # The rerank benchmark's clustered, L2-normalised features: identity centres + noise.
    from benchmarks.bench_rerank import clustered_features

    return clustered_features(n_q, max(n_g, 1), ids, dim=dim, seed=0)


def work_eval(p: dict[str, Any]) -> dict[str, Any]:
    """Distance matrix (on the device) + rank metrics (CPU, numpy) at query x gallery scale."""
    import torch

    from benchmarks.bench_eval import market_like
    from benchmarks.bench_train import sync
    from benchmarks.common import gpu_peak_mb, vm_hwm_mb
    from reidkit.evaluation.distance import compute_distance
    from reidkit.evaluation.metrics import evaluate_rank

    dev = torch.device(p["device"])
    nq, ng = p["num_query"], p["num_gallery"]
    qf, gf = _features(nq, ng, p["ids"], p["dim"])
    _, q_pids, g_pids, q_cams, g_cams = market_like(nq, ng, ids=p["ids"], distractors=int(0.175 * ng))
    qt, gt = torch.from_numpy(qf), torch.from_numpy(gf)
    compute_distance(qt[:8], gt[:64], metric="cosine", device=dev)  # device context / kernels warm-up
    t_dist, d_times, dist = _median_time(
        lambda: compute_distance(qt, gt, metric="cosine", device=dev), p["repeats"], lambda: sync(dev)
    )
    t_rank, r_times, res = _median_time(
        lambda: evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams), p["repeats"], lambda: None
    )
    return {
        "device": str(dev),
        "shape": [nq, ng],
        "dim": p["dim"],
        "distance_s": t_dist,
        "rank_s": t_rank,
        "seconds": t_dist + t_rank,
        "distance_times": d_times,
        "rank_times": r_times,
        "repeats": p["repeats"],
        "mAP": res["mAP"],
        "peak_rss_mb": vm_hwm_mb(),
        "peak_gpu_mb": gpu_peak_mb(dev),
    }


def work_rerank(p: dict[str, Any]) -> dict[str, Any]:
    """k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3) from features, on the device."""
    import torch

    from benchmarks.bench_train import sync
    from benchmarks.common import gpu_peak_mb, vm_hwm_mb
    from reidkit.evaluation.rerank import re_ranking_features

    dev = torch.device(p["device"])
    nq, ng = p["num_query"], p["num_gallery"]
    qf, gf = _features(nq, ng, p["ids"], p["dim"])
    t, times, _ = _median_time(
        lambda: re_ranking_features(torch.from_numpy(qf), torch.from_numpy(gf), device=dev),
        p["repeats"],
        lambda: sync(dev),
    )
    return {
        "device": str(dev),
        "shape": [nq, ng],
        "dim": p["dim"],
        "seconds": t,
        "times": times,
        "repeats": p["repeats"],
        "peak_rss_mb": vm_hwm_mb(),
        "peak_gpu_mb": gpu_peak_mb(dev),
    }


def work_cluster(p: dict[str, Any]) -> dict[str, Any]:
    """Sparse Jaccard distance (k1=30, k2=6) + DBSCAN pseudo labels at train-set scale."""
    import torch

    from benchmarks.bench_train import sync
    from benchmarks.common import gpu_peak_mb, vm_hwm_mb
    from reidkit.cluster import jaccard_distance, pseudo_labels

    dev = torch.device(p["device"])
    feats = _features(p["n"], 1, p["ids"], p["dim"])[0]
    search = "torch" if dev.type == "cuda" else "faiss"
    import sklearn.cluster  # noqa: F401  (its first import takes seconds; keep it out of the timing)

    t_j, j_times, dist = _median_time(
        lambda: jaccard_distance(feats, k1=30, k2=6, device=dev, search=search), p["repeats"], lambda: sync(dev)
    )
    t_d, d_times, labels = _median_time(
        lambda: pseudo_labels(None, eps=0.6, dist=dist, min_samples=4), p["repeats"], lambda: None
    )
    n_clusters = int(len(set(labels.tolist()) - {-1}))
    return {
        "device": str(dev),
        "n": p["n"],
        "dim": p["dim"],
        "search": search,
        "jaccard_s": t_j,
        "dbscan_s": t_d,
        "seconds": t_j + t_d,
        "jaccard_times": j_times,
        "dbscan_times": d_times,
        "repeats": p["repeats"],
        "clusters": n_clusters,
        "nnz": int(dist.nnz),
        "peak_rss_mb": vm_hwm_mb(),
        "peak_gpu_mb": gpu_peak_mb(dev),
    }


def _worker(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    if params.get("threads"):
        import torch

        torch.set_num_threads(int(params["threads"]))
    if kind == "train":
        from benchmarks.bench_train import measure

        return measure(params)
    if kind == "extract":
        from benchmarks.bench_extract import measure as measure_extract

        return measure_extract(params)
    return {"eval": work_eval, "rerank": work_rerank, "cluster": work_cluster}[kind](params)


def call(kind: str, params: dict[str, Any], isolate: bool, timeout: float | None) -> dict[str, Any]:
    """One measurement, in a fresh process when `isolate`; errors come back as {"error": ...}."""
    t0 = time.perf_counter()
    try:
        if isolate:
            from benchmarks.common import run_isolated

            out = run_isolated("benchmarks.run", ["--worker", kind, "--params", json.dumps(params)], timeout=timeout)
        else:
            out = _worker(kind, params)
    except Exception as exc:  # a broken measurement must not cost the rest of a long GPU run
        msg = str(exc) if isolate else traceback.format_exc(limit=4)
        out = {"error": f"{type(exc).__name__}: {msg[-2000:]}"}
    out["wall_s"] = time.perf_counter() - t0
    print(
        f"  {kind} {params.get('mode', params.get('device', ''))}: "
        + (out["error"].splitlines()[0] if "error" in out else "ok"),
        file=sys.stderr,
        flush=True,
    )
    return out


# ----------------------------------------------------------------------------- the suite
def _ratio(a: dict[str, Any], b: dict[str, Any], key: str, inverse: bool = False) -> float | None:
    if "error" in a or "error" in b or not a.get(key) or not b.get(key):
        return None
    return b[key] / a[key] if inverse else a[key] / b[key]


def run_suite(
    preset: str,
    out: Path,
    device: str,
    only: list[str],
    isolate: bool = True,
    compile_: bool = False,
    num_workers: int | None = None,
    repeats: int | None = None,
    timeout: float | None = None,
    tag: str | None = None,
    threads: int | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Run the selected benchmarks, write <out>/<tag>.json, return its path and contents."""
    import copy

    cfg = copy.deepcopy(PRESETS[preset])
    if repeats:
        for sect in ("train", "extract", "eval", "rerank", "cluster"):
            cfg[sect]["repeats"] = repeats
    out.mkdir(parents=True, exist_ok=True)
    info = machine()
    cores = info.get("affinity_cores") or os.cpu_count() or 1
    workers = num_workers if num_workers is not None else (0 if preset == "tiny" else min(8, cores))
    devices = ["cpu"] + (["cuda"] if device == "cuda" else [])
    if threads is None and preset != "full" and device == "cpu":
        # On a small shared CPU, two spinning OpenMP threads run several times slower than one.
        threads = 1
    results: dict[str, Any] = {}
    t_all = time.perf_counter()
    data_root = None
    if "train" in only or "extract" in only:
        from benchmarks.bench_train import prepare_synthetic

        d = cfg["data"]
        data_dir = out / "_data" / f"{preset}-{d['ids']}x{d['images_per_id']}-{d['size'][0]}x{d['size'][1]}"
        data_dir.mkdir(parents=True, exist_ok=True)
        (out / "_data" / ".gitignore").write_text("*\n")
        t0 = time.perf_counter()
        data_root = str(
            prepare_synthetic(
                data_dir, d["ids"], d["images_per_id"], d["size"], n_train=d["n_train"], workers=max(1, cores)
            )
        )
        results["data"] = {"root": data_root, "prepare_s": time.perf_counter() - t0, **d}
    common = {
        "data_root": data_root,
        "size": cfg["data"]["size"],
        "device": device,
        "num_workers": workers,
        "threads": threads,
    }
    if "train" in only:
        base = {**common, **cfg["train"]}
        tr = {
            "reference": call("train", {**base, "mode": "reference"}, isolate, timeout),
            "reidkit": call("train", {**base, "mode": "reidkit", "compile": False}, isolate, timeout),
        }
        if compile_:
            tr["reidkit_compile"] = call("train", {**base, "mode": "reidkit", "compile": True}, isolate, timeout)
        tr["speedup"] = _ratio(tr["reidkit"], tr["reference"], "images_per_s")
        if compile_:
            tr["speedup_compile"] = _ratio(tr["reidkit_compile"], tr["reference"], "images_per_s")
        results["train"] = tr
    if "extract" in only:
        base = {**common, **cfg["extract"]}
        ex = {
            "reference": call("extract", {**base, "mode": "reference"}, isolate, timeout),
            "reidkit": call("extract", {**base, "mode": "reidkit"}, isolate, timeout),
        }
        ex["speedup"] = _ratio(ex["reidkit"], ex["reference"], "images_per_s")
        results["extract"] = ex
    if "eval" in only:
        e, rr = cfg["eval"], {**cfg["eval"], **cfg["rerank"]}
        results["eval"] = {
            dev: call("eval", {**e, "device": dev, "threads": threads}, isolate, timeout) for dev in devices
        }
        results["rerank"] = {
            dev: call("rerank", {**rr, "device": dev, "threads": threads}, isolate, timeout) for dev in devices
        }
        if "cuda" in devices:
            results["eval"]["speedup_gpu"] = _ratio(results["eval"]["cpu"], results["eval"]["cuda"], "seconds", True)
            results["rerank"]["speedup_gpu"] = _ratio(
                results["rerank"]["cpu"], results["rerank"]["cuda"], "seconds", True
            )
    if "cluster" in only:
        c = cfg["cluster"]
        results["cluster"] = {
            dev: call("cluster", {**c, "device": dev, "threads": threads}, isolate, timeout) for dev in devices
        }
        if "cuda" in devices:
            results["cluster"]["speedup_gpu"] = _ratio(
                results["cluster"]["cpu"], results["cluster"]["cuda"], "seconds", True
            )
    payload = {
        "suite": "reidkit benchmarks",
        "preset": preset,
        "device": device,
        "machine": info,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "total_s": time.perf_counter() - t_all,
        "isolated": isolate,
        "sizes": cfg,
        "num_workers": workers,
        "torch_threads": threads,
        "results": results,
    }
    payload["table"] = table(payload)
    name = tag or machine_tag(info, device, preset)
    path = out / f"{name}.json"
    from reidkit.utils.io import write_json

    write_json(path, payload)
    return path, payload


# ----------------------------------------------------------------------------- the table
def _f(x: Any, fmt: str = "{:.1f}") -> str:
    return "-" if x is None else fmt.format(x)


def table(payload: dict[str, Any]) -> str:
    """Markdown table of the figures (median over repeats), ratios and peak memory."""
    res = payload["results"]
    rows = [
        "| benchmark | side | device | figure | ratio | peak RSS MiB | peak GPU MiB |",
        "|---|---|---|---|---|---|---|",
    ]

    def row(bench: str, side: str, r: dict[str, Any], figure: str, ratio: float | None) -> None:
        if "error" in r:
            rows.append(f"| {bench} | {side} | - | error: {r['error'].splitlines()[0][:60]} | - | - | - |")
            return
        rows.append(
            f"| {bench} | {side} | {r.get('device', '-')} | {figure} | {_f(ratio, '{:.2f}x')} | "
            f"{_f(r.get('peak_rss_mb'), '{:.0f}')} | {_f(r.get('peak_gpu_mb'), '{:.0f}')} |"
        )

    for bench in ("train", "extract"):
        if bench in res:
            b = res[bench]
            for side in ("reference", "reidkit", "reidkit_compile"):
                if side in b:
                    r = b[side]
                    desc = (
                        f"{_f(r.get('images_per_s'))} img/s ({r.get('backbone')}, {r.get('amp')}, batch "
                        f"{r.get('batch')}, {r.get('size', ['?', '?'])[0]}x{r.get('size', ['?', '?'])[1]})"
                        if "error" not in r
                        else ""
                    )
                    ratio = (
                        b.get("speedup_compile" if side == "reidkit_compile" else "speedup")
                        if side != "reference"
                        else 1.0
                    )
                    row(bench, side, r, desc, ratio)
    labels = {
        "eval": (
            "distance + rank",
            lambda r: (
                f"{r['seconds']:.3f} s ({r['shape'][0]}x{r['shape'][1]}; "
                f"dist {r['distance_s']:.3f} + rank {r['rank_s']:.3f})"
            ),
        ),
        "rerank": ("k-reciprocal", lambda r: f"{r['seconds']:.3f} s ({r['shape'][0]}x{r['shape'][1]})"),
        "cluster": (
            "jaccard + dbscan",
            lambda r: f"{r['seconds']:.3f} s (N={r['n']}; jaccard {r['jaccard_s']:.3f} + dbscan {r['dbscan_s']:.3f})",
        ),
    }
    for bench, (side, fmt) in labels.items():
        if bench in res:
            for dev in ("cpu", "cuda"):
                if dev in res[bench]:
                    r = res[bench][dev]
                    ratio = res[bench].get("speedup_gpu") if dev == "cuda" else None
                    row(bench, side, r, fmt(r) if "error" not in r else "", ratio)
    m = payload["machine"]
    head = (
        f"machine: {m.get('cpu_model')} ({m.get('affinity_cores', m.get('cpu_count'))} cores), "
        f"GPU: {m.get('gpu') or 'none'}, torch {m.get('torch')}; preset {payload['preset']}; "
        "figures are medians over repeats; ratio = reidkit / reference (train, extract) or CPU time / GPU time"
    )
    return head + "\n\n" + "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """CLI entry (also the per-measurement worker entry, with --worker)."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="CPU-sized preset (a few minutes)")
    ap.add_argument("--tiny", action="store_true", help="smoke-test preset (seconds)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    ap.add_argument("--only", default=",".join(BENCHES), help=f"comma list of {', '.join(BENCHES)}")
    ap.add_argument("--compile", action="store_true", help="also time reidkit's training with torch.compile")
    ap.add_argument(
        "--num-workers", type=int, default=None, help="reference DataLoader workers (default min(8, cores))"
    )
    ap.add_argument("--repeats", type=int, default=None, help="override every benchmark's repeat count")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per measurement (default: torch's own; 1 for --quick/--tiny on CPU)",
    )
    ap.add_argument("--timeout", type=float, default=None, help="seconds per measurement subprocess")
    ap.add_argument("--tag", default=None, help="result file name (default: machine tag)")
    ap.add_argument("--no-isolate", action="store_true", help="measure in this process (peak RSS then cumulative)")
    ap.add_argument("--worker", choices=["train", "extract", "eval", "rerank", "cluster"], help=argparse.SUPPRESS)
    ap.add_argument("--params", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.worker, json.loads(args.params)), default=float))
        return 0
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = sorted(set(only) - set(BENCHES))
    if bad:
        print(f"error: --only: unknown benchmark(s) {bad}; expected some of {list(BENCHES)}", file=sys.stderr)
        return 2
    preset = "tiny" if args.tiny else "quick" if args.quick else "full"
    path, payload = run_suite(
        preset,
        Path(args.out),
        device,
        only,
        isolate=not args.no_isolate,
        compile_=args.compile,
        num_workers=args.num_workers,
        repeats=args.repeats,
        timeout=args.timeout,
        tag=args.tag,
        threads=args.threads,
    )
    print(payload["table"])
    print(f"\nwritten {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
