"""Rank metrics (CMC, mAP, mINP) computed exactly as the field does, without a per-query loop.

Protocol (Market-1501 style): for each query, gallery entries with the same pid *and* the same
camera are removed ("junk"); a query with no remaining true match is skipped; CMC is the
cumulative match curve clipped at 1 and averaged over valid queries; AP is non-interpolated
(sum_k precision@k * rel_k / num_rel); mINP averages num_rel / rank of the last true match.

Ranking order is a *stable* ascending sort of each distance row: equal distances are ordered by
gallery index (lower index first). The result is identical to a per-query loop that does
``np.argsort(row, kind="stable")``.

How it avoids the per-query O(G log G) argsort: only the ranks of each query's same-pid gallery
entries matter (AP, CMC and mINP are functions of the 1-based ranks of the true matches among
the non-junk entries). Each row is value-sorted (numpy's sort, several times faster than a
stable argsort) in a small per-thread buffer, and a binary search of the sorted row gives, for
each same-pid entry, how many gallery entries are strictly smaller; the rare pair with another
entry of exactly its distance gets the equal entries with a lower gallery index counted from the
raw row, so the stable tie rule holds exactly. Junk entries are then discounted by ranking the
handful of same-pid entries of each query among themselves.

Counting instead of sorting (rank = #{g: (d_g, g) < (d_j, j)} from comparisons of each row
against each of its same-pid entries, ~18 per query and ~940M comparisons at Market-1501 size)
was measured and not adopted: with numpy it costs the same CPU time as the row sorts (0.097 s vs
0.104 s per 1,000 rows), batched torch comparison + sum kernels were 7-20x slower, and a sort
scales with G log G whatever the number of true matches per query.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from numpy.typing import ArrayLike

from reidkit.errors import ReIDError

__all__ = ["evaluate_rank"]


def _as_1d(name: str, arr: ArrayLike, n: int) -> np.ndarray:
    a = np.asarray(arr).reshape(-1) if np.ndim(arr) else np.asarray([arr])
    if a.shape[0] != n:
        raise ReIDError(f"{name}: expected {n} entries to match the distance matrix, got {a.shape[0]}")
    return a.astype(np.int64, copy=False)


def _validate(
    distmat: ArrayLike, q_pids: ArrayLike, g_pids: ArrayLike, q_camids: ArrayLike, g_camids: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    if isinstance(distmat, torch.Tensor):
        distmat = distmat.detach().cpu().numpy()
    distmat = np.asarray(distmat)
    if distmat.ndim != 2:
        raise ReIDError(f"distmat: expected a 2-D (num_query x num_gallery) array, got shape {distmat.shape}")
    q, g = distmat.shape
    if q == 0:
        raise ReIDError("distmat: the query set is empty (0 rows); nothing to evaluate")
    if g == 0:
        raise ReIDError("distmat: the gallery set is empty (0 columns); nothing to evaluate")
    if distmat.dtype not in (np.float32, np.float64):
        distmat = distmat.astype(np.float32)
    return (
        distmat,
        _as_1d("q_pids", q_pids, q),
        _as_1d("g_pids", g_pids, g),
        _as_1d("q_camids", q_camids, q),
        _as_1d("g_camids", g_camids, g),
    )


def _same_pid_pairs(q_pids: np.ndarray, g_pids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All (query, gallery) index pairs with equal pid, grouped by query, gallery index ascending."""
    g_order = np.argsort(g_pids, kind="stable")
    sorted_pids = g_pids[g_order]
    start = np.searchsorted(sorted_pids, q_pids, side="left")
    stop = np.searchsorted(sorted_pids, q_pids, side="right")
    counts = stop - start
    total = int(counts.sum())
    rows = np.repeat(np.arange(q_pids.shape[0]), counts)
    # position inside each query's run: a global arange minus the run's first offset
    offsets = np.cumsum(counts) - counts
    within = np.arange(total) - np.repeat(offsets, counts)
    cols = g_order[np.repeat(start, counts) + within]
    return rows, cols, counts


