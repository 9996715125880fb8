"""Milvus Lite vs the embedded gallery (SQLite + faiss) on the same entries: build time, search latency, recall@10.

    python -m benchmarks.bench_store [--n 100000] [--dim 256] [--queries 1000] [--index flat] [--out DIR]

Results: benchmarks/results/store_<n>k.json (measured on a 2-core machine under heavy shared load:
the ratios, not the milliseconds, are the figures to read).

Both galleries are filled through the same builder path as ``reidkit index build`` (batches of 1,024
tracklet entries with camera and time fields), then searched one query at a time through
``Gallery.search_features`` (the service's path: ids, scores and every stored field), plain and with a
camera filter. recall@10 is measured against exact inner-product search in numpy. Both run in this
process; Milvus Lite runs as its own local server process, so its latency includes a local gRPC
round trip per query.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from reidkit.inference import FeatureExtractor, ModelIdentity
from reidkit.retrieval.gallery import Gallery
from reidkit.retrieval.backends import resolve
from reidkit.retrieval.store import normalize_entries


def _data(n: int, dim: int, queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 50), dim)).astype(np.float32)
    x = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.integers(0, n, queries)] + 0.3 * rng.standard_normal((queries, dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    rows = [
        {
            "path": f"/videos/cam{i % 8 + 1}.mp4",
            "kind": "tracklet",
            "tracklet": f"t{i}",
            "camera": f"cam{i % 8 + 1}",
            "camid": i % 8,
            "frame_start": i,
            "frame_end": i + 10,
            "t_start": i / 25,
            "t_end": i / 25 + 0.4,
            "meta": None,
        }
        for i in range(n)
    ]
    return x, q, normalize_entries(rows)


def _build(db: str, ident: ModelIdentity, x: np.ndarray, rows: list[dict], index: str) -> float:
    t0 = time.perf_counter()
    builder = resolve(db).builder(settings={"index_kind": index})
    builder.start(ident, {"index_kind": index, "nprobe": "32", "ef_search": "128", "hnsw_m": "32", "refine_k": "8"})
    for s in range(0, len(x), 1024):
        builder.append(rows[s : s + 1024], x[s : s + 1024])
    builder.publish()
    return time.perf_counter() - t0


def _search(g: Gallery, q: np.ndarray, k: int, **filters: object) -> tuple[list[list[int]], np.ndarray]:
    ids, lat = [], []
    g.search_features(q[:1], k=k, **filters)  # warm-up (first query loads the index)
    for row in q:
        t0 = time.perf_counter()
        res = g.search_features(row[None], k=k, **filters)[0]
        lat.append(time.perf_counter() - t0)
        ids.append([r["tracklet"] for r in res])
    return ids, np.asarray(lat) * 1000


def _recall(got: list[list[str]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(g) & {f"t{i}" for i in t}) / len(t) for g, t in zip(got, truth)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--index", default="flat", choices=["flat", "hnsw"])
    ap.add_argument("--out", default=None, help="write results.json here")
    args = ap.parse_args()
    x, q, rows = _data(args.n, args.dim, args.queries)
    k = 10
    exact = np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :k]
    cam = np.asarray([r["camid"] for r in rows])
    sims = q @ x.T
    sims[:, cam == 0] = -np.inf
    exact_f = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    ident = ModelIdentity("bench", "bench", args.dim, (256, 128), (0.5,) * 3, (0.25,) * 3)
    ext = FeatureExtractor(None, ident)
    tmp = Path(tempfile.mkdtemp(prefix="bench_store_"))
    out = {"n": args.n, "dim": args.dim, "queries": args.queries, "index": args.index, "k": k}
    try:
        for name, db in (("embedded", str(tmp / "embedded")), ("milvus-lite", f"milvus:{tmp / 'g.db'}")):
            build_s = _build(db, ident, x, rows, args.index)
            t0 = time.perf_counter()
            g = Gallery.open(db, extractor=ext)
            open_s = time.perf_counter() - t0
            got, lat = _search(g, q, k)
            got_f, lat_f = _search(g, q, k, exclude_camera="cam1")
            out[name] = {
                "build_s": round(build_s, 2),
                "open_s": round(open_s, 2),
                "p50_ms": round(float(np.percentile(lat, 50)), 2),
                "p99_ms": round(float(np.percentile(lat, 99)), 2),
                "recall@10": round(_recall(got, exact), 4),
                "filtered_p50_ms": round(float(np.percentile(lat_f, 50)), 2),
                "filtered_p99_ms": round(float(np.percentile(lat_f, 99)), 2),
                "filtered_recall@10": round(_recall(got_f, exact_f), 4),
            }
            print(name, json.dumps(out[name]), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    e, m = out["embedded"], out["milvus-lite"]
    out["ratios (milvus-lite / embedded)"] = {
        "build": round(m["build_s"] / e["build_s"], 2),
        "p50": round(m["p50_ms"] / e["p50_ms"], 2),
        "p99": round(m["p99_ms"] / e["p99_ms"], 2),
    }
    print(json.dumps(out, indent=2))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / f"store_{args.n // 1000}k.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
