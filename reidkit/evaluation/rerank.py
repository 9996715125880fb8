"""k-reciprocal re-ranking (Zhong et al., CVPR 2017), exact, on sparse neighbour structures.

Two entry points give the original algorithm's results:

- ``re_ranking(q_g_dist, q_q_dist, g_g_dist, k1, k2, lambda_value)``: the field's signature on
  dense distance matrices. Like the original code it *squares* its inputs, so pass plain
  Euclidean distances to re-rank on squared Euclidean ones (torchreid passes squared distances,
  which re-ranks on their squares).
- ``re_ranking_features(q_feats, g_feats, ...)``: the same result as ``re_ranking`` on the plain
  Euclidean distance matrices of those features, without any N x N matrix (N = Q + G). Only the
  k nearest neighbours of every item, each row's largest distance (the original's per-column
  normalisation: the all-pairs matrix is symmetric, so dividing column j by its max and
  transposing divides row i by the max of row i, and that never changes a row's ranking), and
  the distances of the few pairs inside each expanded reciprocal set are computed, in chunks,
  with torch (GPU when present).

Neighbour order is stable: equal distances rank by item index (queries first, then gallery).
The weights V are sparse (scipy CSR, about k1 * 2 nonzeros per row before query expansion);
the Jaccard term sum_l min(V[i, l], V[j, l]) is accumulated for the Q x G block only, by
joining each query's nonzeros with an inverted index over the gallery rows' nonzero columns.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from reidkit.errors import ReIDError
from reidkit.evaluation.distance import pick_device, to_tensor

__all__ = ["re_ranking", "re_ranking_features"]


def _check_params(k1: int, k2: int, lambda_value: float, n: int) -> None:
    if k1 < 1 or k2 < 1:
        raise ReIDError(f"re-ranking: k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ReIDError(f"re-ranking: lambda_value must be in [0, 1], got {lambda_value}")
    if max(k1 + 1, k2) > n:
        raise ReIDError(f"re-ranking: k1 + 1 = {k1 + 1} and k2 = {k2} must not exceed the number of "
                        f"items (queries + gallery = {n})")


def _stable_smallest(block: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k smallest entries of each row, in stable-argsort order."""
    n = block.shape[1]
    if k >= n:
        return np.argsort(block, axis=1, kind="stable")[:, :k]
    kth = np.partition(block, k - 1, axis=1)[:, k - 1 : k]
    out = np.empty((block.shape[0], k), dtype=np.int64)
    for r in range(block.shape[0]):
        # every entry <= the k-th value is a candidate, so boundary ties resolve by index
        cand = np.flatnonzero(block[r] <= kth[r, 0])
        order = np.lexsort((cand, block[r, cand]))
        out[r] = cand[order[:k]]
    return out