def _positions_before(
    distmat: np.ndarray, rows: np.ndarray, cols: np.ndarray, chunk_rows: int, workers: int
) -> np.ndarray:
    """For each (row, col) pair: number of gallery entries before `col` in the stable row order.

    Rows are split into contiguous ranges, one per worker thread (numpy releases the GIL in sort
    and searchsorted). Each worker copies `chunk_rows` rows at a time into its own reused buffer,
    sorts them in place (value-only sort) and, per row, binary-searches the row's same-pid
    values (left side: the number of entries strictly smaller). The sorted entry right after a
    pair's own value equals it only when the row has another entry at exactly that distance;
    such a pair gets the equal entries with a lower gallery index counted from the raw row (stable
    order puts them first). Sorted rows also expose NaN (it sorts last).
    """
    q, g = distmat.shape
    before = np.empty(rows.shape[0], dtype=np.int64)
    vals = distmat[rows, cols]
    row_ptr = np.searchsorted(rows, np.arange(q + 1))
    has_nan = []

    def work(r_begin: int, r_end: int) -> None:
        buf = np.empty((min(chunk_rows, r_end - r_begin), g), dtype=distmat.dtype)
        for r0 in range(r_begin, r_end, buf.shape[0]):
            r1 = min(r_end, r0 + buf.shape[0])
            srt = buf[: r1 - r0]
            np.copyto(srt, distmat[r0:r1])
            srt.sort(axis=1)
            if np.isnan(srt[:, -1]).any():
                has_nan.append(True)
                return
            for r in range(r0, r1):
                p0, p1 = row_ptr[r], row_ptr[r + 1]
                if p0 < p1:
                    before[p0:p1] = srt[r - r0].searchsorted(vals[p0:p1])
            # srt[row, less] is the pair's own value; an equal value right after it means a tie
            p0, p1 = row_ptr[r0], row_ptr[r1]
            if p0 == p1:
                continue
            less = before[p0:p1]
            nxt = np.minimum(less + 1, g - 1)
            tied = np.flatnonzero((less + 1 < g) & (srt[rows[p0:p1] - r0, nxt] == vals[p0:p1]))
            for t in tied:
                # exact ties with a same-pid entry are rare: count the equal entries with a lower
                # gallery index directly (stable order puts them first)
                r, c = rows[p0 + t], cols[p0 + t]
                before[p0 + t] += int(np.count_nonzero(distmat[r, :c] == vals[p0 + t]))

    workers = max(1, min(workers, q // max(1, chunk_rows)))
    bounds = np.linspace(0, q, workers + 1).astype(np.int64)
    if workers == 1:
        work(0, q)
    else:
        with ThreadPoolExecutor(workers) as pool:
            for f in [pool.submit(work, int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]:
                f.result()
    if has_nan:
        raise ReIDError("distmat: contains NaN distances")
    return before


def _ranks_of_true_matches(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    chunk_rows: int,
    workers: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, kept_rank0, counts) of every true match, sorted by (query, rank); junk removed."""
    rows, cols, _ = _same_pid_pairs(q_pids, g_pids)
    junk = g_camids[cols] == q_camids[rows]
    before = _positions_before(distmat, rows, cols, chunk_rows, workers)
    # order same-pid entries of each query by their position in the ranked list
    order = np.lexsort((before, rows))
    rows, cols, junk, before = rows[order], cols[order], junk[order], before[order]
    junk_cum = np.cumsum(junk)
    first_of_row = np.searchsorted(rows, rows, side="left")
    junk_before = junk_cum - junk - (junk_cum[first_of_row] - junk[first_of_row])
    rel = ~junk
    return rows[rel], cols[rel], before[rel] - junk_before[rel]


def _metrics_from_ranks(
    rows: np.ndarray, rank0: np.ndarray, num_q: int, max_rank: int
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None, int, np.ndarray]:
    """AP, INP, CMC from the 0-based ranks (in the junk-free list) of every true match."""
    num_rel = np.bincount(rows, minlength=num_q)
    valid = num_rel > 0
    num_valid = int(valid.sum())
    if num_valid == 0:
        return None, None, None, 0, valid
    starts = np.cumsum(num_rel) - num_rel
    k = np.arange(rows.shape[0]) - np.repeat(starts, num_rel) + 1  # 1-based index among matches
    precision = k / (rank0 + 1.0)
    ap = np.bincount(rows, weights=precision, minlength=num_q)[valid] / num_rel[valid]
    last = rank0[starts[valid] + num_rel[valid] - 1]
    inp = num_rel[valid] / (last + 1.0)
    first = rank0[starts[valid]]
    hist = np.bincount(first[first < max_rank], minlength=max_rank)[:max_rank]
    cmc = np.cumsum(hist).astype(np.float64) / num_valid
    return ap, inp, cmc, num_valid, valid


def _cuhk03_cmc(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    rel_rows: np.ndarray,
    rel_cols: np.ndarray,
    max_rank: int,
    num_repeats: int,
    seed: int,
    chunk_rows: int,
) -> np.ndarray:
    """Single-gallery-shot CMC: per query and repeat, one random gallery image per identity.

    Sampling rule (the loop reference in the tests follows it): a generator seeded with `seed`
    draws U ~ uniform(0, 1) of shape (num_query, num_repeats, num_gallery_pids) in query order;
    identity p gets member floor(U * n_p) of its kept images in gallery-index order (for the
    query's own identity: its true matches, i.e. junk removed).
    """
    q = distmat.shape[0]
    upids, inv = np.unique(g_pids, return_inverse=True)
    P = len(upids)
    g_order = np.argsort(inv, kind="stable")
    n_per = np.bincount(inv, minlength=P)
    start = np.cumsum(n_per) - n_per
    num_rel = np.bincount(rel_rows, minlength=q)
    rel_start = np.cumsum(num_rel) - num_rel
    # true matches of each query in gallery-index order
    o = np.lexsort((rel_cols, rel_rows))
    rel_cols_sorted = rel_cols[o]
    q_col = np.searchsorted(upids, q_pids)
    q_col = np.where((q_col < P) & (upids[np.minimum(q_col, P - 1)] == q_pids), q_col, -1)
    rng = np.random.default_rng(seed)
    cmc_sum = np.zeros(max_rank)
    valid_rows = np.flatnonzero(num_rel > 0)
    for r0 in range(0, q, chunk_rows):
        r1 = min(q, r0 + chunk_rows)
        u = rng.random((r1 - r0, num_repeats, P))
        rows = np.arange(r0, r1)
        keep = num_rel[rows] > 0
        if not keep.any():
            continue
        rows, u = rows[keep], u[keep]
        pick = start[None, None, :] + np.floor(u * n_per[None, None, :]).astype(np.int64)
        samples = g_order[pick]  # (B, R, P) gallery indices
        qc = q_col[rows]
        tu = u[np.arange(len(rows)), :, qc]  # (B, R)
        t_idx = rel_cols_sorted[rel_start[rows][:, None] + np.floor(tu * num_rel[rows][:, None]).astype(np.int64)]
        d_true = distmat[rows[:, None], t_idx]  # (B, R)
        d_s = distmat[rows[:, None, None], samples]
        ahead = (d_s < d_true[..., None]) | ((d_s == d_true[..., None]) & (samples < t_idx[..., None]))
        ahead[np.arange(len(rows)), :, qc] = False  # the query's identity is the sampled true match
        rank0 = ahead.sum(-1)  # (B, R)
        hits = (rank0[..., None] <= np.arange(max_rank)).mean(1)  # average over repeats
        cmc_sum += hits.sum(0)
    return cmc_sum / len(valid_rows)


def evaluate_rank(
    distmat: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    max_rank: int = 50,
    cuhk03: bool = False,
    *,
    num_repeats: int = 10,
    seed: int = 0,
    chunk_size: int | None = None,
    num_threads: int | None = None,
) -> dict:
    """CMC, mAP, mINP (fractions) of a query x gallery distance matrix, field protocol."""
    distmat, q_pids, g_pids, q_camids, g_camids = _validate(distmat, q_pids, g_pids, q_camids, g_camids)
    if max_rank < 1:
        raise ReIDError(f"max_rank: expected a positive integer, got {max_rank}")
    q, g = distmat.shape
    if chunk_size is None:
        # each worker's sort buffer: a few MB, so a chunk stays in cache while it is searched
        chunk_size = max(1, (4 << 20) // (g * distmat.itemsize))
    workers = num_threads or max(1, min(4, torch.get_num_threads()))
    rows, cols, rank0 = _ranks_of_true_matches(distmat, q_pids, g_pids, q_camids, g_camids, chunk_size, workers)
    ap, inp, cmc, num_valid, _ = _metrics_from_ranks(rows, rank0, q, max_rank)
    if num_valid == 0:
        raise ReIDError(
            "evaluate_rank: no query has a true match in the gallery (after removing "
            "same-identity same-camera entries); check pids and camids"
        )
    assert ap is not None and inp is not None and cmc is not None  # None only when num_valid == 0
    if cuhk03:
        cmc = _cuhk03_cmc(
            distmat,
            q_pids,
            g_pids,
            q_camids,
            g_camids,
            rows,
            cols,
            max_rank,
            num_repeats,
            seed,
            max(1, (8 << 20) // (g * distmat.itemsize)),
        )
    return {
        "mAP": float(ap.mean()),
        "cmc": cmc.astype(np.float64),
        "mINP": float(inp.mean()),
        "num_valid": num_valid,
    }
