"""Rank-metric speed: reidkit's vectorised evaluate_rank beside two plain per-query loops.

    python -m benchmarks.bench_eval            # Market1501 size: 3,368 x 15,913, random distances

All three get the same random distance matrix with Market-like pids/camids (750 identities,
6 cameras, 2,793 distractors with pid 0); the numbers must agree exactly.
"""

from __future__ import annotations

import argparse

import numpy as np


def reference_evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """The plain per-query loop (stable argsort per row); the oracle for tests and benchmarks."""
    distmat = np.asarray(distmat)
    all_cmc, all_ap, all_inp = [], [], []
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i], kind="stable")
        matches = (g_pids[order] == q_pids[i]).astype(np.int32)
        remove = (g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i])
        raw = matches[~remove]
        if not raw.any():
            continue
        cmc = raw.cumsum()
        cmc[cmc > 1] = 1
        # pad with the last value when the list is shorter than max_rank
        if len(cmc) < max_rank:
            cmc = np.concatenate([cmc, np.full(max_rank - len(cmc), cmc[-1])])
        all_cmc.append(cmc[:max_rank])
        pos = np.flatnonzero(raw)
        all_inp.append(raw.sum() / (pos[-1] + 1.0))
        prec = raw.cumsum() / np.arange(1, len(raw) + 1)
        all_ap.append((prec * raw).sum() / raw.sum())
    cmc = np.asarray(all_cmc, dtype=np.float64).sum(0) / len(all_cmc)
    return {"mAP": float(np.mean(all_ap)), "cmc": cmc, "mINP": float(np.mean(all_inp)), "num_valid": len(all_cmc)}


def field_style_loop(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """The per-query loop as the field's Python evaluators write it (the "about a minute" one).

    One argsort of the whole matrix up front, then per query: drop same-pid-same-camera entries,
    CMC by cumulative sum, and AP from a precision list built element by element in Python. Kept
    as the second reference because it is what users run today; `reference_evaluate_rank` is the
    leaner numpy loop.
    """
    distmat = np.asarray(distmat)
    order_all = np.argsort(distmat, axis=1)
    hits_all = (g_pids[order_all] == q_pids[:, None]).astype(np.int32)
    cmcs, aps, inps = [], [], []
    for q in range(distmat.shape[0]):
        order = order_all[q]
        junk = (g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q])
        hits = hits_all[q][~junk]
        if not hits.any():
            continue
        cum = hits.cumsum()
        last = np.flatnonzero(hits == 1).max()
        inps.append(cum[last] / (last + 1.0))
        cum[cum > 1] = 1
        cmcs.append(cum[:max_rank])
        running = hits.cumsum()
        precision = [c / (i + 1.0) for i, c in enumerate(running)]
        aps.append((np.asarray(precision) * hits).sum() / hits.sum())
    cmc = np.asarray(cmcs, dtype=np.float64).sum(0) / len(cmcs)
    return {"mAP": float(np.mean(aps)), "cmc": cmc, "mINP": float(np.mean(inps)), "num_valid": len(cmcs)}


def reference_cuhk03_cmc(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50, num_repeats=10, seed=0):
    """Per-query single-gallery-shot CMC with the sampling rule documented in metrics.py."""
    upids = np.unique(g_pids)
    members = [np.flatnonzero(g_pids == p) for p in upids]
    rng = np.random.default_rng(seed)
    total, nvalid = np.zeros(max_rank), 0
    for i in range(distmat.shape[0]):
        u = rng.random((num_repeats, len(upids)))
        true = np.flatnonzero((g_pids == q_pids[i]) & (g_camids != q_camids[i]))
        if len(true) == 0:
            continue
        nvalid += 1
        for r in range(num_repeats):
            picks = []
            for c, p in enumerate(upids):
                pool = true if p == q_pids[i] else members[c]
                picks.append(pool[int(np.floor(u[r, c] * len(pool)))])
            picks = np.asarray(picks)
            order = picks[np.argsort(distmat[i, picks], kind="stable")]
            raw = (g_pids[order] == q_pids[i]).astype(np.int32).cumsum()
            raw[raw > 1] = 1
            raw = np.concatenate([raw, np.full(max(0, max_rank - len(raw)), raw[-1])])
            total += raw[:max_rank] / num_repeats
    return total / nvalid


def market_like(num_q=3368, num_g=15913, ids=750, cams=6, distractors=2793, seed=0):
    """Random distances with Market1501-like pids/camids."""
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(1, ids + 1, num_q)
    q_cams = rng.integers(0, cams, num_q)
    g_pids = np.concatenate([np.zeros(distractors, np.int64), rng.integers(1, ids + 1, num_g - distractors)])
    g_cams = rng.integers(0, cams, num_g)
    perm = rng.permutation(num_g)
    distmat = rng.random((num_q, num_g), dtype=np.float32)
    return distmat, q_pids, g_pids[perm], q_cams, g_cams[perm]


def main(argv=None) -> None:
    """Time both implementations once on the same input and write results/bench_eval.json."""
    from benchmarks.common import timed, write_result
    from reidkit.evaluation.metrics import evaluate_rank

    ap = argparse.ArgumentParser()
    ap.add_argument("--num-query", type=int, default=3368)
    ap.add_argument("--num-gallery", type=int, default=15913)
    args = ap.parse_args(argv)
    data = market_like(args.num_query, args.num_gallery)
    t_ref, ref = timed(lambda: reference_evaluate_rank(*data))
    t_fast, fast = timed(lambda: evaluate_rank(*data))
    t_field, field = timed(lambda: field_style_loop(*data))

    def agree(a: dict, b: dict) -> bool:
        return (
            abs(a["mAP"] - b["mAP"]) < 1e-9
            and abs(a["mINP"] - b["mINP"]) < 1e-9
            and np.allclose(a["cmc"], b["cmc"], rtol=0, atol=1e-12)
            and a["num_valid"] == b["num_valid"]
        )

    result = {
        "shape": list(data[0].shape),
        "reference_loop_s": round(t_ref, 3),
        "field_style_loop_s": round(t_field, 3),
        "reidkit_s": round(t_fast, 3),
        "speedup": round(t_ref / t_fast, 1),
        "speedup_vs_field_style_loop": round(t_field / t_fast, 1),
        "identical": bool(agree(ref, fast) and agree(field, fast)),
        "mAP": fast["mAP"],
        "rank1": float(fast["cmc"][0]),
        "mINP": fast["mINP"],
        "num_valid": fast["num_valid"],
    }
    path = write_result("bench_eval", result)
    print(result)
    print(f"written {path}")


if __name__ == "__main__":
    main()
