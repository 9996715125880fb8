"""Peak memory and time of the sparse Jaccard distance + DBSCAN, next to the dense original.

Each measurement runs in a fresh subprocess (peak RSS via RUSAGE_CHILDREN). Data: clustered
Gaussian features (identity centres + isotropic noise, L2-normalised later, 5 % pure-noise
outliers): N=12,936 x 2048-d with 751 identities (Market1501 train shape) and N=100,000 x
256-d with 5,000 identities. Usage: ``python benchmarks/bench_cluster.py [--skip-dense]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CASES = [  # name, N, dim, identities
    ("market_12936", 12_936, 2048, 751),
    ("synthetic_100k", 100_000, 256, 5_000),
    ("small_3000", 3_000, 256, 175),  # quick check (--cases small_3000), not in the default run
]
K1, K2, EPS = 30, 6, 0.6


def make_features(n: int, dim: int, ids: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clustered Gaussian features (noise as large as the centres) with 5 % outliers."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((ids, dim), dtype=np.float32)
    lab = rng.integers(0, ids, n)
    x = centres[lab] + rng.standard_normal((n, dim), dtype=np.float32)
    out = rng.random(n) < 0.05
    x[out] = rng.standard_normal((int(out.sum()), dim), dtype=np.float32) * np.sqrt(2)
    lab[out] = -1
    return x, lab


def dense_reference(x: np.ndarray, k1: int, k2: int):
    """The field's dense Jaccard (SpCL/cluster-contrast shape): V, V_qe and J all N x N float32."""
    from reidkit.cluster.jaccard import knn_search, normalize_features

    x = normalize_features(x)
    n = len(x)
    k = k1 + 1  # the paper's list length, as our default
    kh = int(np.around(k1 / 2)) + 1
    _, rank = knn_search(x, k)

    def recip(i, kk):
        fwd = rank[i, :kk]
        return fwd[np.any(rank[fwd, :kk] == i, axis=1)]

    half = [recip(i, kh) for i in range(n)]
    v = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        r = recip(i, k)
        e = r
        for c in r:
            if len(np.intersect1d(half[c], r)) > 2 / 3 * len(half[c]):
                e = np.append(e, half[c])
        e = np.unique(e)
        w = np.exp(-(2.0 - 2.0 * x[e] @ x[i]))
        v[i, e] = w / w.sum()
    v_qe = np.zeros_like(v)
    for i in range(n):
        v_qe[i] = v[rank[i, :k2]].mean(0)
    v = v_qe
    del v_qe
    inv = [np.flatnonzero(v[:, j]) for j in range(n)]
    jac = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        tmin = np.zeros(n, dtype=np.float32)
        for j in np.flatnonzero(v[i]):
            tmin[inv[j]] += np.minimum(v[i, j], v[inv[j], j])
        jac[i] = 1 - tmin / (2 - tmin)
    del v
    np.clip(jac, 0, None, out=jac)
    return jac


def worker(name: str, method: str) -> dict:
    """Run one measurement in this (fresh) process and return its figures."""
    from reidkit.cluster import cluster_report, jaccard_distance, pseudo_labels

    n, dim, ids = next((c[1], c[2], c[3]) for c in CASES if c[0] == name)
    x, truth = make_features(n, dim, ids)
    res: dict = {"case": name, "method": method, "n": n, "dim": dim, "identities": ids}
    t0 = time.perf_counter()
    if method == "sparse":
        dist = jaccard_distance(x, K1, K2)
        t1 = time.perf_counter()
        labels = pseudo_labels(None, eps=EPS, dist=dist)
        res["nnz_per_row"] = dist.nnz / n
        res["matrix_mb"] = (dist.data.nbytes + dist.indices.nbytes + dist.indptr.nbytes) / 2**20
    elif method == "sparse_streamed_eps":
        # the trainer's path: only entries <= eps are ever held (no full N x N sparse matrix)
        labels = pseudo_labels(x, eps=EPS, k1=K1, k2=K2)
        t1 = time.perf_counter()
    elif method == "sparse_streamed_rho":
        labels, eps = pseudo_labels(x, eps="rho", k1=K1, k2=K2, return_eps=True)  # SSG eps rule
        t1 = time.perf_counter()
        res["eps"] = eps
    else:
        import scipy.sparse as sp
        from sklearn.cluster import DBSCAN

        jac = dense_reference(x, K1, K2)
        t1 = time.perf_counter()
        labels = DBSCAN(eps=EPS, min_samples=4, metric="precomputed").fit_predict(jac)
        ours = jaccard_distance(x, K1, K2)
        dense_ours = np.ones((n, n), dtype=np.float32)
        coo = sp.coo_matrix(ours)
        dense_ours[coo.row, coo.col] = coo.data
        res["max_abs_diff_vs_sparse"] = float(np.abs(dense_ours - jac).max())
        del dense_ours, ours, coo
    t2 = time.perf_counter()
    res["distance_s"] = t1 - t0
    res["total_s"] = t2 - t0
    # true outliers are singletons (not one shared "identity") so ARI/NMI are not skewed
    truth = np.where(truth < 0, truth.max() + 1 + np.arange(n), truth)
    res.update({k: v for k, v in cluster_report(labels, truth).items() if k != "n_samples"})
    return res


