"""Re-ranking speed and memory: reidkit's sparse re_ranking_features beside the dense original.

    python -m benchmarks.bench_rerank                       # Market1501 size, dense vs sparse
    python -m benchmarks.bench_rerank --scale msmt17 --skip-dense   # 11,659 x 82,161, sparse only

Features: clustered, L2-normalised, 512-d (identity centres + Gaussian noise, plus distractors),
deterministic from --seed. Each measurement runs in a fresh subprocess so its peak RSS is its
own. The dense reference is a plain numpy transcription of the original algorithm (N x N
matrices, per-item loops), fed the plain Euclidean distance matrices (it squares them, as the
original code does); reidkit's side starts from the features, so its time includes the kNN search.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SCALES = {
    "market1501": (3368, 15913, 750),
    "msmt17": (11659, 82161, 3060),
    "small": (300, 1500, 100),
    "n3000": (500, 2500, 150),
}


def clustered_features(num_q, num_g, ids, dim=512, seed=0, noise=0.8):
    """Query and gallery features drawn around identity centres (distractors: 15% of gallery)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((ids, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    q_lab = rng.integers(0, ids, num_q)
    n_dis = int(0.15 * num_g)
    g_lab = rng.integers(0, ids, num_g - n_dis)
    scale = noise / np.sqrt(dim)
    qf = centres[q_lab] + scale * rng.standard_normal((num_q, dim), dtype=np.float32)
    gf = centres[g_lab] + scale * rng.standard_normal((num_g - n_dis, dim), dtype=np.float32)
    gf = np.concatenate([gf, rng.standard_normal((n_dis, dim), dtype=np.float32) / np.sqrt(dim) * 1.2])
    qf /= np.linalg.norm(qf, axis=1, keepdims=True)
    gf /= np.linalg.norm(gf, axis=1, keepdims=True)
    return qf.astype(np.float32), gf.astype(np.float32)


def dense_reference(q_g, q_q, g_g, k1=20, k2=6, lambda_value=0.3):
    """The original algorithm, dense N x N, transcribed plainly (stable sorts for determinism)."""
    nq = q_g.shape[0]
    dist = np.concatenate([np.concatenate([q_q, q_g], 1), np.concatenate([q_g.T, g_g], 1)], 0)
    del q_q, g_g
    np.power(dist, 2, out=dist)
    dist = np.transpose(dist / np.max(dist, axis=0))
    n = dist.shape[0]
    V = np.zeros_like(dist, dtype=np.float32)
    rank = np.argsort(dist, axis=1, kind="stable").astype(np.int32)
    half = int(np.around(k1 / 2.0))
    for i in range(n):
        fwd = rank[i, : k1 + 1]
        bwd = rank[fwd, : k1 + 1]
        recip = fwd[np.where(bwd == i)[0]]
        expansion = recip
        for c in recip:
            cf = rank[c, : half + 1]
            cb = rank[cf, : half + 1]
            crecip = cf[np.where(cb == c)[0]]
            if len(np.intersect1d(crecip, recip)) > 2.0 / 3 * len(crecip):
                expansion = np.append(expansion, crecip)
        expansion = np.unique(expansion)
        w = np.exp(-dist[i, expansion])
        V[i, expansion] = w / np.sum(w)
    dist = dist[:nq]
    if k2 != 1:
        V_qe = np.zeros_like(V)
        for i in range(n):
            V_qe[i] = np.mean(V[rank[i, :k2]], axis=0)
        V = V_qe
        del V_qe
    del rank
    inv = [np.where(V[:, j] != 0)[0] for j in range(n)]
    jac = np.zeros_like(dist, dtype=np.float32)
    for i in range(nq):
        tmin = np.zeros(n, dtype=np.float32)
        nz = np.where(V[i] != 0)[0]
        for col in nz:
            tmin[inv[col]] += np.minimum(V[i, col], V[inv[col], col])
        jac[i] = 1 - tmin / (2.0 - tmin)
    final = jac * (1 - lambda_value) + dist * lambda_value
    return final[:nq, nq:]


def stable_top10(dist: np.ndarray, k: int = 10, rows: int = 256) -> np.ndarray:
    """Indices of each row's k smallest entries in stable order (== argsort(kind="stable")[:, :k]).

    Rows are taken `rows` at a time and only the entries <= the row's k-th smallest value are
    sorted: a full stable argsort would hold an int64 copy of the whole Q x G result (7.7 GB at
    MSMT17 scale) and take minutes.
    """
    out = np.empty((dist.shape[0], k), dtype=np.int32)
    for s in range(0, dist.shape[0], rows):
        block = dist[s : s + rows]
        kth = np.partition(block, k - 1, axis=1)[:, k - 1]
        r, c = np.nonzero(block <= kth[:, None])  # ties at the k-th value included
        order = np.lexsort((c, block[r, c], r))
        r, c = r[order], c[order]
        first = np.searchsorted(r, np.arange(block.shape[0]))
        keep = np.arange(r.shape[0]) - first[r] < k
        out[s : s + block.shape[0]] = c[keep].reshape(-1, k)
    return out


def worker(args) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
    import torch

    from benchmarks.common import vm_hwm_mb
    from reidkit.evaluation.distance import compute_distance
    from reidkit.evaluation.rerank import re_ranking_features

    nq, ng, ids = SCALES[args.scale]
    qf, gf = clustered_features(nq, ng, ids, dim=args.dim, seed=args.seed)
    base = vm_hwm_mb()
    t0 = time.perf_counter()
    t_dist = 0.0
    if args.worker == "dense":
        mats = [compute_distance(a, b) for a, b in ((qf, gf), (qf, qf), (gf, gf))]
        t_dist = time.perf_counter() - t0
        del qf, gf
        out = dense_reference(*mats)
    else:
        out = re_ranking_features(torch.from_numpy(qf), torch.from_numpy(gf))
    total = time.perf_counter() - t0
    top = stable_top10(out)
    np.save(args.top_out, top)
    if args.save_full:
        np.save(args.top_out.replace(".npy", "_full.npy"), out)
    print(json.dumps({"seconds": total, "distance_seconds": t_dist, "peak_rss_mb": vm_hwm_mb(), "rss_before_mb": base}))


def main(argv=None) -> None:
    """Run dense and sparse in fresh subprocesses on the same features; write results JSON."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", choices=list(SCALES), default="market1501")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-dense", action="store_true")
    ap.add_argument("--worker", choices=["dense", "sparse"])
    ap.add_argument("--top-out")
    ap.add_argument("--save-full", action="store_true")
    args = ap.parse_args(argv)
    if args.worker:
        worker(args)
        return
    from benchmarks.common import run_isolated, write_result

    nq, ng, _ = SCALES[args.scale]
    n = nq + ng
    tmp = Path(tempfile.mkdtemp())
    common = ["--scale", args.scale, "--dim", str(args.dim), "--seed", str(args.seed)]
    full = ["--save-full"] if args.scale in ("small", "n3000") else []
    res = {
        "scale": args.scale,
        "num_query": nq,
        "num_gallery": ng,
        "dim": args.dim,
        "features": "clustered, L2-normalised",
        "k1": 20,
        "k2": 6,
        "lambda": 0.3,
        "dense_bytes_per_NxN_float32": n * n * 4,
    }
    sparse = run_isolated(
        "benchmarks.bench_rerank", common + ["--worker", "sparse", "--top-out", str(tmp / "s.npy")] + full
    )
    res["sparse"] = sparse
    print("sparse", sparse, flush=True)
    if not args.skip_dense:
        dense = run_isolated(
            "benchmarks.bench_rerank", common + ["--worker", "dense", "--top-out", str(tmp / "d.npy")] + full
        )
        res["dense"] = dense
        print("dense", dense, flush=True)
        ts, td = np.load(tmp / "s.npy"), np.load(tmp / "d.npy")
        res["top10_identical_fraction"] = float((ts == td).all(1).mean())
        res["top10_same_set_fraction"] = float(np.mean([set(a) == set(b) for a, b in zip(ts, td)]))
        res["speedup_end_to_end"] = dense["seconds"] / sparse["seconds"]
        res["speedup_vs_dense_rerank_only"] = (dense["seconds"] - dense["distance_seconds"]) / sparse["seconds"]
        if full:
            res["max_abs_diff"] = float(np.abs(np.load(tmp / "s_full.npy") - np.load(tmp / "d_full.npy")).max())
    name = "bench_rerank" if args.scale == "market1501" else f"bench_rerank_{args.scale}"
    print(json.dumps(res, indent=1, default=float))
    print("written", write_result(name, res), file=sys.stderr)


if __name__ == "__main__":
    main()