def _restable(vals: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Re-sort top-k results by (value, index) so equal values keep index order."""
    order = torch.argsort(idx, dim=1)
    vals, idx = vals.gather(1, order), idx.gather(1, order)
    order = torch.argsort(vals, dim=1, stable=True)
    return idx.gather(1, order)


def _reciprocal(knn: np.ndarray, k: int, n: int) -> sp.csr_matrix:
    """0/1 matrix of the k-reciprocal sets: j in R(i) iff each is in the other's k+1 list."""
    rows = np.repeat(np.arange(n), k + 1)
    a = sp.csr_matrix((np.ones(rows.shape[0], np.float32), (rows, knn[:, : k + 1].ravel())), shape=(n, n))
    a.data[:] = 1.0  # duplicate (row, col) pairs would sum; neighbour lists have none
    r = a.multiply(a.T).tocsr()
    r.eliminate_zeros()
    return r


def _expanded_sets(knn: np.ndarray, k1: int, n: int) -> sp.csr_matrix:
    """Pattern of each item's expanded k-reciprocal set (original's candidate expansion rule)."""
    r = _reciprocal(knn, k1, n)
    half = int(np.around(k1 / 2.0))
    rh = _reciprocal(knn, half, n)
    size_h = np.diff(rh.indptr)
    # overlap[i, c] = |R_half(c) & R(i)| for candidates c in R(i)
    overlap = (r @ rh.T).multiply(r).tocoo()
    keep = overlap.data > 2.0 / 3 * size_h[overlap.col]
    sel = sp.csr_matrix((np.ones(int(keep.sum()), np.float32), (overlap.row[keep], overlap.col[keep])), shape=(n, n))
    e = (r + sel @ rh).tocsr()
    e.sum_duplicates()
    e.sort_indices()
    return e


def _sparse_core(knn, pair_dist, n, num_q, k1, k2, lambda_value, out, device):
    """Shared algorithm given stable kNN lists, a normalised pair-distance function and the
    normalised original Q x G block in `out` (overwritten with the final distances)."""
    e = _expanded_sets(knn, k1, n)
    rows = np.repeat(np.arange(n), np.diff(e.indptr))
    w = np.exp(-pair_dist(rows, e.indices).astype(np.float64))
    w /= np.bincount(rows, weights=w, minlength=n)[rows]
    v = sp.csr_matrix((w, e.indices.copy(), e.indptr.copy()), shape=(n, n))
    if k2 != 1:
        qrows = np.repeat(np.arange(n), k2)
        qe = sp.csr_matrix((np.full(qrows.shape[0], 1.0 / k2), (qrows, knn[:, :k2].ravel())), shape=(n, n))
        v = (qe @ v).tocsr()
    v.sort_indices()
    _jaccard_into(v, num_q, lambda_value, out, device)
    return out


def _jaccard_into(v: sp.csr_matrix, num_q: int, lambda_value: float, out: np.ndarray, device,
                  max_pairs: int = 1 << 21) -> None:
    """out[i, j] = (1-lambda) * (1 - m / (2 - m)) + lambda * out[i, j], m = sum_l min(V_i, V_gj)."""
    dev = pick_device(device)
    num_g = out.shape[1]
    vg = v[num_q:].tocsc()  # inverted index: for each column l, the gallery rows using it
    g_ptr = torch.from_numpy(vg.indptr.astype(np.int64)).to(dev)
    g_row = torch.from_numpy(vg.indices.astype(np.int64)).to(dev)
    g_val = torch.from_numpy(vg.data).to(dev)
    col_count = np.diff(vg.indptr)
    vq = v[:num_q]
    # pairs each query produces in the join; chunk queries to bound them
    per_entry = col_count[vq.indices]
    per_row = np.add.reduceat(per_entry, vq.indptr[:-1]) if per_entry.size else np.zeros(num_q, np.int64)
    per_row[np.diff(vq.indptr) == 0] = 0
    # the dense (rows x G) float64 accumulators are the other bound on a chunk
    max_rows = max(1, (1 << 22) // max(1, num_g))
    bounds, acc, start = [], 0, 0
    for i, c in enumerate(per_row.tolist()):
        if (acc + c > max_pairs or i - start >= max_rows) and i > start:
            bounds.append((start, i))
            start, acc = i, 0
        acc += c
    bounds.append((start, num_q))
    for r0, r1 in bounds:
        p0, p1 = vq.indptr[r0], vq.indptr[r1]
        b = r1 - r0
        m = torch.zeros(b * num_g, dtype=torch.float64, device=dev)
        if p1 > p0:
            e_row = torch.from_numpy(np.repeat(np.arange(b), np.diff(vq.indptr[r0 : r1 + 1]))).to(dev)
            e_col = torch.from_numpy(vq.indices[p0:p1].astype(np.int64)).to(dev)
            e_val = torch.from_numpy(vq.data[p0:p1]).to(dev)
            starts = g_ptr[e_col]
            cnt = g_ptr[e_col + 1] - starts
            total = int(cnt.sum())
            if total:
                rep = torch.repeat_interleave(torch.arange(e_col.shape[0], device=dev), cnt)
                offs = torch.arange(total, device=dev) - torch.repeat_interleave(torch.cumsum(cnt, 0) - cnt, cnt)
                gi = starts[rep] + offs
                vals = torch.minimum(e_val[rep], g_val[gi])
                m.index_add_(0, e_row[rep] * num_g + g_row[gi], vals)
        m = m.view(b, num_g)
        jac = 1.0 - m / (2.0 - m)
        orig = torch.from_numpy(out[r0:r1]).to(dev)
        res = (1.0 - lambda_value) * jac + lambda_value * orig.double()
        out[r0:r1] = res.float().cpu().numpy()


def re_ranking(q_g_dist, q_q_dist, g_g_dist, k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
               device=None) -> np.ndarray:
    """k-reciprocal re-ranking of dense distance matrices (field signature); returns Q x G."""
    qg, qq, gg = (np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float32)
                  for x in (q_g_dist, q_q_dist, g_g_dist))
    nq, ng = qg.shape if qg.ndim == 2 else (-1, -1)
    if qg.ndim != 2 or qq.shape != (nq, nq) or gg.shape != (ng, ng):
        raise ReIDError(f"re_ranking: expected q_g (Q x G), q_q (Q x Q), g_g (G x G); got {qg.shape}, "
                        f"{qq.shape}, {gg.shape}")
    if nq == 0:
        raise ReIDError("re_ranking: the query set is empty")
    n = nq + ng
    _check_params(k1, k2, lambda_value, n)
    original = np.block([[qq, qg], [qg.T, gg]]).astype(np.float32)
    np.power(original, 2, out=original)
    # the original divides each column by its max, then transposes
    original = np.ascontiguousarray((original / np.max(original, axis=0)).T)
    k = max(k1 + 1, k2)
    knn = np.concatenate([_stable_smallest(original[s : s + 512], k) for s in range(0, n, 512)])
    out = np.ascontiguousarray(original[:nq, nq:])
    return _sparse_core(knn, lambda r, c: original[r, c], n, nq, k1, k2, lambda_value, out, device)


def re_ranking_features(q_feats, g_feats, k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
                        device=None, chunk_size: int = 2048) -> np.ndarray:
    """Re-ranking from features (squared Euclidean as the original distance); no N x N matrix."""
    qf, gf = to_tensor(q_feats, "query features"), to_tensor(g_feats, "gallery features")
    if qf.shape[1] != gf.shape[1]:
        raise ReIDError(f"features: query dim {qf.shape[1]} != gallery dim {gf.shape[1]}")
    nq, ng = qf.shape[0], gf.shape[0]
    if nq == 0:
        raise ReIDError("re_ranking_features: the query set is empty")
    n = nq + ng
    _check_params(k1, k2, lambda_value, n)
    dev = pick_device(device)
    x = torch.cat([qf, gf]).to(dev)
    sq = (x * x).sum(1)
    k = max(k1 + 1, k2)
    # a longer list than the algorithm needs: most expanded-set pairs are found in it, so their
    # distances need no second pass over the features
    k_store = min(n, 2 * k)
    best_d = torch.full((n, k_store), float("inf"), device=dev)
    best_i = torch.zeros((n, k_store), dtype=torch.int64, device=dev)
    rowmax = torch.zeros(n, dtype=torch.float32, device=dev)
    out = np.empty((nq, ng), dtype=np.float32)

    def merge(rows: slice, block: torch.Tensor, col0: int) -> None:
        kk = min(k_store, block.shape[1])
        v, i = torch.topk(block, kk, dim=1, largest=False, sorted=False)
        v = torch.cat([best_d[rows], v], 1)
        i = torch.cat([best_i[rows], i + col0], 1)
        v, j = torch.topk(v, k_store, dim=1, largest=False, sorted=False)
        best_d[rows], best_i[rows] = v, i.gather(1, j)
        rowmax[rows] = torch.maximum(rowmax[rows], block.max(1).values)

    # the distance matrix is symmetric: each off-diagonal block is computed once and serves the
    # rows of both of its sides, halving the matrix products
    starts = list(range(0, n, chunk_size))
    for a in starts:
        ra = slice(a, min(n, a + chunk_size))
        for b in starts:
            if b < a:
                continue
            rb = slice(b, min(n, b + chunk_size))
            d2 = sq[ra, None] + sq[None, rb] - 2.0 * (x[ra] @ x[rb].T)
            d2.clamp_(min=0.0)
            merge(ra, d2, b)
            if b != a:
                merge(rb, d2.T, a)
            # raw squared distances of the Q x G block; normalised once every row max is known
            q1, g0 = min(ra.stop, nq), max(rb.start, nq)
            if ra.start < q1 and g0 < rb.stop:
                out[ra.start : q1, g0 - nq : rb.stop - nq] = d2[: q1 - ra.start, g0 - rb.start :].cpu().numpy()
    if (rowmax <= 0).any():
        raise ReIDError("re_ranking_features: some item has distance 0 to every other item (identical features)")
    knn = _restable(best_d, best_i).cpu().numpy()
    knn_d2 = torch.sort(best_d, dim=1).values.cpu().numpy()  # the values in knn's order
    rm = rowmax[:nq].cpu().numpy()
    for s0 in range(0, nq, 1024):
        out[s0 : s0 + 1024] /= rm[s0 : s0 + 1024, None]
    rowmax_np = rowmax.cpu().numpy().astype(np.float64)

    stored_keys = (np.arange(n)[:, None] * n + knn).ravel()
    key_order = np.argsort(stored_keys)
    stored_keys, stored_d2 = stored_keys[key_order], knn_d2.ravel()[key_order]

    def pair_dist(r: np.ndarray, c: np.ndarray) -> np.ndarray:
        keys = r.astype(np.int64) * n + c
        pos = np.minimum(np.searchsorted(stored_keys, keys), stored_keys.shape[0] - 1)
        found = stored_keys[pos] == keys
        res = np.where(found, stored_d2[pos], 0.0).astype(np.float64)
        miss = np.flatnonzero(~found)
        step = max(1, (1 << 22) // max(1, x.shape[1]))
        for s in range(0, miss.shape[0], step):
            m = miss[s : s + step]
            rr = torch.from_numpy(r[m].astype(np.int64)).to(dev)
            cc = torch.from_numpy(c[m].astype(np.int64)).to(dev)
            d2 = sq[rr] + sq[cc] - 2.0 * (x[rr] * x[cc]).sum(1)
            res[m] = d2.clamp(min=0.0).cpu().numpy()
        return res / rowmax_np[r]

    return _sparse_core(knn[:, :k], pair_dist, n, nq, k1, k2, lambda_value, out, device)