def measure(name: str, method: str) -> dict:
    """Run ``worker`` in a fresh child of this process; add the child's peak RSS."""
    proc = subprocess.run([sys.executable, __file__, "--worker", name, method], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"case": name, "method": method, "error": proc.stderr[-2000:]}
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    # this process has waited for one child only, so this is that child's peak (KiB on Linux)
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return res


def run_fresh(name: str, method: str) -> dict:
    """One measurement, through a fresh intermediate process (its own RUSAGE_CHILDREN)."""
    proc = subprocess.run([sys.executable, __file__, "--measure", name, method], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"case": name, "method": method, "error": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", nargs=2)
    ap.add_argument("--measure", nargs=2)
    ap.add_argument("--skip-dense", action="store_true")
    ap.add_argument(
        "--cases",
        default=",".join(c[0] for c in CASES if c[0] != "small_3000"),
        help="comma-separated among " + ", ".join(c[0] for c in CASES),
    )
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker)))
        return
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return
    plan = []
    for name in args.cases.split(","):
        if name in ("market_12936", "small_3000"):
            # the full sparse matrix (jaccard_distance) only at this size: at 100k it holds
            # ~4,000 entries per row on this data, more than 8 GB with the mirroring copies
            plan.append((name, "sparse"))
            plan.append((name, "sparse_streamed_rho"))
        plan.append((name, "sparse_streamed_eps"))
        if name == "market_12936" and not args.skip_dense:
            plan.append((name, "dense"))
    rows = []
    for name, method in plan:
        r = run_fresh(name, method)
        rows.append(r)
        print(json.dumps(r), flush=True)
    dense_need = {
        c[0]: {
            "one_float32_matrix_gb": c[1] ** 2 * 4 / 1e9,
            # SpCL/cluster-contrast hold V and V_qe, then V and J (2 at a time, 3 allocated);
            # the re-ranking original also holds the distance matrix and an int64 argsort.
            "field_faiss_version_peak_gb": 2 * c[1] ** 2 * 4 / 1e9,
            "paper_rerank_version_gb": (4 * 4 + 8) * c[1] ** 2 / 1e9,
        }
        for c in CASES
    }
    print(
        f"\n{'case':16s} {'method':20s} {'time s':>8s} {'dist s':>8s} {'peak MB':>9s} "
        f"{'clusters':>8s} {'outl.':>6s} {'ARI':>6s}"
    )
    for r in rows:
        if "error" in r:
            print(f"{r['case']:16s} {r['method']:20s} ERROR")
            continue
        pk = r.get("peak_rss_mb")
        print(
            f"{r['case']:16s} {r['method']:20s} {r['total_s']:8.1f} {r['distance_s']:8.1f} "
            f"{(pk or float('nan')):9.0f} {r['n_clusters']:8d} {r['outlier_fraction']:6.3f} "
            f"{r['ari']:6.3f}"
        )
    for k, v in dense_need.items():
        print(
            f"dense need {k}: one N^2 float32 = {v['one_float32_matrix_gb']:.2f} GB; field "
            f"faiss version ~{v['field_faiss_version_peak_gb']:.1f} GB; paper re-ranking "
            f"~{v['paper_rerank_version_gb']:.1f} GB"
        )
    machine = {
        "node": platform.node(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "note": "2 CPU cores shared with other jobs; times are wall-clock under load",
    }
    try:
        with open("/proc/cpuinfo") as fh:
            machine["cpu_model"] = next(ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    out = HERE / "results" / "cluster.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():  # keep earlier rows of the cases not rerun now
        done = {(r["case"], r["method"]) for r in rows}
        old = json.loads(out.read_text()).get("results", [])
        rows = [
            r for r in old if (r["case"], r["method"]) not in done and r["case"] not in args.cases.split(",")
        ] + rows
    out.write_text(
        json.dumps(
            {"machine": machine, "k1": K1, "k2": K2, "eps": EPS, "results": rows, "dense_requirement": dense_need},
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
