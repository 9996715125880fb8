"""Approximate gallery indexes vs exact search: recall@10, build and query time.

Data: N clustered, L2-normalised random features (default 200,000 x 256-d; 20,000 clusters of
~10 "images" each, like identities with several crops; cluster centres scattered (0.8 per dimension)
around 50 unit-variance "super" centres, points scattered 0.7 per dimension around their cluster
centre, so clusters overlap), plus 1,000 queries drawn the same way. Ground truth: exact inner-product
search (IndexFlatIP). The indexes are the ones `reidkit index build --index ivf|hnsw` makes
(`make_faiss_index`): IVF-Flat with nlist ~ 4*sqrt(N), HNSW-Flat with M=32.

    python -m benchmarks.bench_index [--n 200000] [--dim 256] [--queries 1000] [--threads 2]

Writes benchmarks/results/index.json.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import write_result
from reidkit.retrieval.ann import default_nlist, make_faiss_index, set_search_params


def clustered(
    n: int, dim: int, clusters: int, noise: float, rng: np.random.Generator, centers: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`n` unit vectors around `clusters` Gaussian centres (the centres are returned for the queries)."""
    if centers is None:
        # Identities share coarse appearance (clothing colours, pose): centres scatter around
        # 50 "super" centres, so neighbouring clusters overlap as real ReID features do.
        supers = rng.standard_normal((50, dim)).astype(np.float32)
        centers = supers[rng.integers(50, size=clusters)] + 0.8 * rng.standard_normal((clusters, dim)).astype(
            np.float32
        )
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 50_000):
        e = min(n, s + 50_000)
        lab = rng.integers(len(centers), size=e - s)
        x = centers[lab] + noise * rng.standard_normal((e - s, dim)).astype(np.float32)
        out[s:e] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out, centers


def recall_at(truth: np.ndarray, got: np.ndarray, k: int = 10) -> float:
    """Mean fraction of each query's exact top-k found in the approximate top-k."""
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(truth, got)]))


def main() -> None:
    """Run the benchmark and write benchmarks/results/index.json."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--clusters", type=int, default=None, help="default N / 10 (identities of ~10 crops)")
    ap.add_argument("--noise", type=float, default=0.7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.clusters is None:
        args.clusters = max(1, args.n // 10)

    import faiss

    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    x, centers = clustered(args.n, args.dim, args.clusters, args.noise, rng)
    q, _ = clustered(args.queries, args.dim, args.clusters, args.noise, rng, centers)
    k = 10
    out: dict = {
        "data": {
            "n": args.n,
            "dim": args.dim,
            "queries": args.queries,
            "clusters": args.clusters,
            "noise": args.noise,
            "kind": "clustered Gaussian, L2-normalised",
            "seed": args.seed,
        },
        "threads": args.threads,
        "k": k,
        "indexes": [],
    }

    t0 = time.perf_counter()
    ids = np.arange(args.n, dtype=np.int64)  # gallery indexes take explicit ids (the entry ids)
    flat = make_faiss_index("flat", args.dim)
    flat.add_with_ids(x, ids)
    build_flat = time.perf_counter() - t0
    t0 = time.perf_counter()
    _, truth = flat.search(q, k)
    exact_s = time.perf_counter() - t0
    out["indexes"].append(
        {
            "index": "flat (exact)",
            "build_s": round(build_flat, 2),
            "query_ms": round(1000 * exact_s / args.queries, 3),
            "recall@10": 1.0,
        }
    )
    print(f"flat: build {build_flat:.1f}s, {1000 * exact_s / args.queries:.2f} ms/query", flush=True)
    del flat

    nlist = default_nlist(args.n)
    t0 = time.perf_counter()
    sample = x[np.sort(rng.choice(args.n, size=min(args.n, 256 * nlist), replace=False))]
    ivf = make_faiss_index("ivf", args.dim, train=sample, nlist=nlist)
    ivf.add_with_ids(x, ids)
    build_ivf = time.perf_counter() - t0
    for nprobe in (4, 8, 16, 32, 64):
        set_search_params(ivf, nprobe=nprobe)
        t0 = time.perf_counter()
        _, got = ivf.search(q, k)
        dt = time.perf_counter() - t0
        rec = recall_at(truth, got, k)
        out["indexes"].append(
            {
                "index": "ivf",
                "nlist": nlist,
                "nprobe": nprobe,
                "build_s": round(build_ivf, 2),
                "query_ms": round(1000 * dt / args.queries, 3),
                "recall@10": round(rec, 4),
            }
        )
        print(
            f"ivf nlist={nlist} nprobe={nprobe}: recall@10 {rec:.4f}, {1000 * dt / args.queries:.3f} ms/query "
            f"(build {build_ivf:.1f}s)",
            flush=True,
        )
    del ivf

    t0 = time.perf_counter()
    hnsw = make_faiss_index("hnsw", args.dim)
    hnsw.add_with_ids(x, ids)
    build_hnsw = time.perf_counter() - t0
    for ef in (32, 64, 128, 256):
        set_search_params(hnsw, ef_search=ef)
        t0 = time.perf_counter()
        _, got = hnsw.search(q, k)
        dt = time.perf_counter() - t0
        rec = recall_at(truth, got, k)
        out["indexes"].append(
            {
                "index": "hnsw",
                "M": 32,
                "efConstruction": 80,
                "efSearch": ef,
                "build_s": round(build_hnsw, 2),
                "query_ms": round(1000 * dt / args.queries, 3),
                "recall@10": round(rec, 4),
            }
        )
        print(
            f"hnsw M=32 efSearch={ef}: recall@10 {rec:.4f}, {1000 * dt / args.queries:.3f} ms/query "
            f"(build {build_hnsw:.1f}s)",
            flush=True,
        )
    path = write_result("index", out)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
