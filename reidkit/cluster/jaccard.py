"""k-reciprocal Jaccard distance (Zhong et al., CVPR 2017) on a kNN graph, sparse and linear in N.

Definitions used here (``K`` is the length of a kNN list, which always starts with the item
itself):

* kNN list of ``i``: the ``K`` items with the highest cosine similarity to ``i`` (the features
  are L2-normalised first), item ``i`` itself forced to the first place. With
  ``include_self_in_k1=False`` (default, the re-ranking paper and its code) ``K = k1 + 1``:
  self plus ``k1`` neighbours. With ``include_self_in_k1=True`` ``K = k1``: self plus
  ``k1 - 1`` neighbours, which is what the field's faiss version
  (SpCL / cluster-contrast ``compute_jaccard_distance``) silently does, because it searches
  ``k1`` results and then slices ``[:k1 + 1]``.
* k-reciprocal set ``R(i)``: the ``j`` in the kNN list of ``i`` whose own kNN list contains
  ``i`` (so ``i`` itself is a member).
* half set ``R_h(c)``: the same with lists of ``round(k1 / 2) + 1`` items (numpy rounding, half
  to even); both originals use this length whatever the k1 convention.
* expansion: ``R*(i) = R(i) U {R_h(c) : c in R(i), |R_h(c) & R(i)| > 2/3 |R_h(c)|}``.
* ``V[i, j] = exp(-d(i, j)) / sum_{j' in R*(i)} exp(-d(i, j'))`` for ``j`` in ``R*(i)``, where
  ``d = 2 - 2 cos`` (the squared Euclidean distance of the normalised features, as the field's
  Jaccard code uses; the re-ranking paper's column-max normalisation is not applied).
* query expansion: ``V_qe[i] = mean of V[j]`` over the first ``k2`` entries of the kNN list of
  ``i`` (self included); skipped when ``k2 == 1``.
* ``J(i, j) = 1 - sum_c min(V_qe[i, c], V_qe[j, c]) / sum_c max(V_qe[i, c], V_qe[j, c])``.

The kNN search, reciprocal sets, expansion, V and query expansion are ``reidkit.neighbors``'
(shared with re-ranking); this module fixes the conventions above and adds the all-pairs
Jaccard step. Only pairs whose ``V_qe`` rows share support are stored (every other pair has distance 1).
The diagonal is stored as explicit zeros, as is any other pair at distance 0, so a consumer
that treats missing entries as "far" (DBSCAN on a sparse precomputed matrix) stays correct.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
import torch

from reidkit.errors import ReIDError
from reidkit.neighbors import k_reciprocal_encoding, knn_search, pair_function, pair_values
from reidkit.utils.runtime import resolve_device

__all__ = ["jaccard_distance", "knn_search", "normalize_features", "v_matrix", "upper_chunks"]

# Rough element budgets: they bound the transient memory of one chunk independently of N.
_TRIPLE_BUDGET = 1 << 22  # (row, column, value) triples expanded at once in the Jaccard step


def normalize_features(features: np.ndarray | torch.Tensor) -> np.ndarray:
    """Return the features as a C-contiguous float32 array with L2-normalised rows."""
    if isinstance(features, torch.Tensor):
        features = features.detach().float().cpu().numpy()
    x = np.asarray(features, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ReIDError(f"features: expected a non-empty 2-d array (N x D), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ReIDError("features: expected finite values, found NaN or inf")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def v_matrix(
    features: np.ndarray | torch.Tensor,
    k1: int = 30,
    k2: int = 6,
    device: str | torch.device | None = None,
    search: str = "faiss",
    include_self_in_k1: bool = False,
) -> sp.csr_matrix:
    """The k-reciprocal encoding V (after k2 query expansion) as a sparse N x N float32 CSR."""
    if int(k1) != k1 or k1 < 1:
        raise ReIDError(f"k1: expected a positive integer, got {k1!r}")
    if int(k2) != k2 or k2 < 1:
        raise ReIDError(f"k2: expected a positive integer, got {k2!r}")
    if include_self_in_k1 and k1 < 2:
        raise ReIDError("k1: with include_self_in_k1=True expected k1 >= 2")
    x = normalize_features(features)
    n = x.shape[0]
    dev = resolve_device(device)
    k_main = min(int(k1) if include_self_in_k1 else int(k1) + 1, n)
    k_half = min(int(np.around(k1 / 2)) + 1, n)
    k_qe = min(int(k2), n)
    if k_qe > k_main:
        raise ReIDError(f"k2: expected k2 <= the kNN list length ({k_main}), got {k2}")
    sims, idx = knn_search(x, max(k_main, k_half), search=search, device=dev)
    # most members of R*(i) are in i's kNN list, whose similarities the search already gave
    dots = pair_function(torch.from_numpy(x).to(dev), "dot")

    def dist(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return 2.0 - 2.0 * pair_values(rows, cols, idx, sims, dots)

    return k_reciprocal_encoding(idx, k_main, k_half, k_qe, dist, dtype=np.float32)


def upper_chunks(v: sp.csr_matrix) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (rows, cols, distances) of the overlapping pairs with cols >= rows, by row chunks.

    Chunked over rows with an inverted (CSC) index over columns; only the part of each
    column's row list at or after the current row is expanded (symmetry halves the work).
    """
    n = v.shape[0]
    vc = v.tocsc()
    vc.sort_indices()
    col_len = np.diff(vc.indptr).astype(np.int64)
    csc_key = np.repeat(np.arange(n, dtype=np.int64), col_len) * n + vc.indices
    row_sum = np.asarray(v.sum(axis=1), dtype=np.float64).ravel()
    row_len = np.diff(v.indptr)
    # upper bound of the triples of each row (whole columns), for sizing the chunks
    per_row = np.zeros(n, dtype=np.int64)
    nz = row_len > 0
    per_row[nz] = np.add.reduceat(col_len[v.indices], v.indptr[:-1][nz])
    csum = np.concatenate(([0], np.cumsum(per_row)))
    max_rows = max(1, (1 << 31) // n - 1)  # keeps the packed (row, col) key below 2**31
    a = 0
    while a < n:
        b = int(np.searchsorted(csum, csum[a] + _TRIPLE_BUDGET, side="right")) - 1
        b = min(max(b, a + 1), a + max_rows, n)
        lo, hi = v.indptr[a], v.indptr[b]
        cols = v.indices[lo:hi].astype(np.int64)
        loc_row = np.repeat(np.arange(b - a, dtype=np.int64), row_len[a:b])
        first = np.searchsorted(csc_key, cols * n + loc_row + a)
        cnt = vc.indptr[cols + 1] - first
        total = int(cnt.sum())
        pos = np.repeat(first - np.cumsum(cnt) + cnt, cnt) + np.arange(total, dtype=np.int64)
        mins = np.minimum(np.repeat(v.data[lo:hi], cnt), vc.data[pos]).astype(np.float32)
        # Pack (pair key, value bits) into one int64 so that a plain sort (much faster than
        # an argsort) groups the triples by pair; keys stay below 2**31, values are 32 bits.
        packed = (np.repeat(loc_row, cnt) * n + vc.indices[pos]) << 32
        del pos
        packed |= mins.view(np.uint32).astype(np.int64)
        del mins
        packed.sort()
        keys = packed >> 32
        m = (packed & 0xFFFFFFFF).astype(np.uint32).view(np.float32).astype(np.float64)
        del packed
        if total:
            starts = np.concatenate(([0], np.flatnonzero(keys[1:] != keys[:-1]) + 1))
            smin = np.add.reduceat(m, starts)
            keys = keys[starts]
        else:
            smin = np.zeros(0)
        del m
        r = keys // n + a
        c = keys % n
        dist = 1.0 - smin / (row_sum[r] + row_sum[c] - smin)
        dist[c == r] = 0.0  # J(i, i) = 0 by definition; summation order leaves ~1e-8
        np.clip(dist, 0.0, 1.0, out=dist)
        yield r, c, dist
        a = b


def symmetric_csr(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n: int) -> sp.csr_matrix:
    """N x N CSR from upper-triangle triples (diagonal included), mirrored; keeps zeros."""
    off = rows != cols
    r = np.concatenate([rows, cols[off]]).astype(np.int32)
    c = np.concatenate([cols, rows[off]]).astype(np.int32)
    v = np.concatenate([vals, vals[off]]).astype(np.float32)
    del off
    # coo -> csr keeps explicit zeros (the diagonal), unlike csr arithmetic
    m = sp.coo_matrix((v, (r, c)), shape=(n, n)).tocsr()
    m.sort_indices()
    return m


def jaccard_distance(
    features: np.ndarray | torch.Tensor,
    k1: int = 30,
    k2: int = 6,
    device: str | torch.device | None = None,
    search: str = "faiss",
    include_self_in_k1: bool = False,
    max_distance: float | None = None,
) -> sp.csr_matrix:
    """Sparse k-reciprocal Jaccard distance (N x N CSR float32; absent entries mean 1.0).

    ``include_self_in_k1=False`` (default) follows the re-ranking paper: self plus k1
    neighbours; ``True`` reproduces SpCL/cluster-contrast (k1 entries including self). See the
    module docstring for the exact definition. ``search``: "faiss" (IndexFlatIP, CPU), "torch"
    (chunked top-k on ``device``, default CUDA when present) or "exact" (the blocked exact search
    of ``reidkit.neighbors.exact_knn`` on ``device``). ``max_distance``: keep
    only entries <= this value (a memory saver for callers that threshold anyway).
    """
    v = v_matrix(features, k1, k2, device, search, include_self_in_k1)
    n = v.shape[0]
    rs, cs, ds = [], [], []
    for r, c, d in upper_chunks(v):
        if max_distance is not None:
            keep = d <= max_distance
            r, c, d = r[keep], c[keep], d[keep]
        rs.append(r.astype(np.int32))
        cs.append(c.astype(np.int32))
        ds.append(d.astype(np.float32))
    del v
    r, c, d = (np.concatenate(a) for a in (rs, cs, ds))
    del rs, cs, ds
    return symmetric_csr(r, c, d, n)
