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

Only pairs whose ``V_qe`` rows share support are stored (every other pair has distance 1).
The diagonal is stored as explicit zeros, as is any other pair at distance 0, so a consumer
that treats missing entries as "far" (DBSCAN on a sparse precomputed matrix) stays correct.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
import torch

from reidkit.errors import ReIDError

__all__ = ["jaccard_distance", "knn_search", "normalize_features", "v_matrix", "upper_chunks"]

# Rough element budgets: they bound the transient memory of one chunk independently of N.
_GATHER_BUDGET = 1 << 24  # pairs x feature-dim floats held at once when computing d(i, j)
_TRIPLE_BUDGET = 1 << 22  # (row, column, value) triples expanded at once in the Jaccard step
_SEARCH_BUDGET = 1 << 25  # query-rows x N similarities held at once in the torch search


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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


def _self_first(idx: np.ndarray, sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Put each row's own index first and keep the next k-1 other entries in their order."""
    n = idx.shape[0]
    other = idx != np.arange(n)[:, None]
    # Stable sort on "is self" moves self (wherever it is, if at all) out of the way.
    order = np.argsort(~other, axis=1, kind="stable")[:, : k - 1]
    idx = np.concatenate([np.arange(n)[:, None], np.take_along_axis(idx, order, axis=1)], 1)
    sims = np.concatenate([np.ones((n, 1)), np.take_along_axis(sims, order, axis=1)], 1)
    return idx.astype(np.int64), sims.astype(np.float32)


def knn_search(
    x: np.ndarray, k: int, search: str = "faiss", device: str | torch.device | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, indices), each N x k, of each row's k most similar rows; self first."""
    n = x.shape[0]
    k = min(k, n)
    kk = min(k + 1, n)  # one spare in case exact duplicates push self out of the list
    if search == "faiss":
        try:
            import faiss
        except ImportError:  # pragma: no cover - faiss is a declared dependency
            warnings.warn("faiss is not importable; using search='torch'", stacklevel=2)
            search = "torch"
    if search == "faiss":
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        sims, idx = index.search(x, kk)
    elif search == "torch":
        dev = _resolve_device(device)
        xt = torch.from_numpy(x).to(dev)
        step = max(1, _SEARCH_BUDGET // n)
        out_i, out_s = [], []
        for a in range(0, n, step):
            top = torch.topk(xt[a : a + step] @ xt.T, kk, dim=1)
            out_i.append(top.indices.cpu())
            out_s.append(top.values.cpu())
        idx, sims = torch.cat(out_i).numpy(), torch.cat(out_s).numpy()
    else:
        raise ReIDError(f"search: expected 'faiss' or 'torch', got {search!r}")
    idx, sims = _self_first(np.asarray(idx, dtype=np.int64), np.asarray(sims), k)
    return sims, idx


def _list_matrix(idx: np.ndarray, n: int, dtype=np.int32) -> sp.csr_matrix:
    """Boolean-pattern CSR matrix with row i holding the entries of idx[i]."""
    k = idx.shape[1]
    indptr = np.arange(0, n * k + 1, k, dtype=np.int64)
    m = sp.csr_matrix((np.ones(n * k, dtype=dtype), idx.ravel(), indptr), shape=(n, n))
    m.sort_indices()
    return m


def _reciprocal(lists: sp.csr_matrix) -> sp.csr_matrix:
    """R(i) = {j in list(i) : i in list(j)} as a 0/1 CSR matrix."""
    r = lists.multiply(lists.T.tocsr()).tocsr()
    r.eliminate_zeros()
    r.sort_indices()
    return r


def _expansion(recip: sp.csr_matrix, half: sp.csr_matrix, chunk: int = 8192) -> sp.csr_matrix:
    """Pattern of R*(i): R(i) plus every qualifying candidate's half set."""
    n = recip.shape[0]
    half_t = half.T.tocsr()
    half_len = np.diff(half.indptr).astype(np.float64)
    parts = []
    for a in range(0, n, chunk):
        r = recip[a : a + chunk]
        # overlap[i, c] = |R(i) & R_h(c)|, read off at c in R(i)
        overlap = (r @ half_t).multiply(r).tocsr()
        overlap.eliminate_zeros()
        ok = overlap.data > (2.0 / 3.0) * half_len[overlap.indices]
        overlap.data = ok.astype(np.int32)
        overlap.eliminate_zeros()
        e = (r + overlap @ half).tocsr()
        e.data[:] = 1
        e.sort_indices()
        parts.append(e)
    return sp.vstack(parts, format="csr")



def _weights(
    pattern: sp.csr_matrix, x: np.ndarray, idx: np.ndarray, sims: np.ndarray, device: torch.device
) -> sp.csr_matrix:
    """V: exp(-d) over each row's pattern, normalised to sum to one per row (float32)."""
    n, dim = x.shape
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(pattern.indptr))
    cols = pattern.indices.astype(np.int64)
    # Most members of R*(i) are in i's kNN list, whose similarities the search already gave;
    # look them up and compute only the rest (and self, which the lists report as exactly 1).
    order = np.argsort(idx, axis=1)
    knn_key = (np.arange(n)[:, None] * n + np.take_along_axis(idx, order, 1)).ravel()
    knn_sim = np.take_along_axis(sims, order, 1).ravel()
    key = rows * n + cols
    at = np.minimum(np.searchsorted(knn_key, key), len(knn_key) - 1)
    found = (knn_key[at] == key) & (rows != cols)
    dots = np.where(found, knn_sim[at], 0.0).astype(np.float32)
    del key, at, knn_key, knn_sim
    miss = np.flatnonzero(~found)
    xt = torch.from_numpy(x).to(device)
    step = max(1, _GATHER_BUDGET // dim)
    for a in range(0, len(miss), step):
        sel = miss[a : a + step]
        r = torch.from_numpy(rows[sel]).to(device)
        c = torch.from_numpy(cols[sel]).to(device)
        dots[sel] = (xt[r] * xt[c]).sum(1).cpu().numpy()
    d = 2.0 - 2.0 * dots.astype(np.float64)
    if len(d):
        # exp(-d) / sum exp(-d); subtracting the row minimum first is the same ratio, stabler
        w = np.exp(-(d - np.minimum.reduceat(d, pattern.indptr[:-1])[rows]))
        w /= np.add.reduceat(w, pattern.indptr[:-1])[rows]
    else:
        w = d
    return sp.csr_matrix((w.astype(np.float32), pattern.indices, pattern.indptr), shape=(n, n))


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
    dev = _resolve_device(device)
    k_main = min(int(k1) if include_self_in_k1 else int(k1) + 1, n)
    k_half = min(int(np.around(k1 / 2)) + 1, n)
    k_qe = min(int(k2), n)
    if k_qe > k_main:
        raise ReIDError(f"k2: expected k2 <= the kNN list length ({k_main}), got {k2}")
    sims, idx = knn_search(x, max(k_main, k_half), search=search, device=dev)
    recip = _reciprocal(_list_matrix(idx[:, :k_main], n))
    half = _reciprocal(_list_matrix(idx[:, :k_half], n))
    pattern = _expansion(recip, half)
    del recip, half
    v = _weights(pattern, x, idx, sims, dev)
    del pattern, sims
    if k_qe > 1:
        q = _list_matrix(idx[:, :k_qe], n, dtype=np.float32)
        q.data[:] = 1.0 / k_qe
        v = (q @ v).tocsr()
        v.sort_indices()
    return v


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
    module docstring for the exact definition. ``search``: "faiss" (IndexFlatIP, CPU) or
    "torch" (chunked top-k on ``device``, default CUDA when present). ``max_distance``: keep
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
