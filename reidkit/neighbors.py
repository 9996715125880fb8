"""k-reciprocal neighbourhoods (Zhong et al., "Re-ranking Person Re-identification with
k-reciprocal Encoding", CVPR 2017): the one core shared by re-ranking and the Jaccard distance.

Both ``reidkit.evaluation.rerank`` (query x gallery re-ranking) and ``reidkit.cluster.jaccard``
(all-pairs Jaccard distance for pseudo labels) build the same k-reciprocal encoding ``V`` and
differ only in the distance they start from and in what they compute from ``V``:

1. **kNN lists** (``exact_knn``, ``knn_search``): for every item its ``K`` nearest items, the item
   itself included. ``exact_knn`` is a blocked exact search on squared Euclidean distances (CPU:
   numpy/BLAS with threshold selection; GPU: torch top-k), equal distances ordered by item
   index, and also returns every row's largest distance (re-ranking's normalisation needs it).
   ``knn_search`` ranks by cosine similarity of L2-normalised rows with the item itself forced
   first (the clustering convention), by faiss ``IndexFlatIP``, a chunked torch top-k, or
   ``exact_knn``.
2. **k-reciprocal sets** (``reciprocal_sets``): ``R(i) = {j in list(i) : i in list(j)}``, from the
   first ``K`` entries of every list (re-ranking: ``K = k1 + 1``).
3. **Expansion** (``expand_sets``): ``R*(i) = R(i) U R_h(c)`` for every ``c in R(i)`` whose half set
   (lists of ``round(k1 / 2) + 1`` items) shares more than 2/3 of its members with ``R(i)``.
4. **V** (``gaussian_weights``): ``V[i, j] = exp(-d(i, j)) / sum_{j' in R*(i)} exp(-d(i, j'))`` on
   the pattern of ``R*``, sparse (scipy CSR); ``pair_values`` reads ``d`` off the kNN lists and
   computes only the pairs the lists do not hold.
5. **Local query expansion** (``query_expansion``): ``V_qe[i] = mean of V[j]`` over the first
   ``k2`` entries of the list of ``i`` (skipped when ``k2 == 1``).

The CPU exact search selects by threshold rather than a top-k per block: the diagonal blocks go
first and give each row an upper bound tau on its final k-th distance; every later block reports
only its entries <= the row's (or the column's) tau, and each row group's candidates are cut back
to the k smallest now and then, which tightens tau. At Market-1501 size (N = 19,281, 512-d) this
reports about 250 candidates per row in all, and the matrix products are most of the time.

``k_reciprocal_encoding`` runs steps 2-5. Everything is sparse: memory is about
``N * (k1 + 1) * 2`` entries before query expansion, never ``N x N``.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from typing import Any, cast
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import scipy.sparse as sp
import torch
from numpy.typing import DTypeLike

from reidkit.errors import ReIDError
from reidkit.utils.runtime import resolve_device

__all__ = [
    "exact_knn",
    "knn_search",
    "stable_smallest",
    "list_matrix",
    "reciprocal_sets",
    "expand_sets",
    "pair_values",
    "pair_function",
    "gaussian_weights",
    "query_expansion",
    "k_reciprocal_encoding",
    "SEARCHES",
]

SEARCHES = ("faiss", "torch", "exact")
_SEARCH_BUDGET = 1 << 25  # query-rows x N similarities held at once in the torch search
_GATHER_BUDGET = 1 << 24  # pairs x feature-dim floats held at once when computing missing pairs


# --------------------------------------------------------------------------------------- kNN lists


def stable_smallest(block: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k smallest entries of each row, in stable-argsort order (ties by index)."""
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


def _restable(vals: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort top-k results by (value, index) so equal values keep index order."""
    order = torch.argsort(idx, dim=1)
    vals, idx = vals.gather(1, order), idx.gather(1, order)
    order = torch.argsort(vals, dim=1, stable=True)
    return vals.gather(1, order), idx.gather(1, order)


class _TopK:
    """Running k smallest (value, index) per row, merged lazily from per-block candidates."""

    def __init__(self, k: int, merge_every: int = 8) -> None:
        self.k, self.merge_every = k, merge_every
        self.pending: dict[int, list] = {}
        self.best: dict[int, tuple] = {}

    def add(self, key: int, vals: torch.Tensor, idx: torch.Tensor) -> None:
        lst = self.pending.setdefault(key, [])
        lst.append((vals, idx))
        if len(lst) >= self.merge_every:
            self._merge(key)

    def _merge(self, key: int) -> None:
        lst = self.pending.pop(key, [])
        if key in self.best:
            lst.insert(0, self.best[key])
        v = torch.cat([a for a, _ in lst], 1)
        i = torch.cat([b for _, b in lst], 1)
        if v.shape[1] > self.k:
            v, j = torch.topk(v, self.k, dim=1, largest=False, sorted=False)
            i = i.gather(1, j)
        self.best[key] = (v, i)

    def result(self, keys: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        for key in keys:
            self._merge(key)
        return (torch.cat([self.best[k][0] for k in keys]), torch.cat([self.best[k][1] for k in keys]))


def _sq_block(x: torch.Tensor, sq: torch.Tensor, ra: slice, rb: slice) -> torch.Tensor:
    """Squared Euclidean distances of rows ra x rows rb, computed in place on the Gram block."""
    d2 = x[ra] @ x[rb].T
    d2.mul_(-2.0).add_(sq[ra, None]).add_(sq[None, rb]).clamp_(min=0.0)
    return d2


def _exact_pass_torch(
    x: torch.Tensor, sq: torch.Tensor, nq: int, k: int, chunk_size: int, out: np.ndarray | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`_exact_pass` with torch (GPU): top-k per block, merged per row group."""
    n = x.shape[0]
    rowmax = torch.zeros(n, dtype=torch.float32, device=x.device)
    top = _TopK(k)
    starts = list(range(0, n, chunk_size))
    for a in starts:
        ra = slice(a, min(n, a + chunk_size))
        for b in starts:
            if b < a:
                continue
            rb = slice(b, min(n, b + chunk_size))
            d2 = _sq_block(x, sq, ra, rb)
            v, i = torch.topk(d2, min(k, d2.shape[1]), dim=1, largest=False, sorted=False)
            top.add(a, v, i + b)
            rowmax[ra] = torch.maximum(rowmax[ra], d2.amax(1))
            if b != a:
                d2t = d2.T.contiguous()
                v, i = torch.topk(d2t, min(k, d2t.shape[1]), dim=1, largest=False, sorted=False)
                top.add(b, v, i + a)
                rowmax[rb] = torch.maximum(rowmax[rb], d2t.amax(1))
            if out is not None:
                q1, g0 = min(ra.stop, nq), max(rb.start, nq)
                if ra.start < q1 and g0 < rb.stop:
                    out[ra.start : q1, g0 - nq : rb.stop - nq] = d2[: q1 - ra.start, g0 - rb.start :].cpu().numpy()
    best_d, best_i = top.result(starts)
    return best_d, best_i, rowmax


class _Pool:
    """Candidate neighbours of one group of rows: (local row, column, value) triples, compacted to
    the k smallest per row; `tau` is each row's current k-th smallest value (inf until it has k),
    an upper bound of its final k-th distance, so later blocks only report entries <= tau."""

    def __init__(self, rows: int, k: int) -> None:
        self.k = k
        self.rows = rows
        self.tau = np.full(rows, np.inf, dtype=np.float32)
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.size = 0

    def add(self, r: np.ndarray, c: np.ndarray, v: np.ndarray) -> None:
        self.parts.append((r, c, v))
        self.size += r.shape[0]
        if self.size > 4 * self.k * self.rows:
            self.compact()

    def compact(self) -> None:
        """Keep the k smallest candidates of each row (a padded rows x width argpartition)."""
        if not self.parts:
            return
        r, c, v = (np.concatenate(z) for z in zip(*self.parts)) if len(self.parts) > 1 else self.parts[0]
        counts = np.bincount(r, minlength=self.rows)
        order = np.argsort(r.astype(np.int16 if self.rows < 32768 else np.int32), kind="stable")  # radix
        r, c, v = r[order], c[order], v[order]
        slot = np.arange(r.shape[0]) - (np.cumsum(counts) - counts)[r]
        width = int(counts.max())
        pad_v = np.full((self.rows, width), np.inf, dtype=np.float32)
        pad_c = np.full((self.rows, width), -1, dtype=np.int64)
        pad_v[r, slot] = v
        pad_c[r, slot] = c
        if width > self.k:
            sel = np.argpartition(pad_v, self.k - 1, axis=1)[:, : self.k]
            # argpartition keeps an arbitrary subset of the values tied at the k-th place; the
            # lists rank equal distances by index, so rows with such a tie take the lowest columns
            kept = np.take_along_axis(pad_v, sel, 1)
            kth = kept.max(1)
            tied = (pad_v == kth[:, None]).sum(1) > (kept == kth[:, None]).sum(1)
            for row in np.flatnonzero(tied & np.isfinite(kth)):
                sel[row] = np.lexsort((pad_c[row], pad_v[row]))[: self.k]
            pad_v = np.take_along_axis(pad_v, sel, 1)
            pad_c = np.take_along_axis(pad_c, sel, 1)
        full = counts >= self.k
        self.tau[full] = pad_v[full].max(1)
        r, slot = np.nonzero(pad_c >= 0)
        self.parts = [(r, pad_c[r, slot], pad_v[r, slot])]
        self.size = r.shape[0]


def _exact_pass(
    x: torch.Tensor, sq: torch.Tensor, nq: int, k: int, chunk_size: int, out: np.ndarray | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact k nearest neighbours of every item (unsorted), every row's max squared distance, and
    optionally the raw squared Q x G block (into `out`), on CPU with numpy (BLAS products).

    One pass over the upper triangle of N x N blocks: an off-diagonal block serves the rows of
    both of its sides (half the matrix products). Selection by threshold: the diagonal blocks come
    first and give every row an upper bound tau on its final k-th distance (the k-th smallest in
    its own block); a block then only reports the entries at or below the row's (or, for the other
    side, the column's) tau, and each row group's candidates are compacted to the k smallest,
    tightening tau as the pass goes on.
    """
    if x.device.type != "cpu":
        return _exact_pass_torch(x, sq, nq, k, chunk_size, out)
    xn, sqn = x.numpy(), sq.numpy()
    sgemm = _sgemm() if xn.dtype == np.float32 else None
    n = xn.shape[0]
    rowmax = np.zeros(n, dtype=np.float32)
    starts = list(range(0, n, chunk_size))
    pools = {a: _Pool(min(n, a + chunk_size) - a, k) for a in starts}
    locks = {a: threading.Lock() for a in starts}

    def block(a: int, b: int) -> np.ndarray:
        """Squared distances sq_a + sq_b - 2 x_a.x_b of rows a.. x rows b.. (not clamped at 0:
        only the values that leave this pass are)."""
        xa, xb = xn[a : a + chunk_size], xn[b : b + chunk_size]
        d2 = np.add.outer(sqn[a : a + chunk_size], sqn[b : b + chunk_size])
        if sgemm is not None:
            # d2.T (Fortran order, no copy) = -2 xb xa^T + d2.T in one BLAS call
            sgemm(-2.0, xb.T, xa.T, beta=1.0, c=d2.T, trans_a=True, overwrite_c=True)
        else:
            d2 -= 2.0 * (xa @ xb.T)
        if out is not None:
            q1, g0 = min(a + d2.shape[0], nq), max(b, nq)
            if a < q1 and g0 < b + d2.shape[1]:
                # raw squared distances of the Q x G block (disjoint per block)
                dst = out[a:q1, g0 - nq : b + d2.shape[1] - nq]
                np.maximum(d2[: q1 - a, g0 - b :], 0.0, out=dst)
        return np.asarray(d2)

    def update_max(a: int, m: np.ndarray) -> None:
        with locks[a]:
            np.maximum(rowmax[a : a + m.shape[0]], m, out=rowmax[a : a + m.shape[0]])

    def diagonal(a: int) -> None:
        d2 = block(a, a)
        pool = pools[a]
        if d2.shape[1] >= k:  # the block's k-th smallest bounds the final k-th from above
            pool.tau[:] = np.partition(d2, k - 1, axis=1)[:, k - 1]
        r, c = np.divmod(np.flatnonzero(d2 <= pool.tau[:, None]), d2.shape[1])
        v = np.maximum(d2[r, c], 0.0)
        update_max(a, d2.max(1))
        with locks[a]:
            pool.add(r, c + a, v)

    def off_diagonal(ab: tuple[int, int]) -> None:
        a, b = ab
        d2 = block(a, b)
        pa, pb = pools[a], pools[b]
        # tau only ever decreases, so a value read while another thread compacts is still a
        # valid bound (at worst a few extra candidates)
        ta, tb = pa.tau.copy(), pb.tau.copy()
        r, c = np.divmod(np.flatnonzero((d2 <= ta[:, None]) | (d2 <= tb[None, :])), d2.shape[1])
        v = np.maximum(d2[r, c], 0.0)
        side_a = v <= ta[r]
        side_b = v <= tb[c]
        update_max(a, d2.max(1))
        update_max(b, d2.max(0))
        with locks[a]:
            pa.add(r[side_a], c[side_a] + b, v[side_a])
        with locks[b]:
            pb.add(c[side_b], r[side_b] + a, v[side_b])

    pairs = [(a, b) for a in starts for b in starts if b > a]
    workers = max(1, min(torch.get_num_threads(), len(pairs)))
    limits = _single_threaded_blas() if workers > 1 else contextlib.nullcontext()
    if limits is None:  # cannot pin BLAS to one thread per worker: let BLAS use the cores
        workers, limits = 1, contextlib.nullcontext()
    with limits:
        if workers == 1:
            for a in starts:
                diagonal(a)
            for ab in pairs:
                off_diagonal(ab)
        else:
            # blocks are independent; each worker runs BLAS and the selection of its own block, so
            # the selection overlaps the other worker's matrix product. Every diagonal block (the
            # first tau of every row) is done before any off-diagonal one starts.
            with ThreadPoolExecutor(workers) as ex:
                list(ex.map(diagonal, starts))
                list(ex.map(off_diagonal, pairs))
    best_d = np.empty((n, k), dtype=np.float32)
    best_i = np.empty((n, k), dtype=np.int64)
    for a in starts:
        pool = pools[a]
        pool.compact()
        r, c, v = pool.parts[0]
        if r.shape[0] != pool.rows * k:
            raise ReIDError("exact_knn: internal error, incomplete neighbour lists")
        best_d[a : a + pool.rows] = v.reshape(pool.rows, k)  # row-major: r is sorted
        best_i[a : a + pool.rows] = c.reshape(pool.rows, k)
    return torch.from_numpy(best_d), torch.from_numpy(best_i), torch.from_numpy(rowmax)


def _sgemm() -> Callable[..., np.ndarray] | None:
    """scipy's BLAS sgemm (alpha/beta/transposes: the distance block in one call), or None."""
    try:
        from scipy.linalg.blas import sgemm
    except ImportError:
        return None
    return sgemm


def _single_threaded_blas() -> contextlib.AbstractContextManager[Any] | None:
    """A context limiting BLAS to one thread (threadpoolctl, a scikit-learn dependency), or None."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    # threadpoolctl is untyped; threadpool_limits is a context manager
    return cast(contextlib.AbstractContextManager[Any], threadpool_limits(limits=1, user_api="blas"))


def exact_knn(
    x: torch.Tensor,
    k: int,
    chunk_size: int = 2048,
    qg_out: np.ndarray | None = None,
    num_query: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact k nearest rows of every row of ``x`` by squared Euclidean distance (the row itself
    included): ``(d2, idx, rowmax)``, d2/idx ``N x k`` sorted by (distance, index), rowmax ``N``
    (each row's largest squared distance to any row).

    Runs where ``x`` lives (CPU: numpy/BLAS on ``torch.get_num_threads()`` worker threads; CUDA:
    torch). ``chunk_size`` is the side of the distance blocks (chunk_size^2 floats per worker).
    ``qg_out`` (``num_query x (N - num_query)`` float32), if given, receives the raw squared
    distances of the first ``num_query`` rows to the others, computed in the same pass.
    Distances tied exactly at the k-th place keep the lowest indices on CPU; on CUDA
    ``torch.topk`` may keep any of them.
    """
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ReIDError(f"exact_knn: k must be in [1, {n}], got {k}")
    x = x.float().contiguous()
    sq = (x * x).sum(1)
    best_d, best_i, rowmax = _exact_pass(x, sq, num_query, int(k), int(chunk_size), qg_out)
    best_d, best_i = _restable(best_d, best_i)
    return best_d.cpu().numpy(), best_i.cpu().numpy(), rowmax.cpu().numpy()


def _self_first(idx: np.ndarray, sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Put each row's own index first (similarity 1) and keep the next k-1 other entries in order."""
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
    """(similarities, indices), each N x k, of each L2-normalised row's k most cosine-similar rows;
    the row itself first. ``search``: "faiss" (IndexFlatIP, CPU), "torch" (chunked top-k on
    ``device``, default CUDA when present) or "exact" (``exact_knn`` on ``device``)."""
    n = x.shape[0]
    k = min(k, n)
    kk = min(k + 1, n)  # one spare in case exact duplicates push self out of the list
    if search not in SEARCHES:
        raise ReIDError(f"search: expected one of {', '.join(repr(s) for s in SEARCHES)}, got {search!r}")
    if search == "faiss":
        try:
            import faiss
        except ImportError:  # pragma: no cover - faiss is a declared dependency
            warnings.warn("faiss is not importable; using search='torch'", stacklevel=2)
            search = "torch"
    sims: np.ndarray
    if search == "faiss":
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        sims, idx = index.search(x, kk)
    elif search == "torch":
        dev = resolve_device(device)
        xt = torch.from_numpy(x).to(dev)
        step = max(1, _SEARCH_BUDGET // n)
        out_i, out_s = [], []
        for a in range(0, n, step):
            top = torch.topk(xt[a : a + step] @ xt.T, kk, dim=1)
            out_i.append(top.indices.cpu())
            out_s.append(top.values.cpu())
        idx, sims = torch.cat(out_i).numpy(), torch.cat(out_s).numpy()
    else:
        # unit rows: |a - b|^2 = 2 - 2 cos(a, b), so the nearest are the most similar
        d2, idx, _ = exact_knn(torch.from_numpy(x).to(resolve_device(device)), kk)
        sims = 1.0 - 0.5 * d2
    idx, sims = _self_first(np.asarray(idx, dtype=np.int64), np.asarray(sims), k)
    return sims, idx


# ------------------------------------------------------------------------- sets, V, expansion


def list_matrix(idx: np.ndarray, n: int, dtype: DTypeLike = np.int32) -> sp.csr_matrix:
    """N x N CSR with ones at (i, idx[i, :]) (the lists hold distinct items per row)."""
    k = idx.shape[1]
    indptr = np.arange(0, n * k + 1, k, dtype=np.int64)
    m = sp.csr_matrix((np.ones(n * k, dtype=dtype), idx.ravel(), indptr), shape=(n, n))
    m.sort_indices()
    return m


def reciprocal_sets(lists: np.ndarray) -> sp.csr_matrix:
    """0/1 CSR of the k-reciprocal sets: j in R(i) iff j is in row i of ``lists`` and i in row j."""
    m = list_matrix(np.asarray(lists, dtype=np.int64), lists.shape[0])
    r = m.multiply(m.T.tocsr()).tocsr()
    r.eliminate_zeros()
    r.sort_indices()
    return cast(sp.csr_matrix, r)  # scipy-stubs type multiply().tocsr() as Any


def expand_sets(recip: sp.csr_matrix, half: sp.csr_matrix, chunk: int = 8192) -> sp.csr_matrix:
    """Pattern (0/1 CSR) of R*(i): R(i) plus the half set R_h(c) of every c in R(i) with
    |R_h(c) & R(i)| > 2/3 |R_h(c)|. Row chunks bound the memory of the overlap products."""
    n = recip.shape[0]
    half_t = half.T.tocsr()
    half_len = np.diff(half.indptr).astype(np.float64)
    parts = []
    for a in range(0, n, chunk):
        r = recip[a : a + chunk]
        # overlap[i, c] = |R(i) & R_h(c)|, read off at c in R(i)
        overlap = (r @ half_t).multiply(r).tocsr()
        overlap.eliminate_zeros()
        overlap.data = (overlap.data > (2.0 / 3.0) * half_len[overlap.indices]).astype(np.int32)
        overlap.eliminate_zeros()
        e = (r + overlap @ half).tocsr()
        e.data[:] = 1
        e.sort_indices()
        parts.append(e)
    return cast(sp.csr_matrix, sp.vstack(parts, format="csr") if len(parts) > 1 else parts[0])


def pair_values(
    rows: np.ndarray,
    cols: np.ndarray,
    knn_idx: np.ndarray,
    knn_val: np.ndarray,
    compute: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> np.ndarray:
    """Value of each pair (rows[p], cols[p]) (float64): from the kNN lists (``knn_val[i, t]`` is
    the value of (i, knn_idx[i, t])) where the pair is listed, ``compute(r, c)`` for the others.
    Most pairs of an expanded set are in the (longer) lists, so few need computing."""
    n = knn_idx.shape[0]
    order = np.argsort(knn_idx, axis=1)
    keys = (np.arange(n, dtype=np.int64)[:, None] * n + np.take_along_axis(knn_idx, order, 1)).ravel()
    vals = np.take_along_axis(knn_val, order, 1).ravel()
    want = rows.astype(np.int64) * n + cols
    at = np.minimum(np.searchsorted(keys, want), keys.shape[0] - 1)
    found = keys[at] == want
    out = np.where(found, vals[at], 0.0).astype(np.float64)
    miss = np.flatnonzero(~found)
    if miss.size:
        out[miss] = compute(rows[miss], cols[miss])
    return out


def pair_function(x: torch.Tensor, kind: str = "sqeuclidean") -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``f(rows, cols)``: float64 squared Euclidean distances ("sqeuclidean", clamped at 0) or dot
    products ("dot") of the given pairs of rows of ``x``, computed on ``x``'s device in chunks of
    bounded memory (for ``pair_values``' misses)."""
    if kind not in ("sqeuclidean", "dot"):
        raise ReIDError(f"pair_function: kind must be 'sqeuclidean' or 'dot', got {kind!r}")
    sq = (x * x).sum(1) if kind == "sqeuclidean" else None
    step = max(1, _GATHER_BUDGET // max(1, x.shape[1]))

    def f(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        out = np.empty(rows.shape[0], dtype=np.float64)
        for a in range(0, rows.shape[0], step):
            r = torch.from_numpy(rows[a : a + step].astype(np.int64)).to(x.device)
            c = torch.from_numpy(cols[a : a + step].astype(np.int64)).to(x.device)
            dots = (x[r] * x[c]).sum(1)
            val = dots if sq is None else (sq[r] + sq[c] - 2.0 * dots).clamp(min=0.0)
            out[a : a + step] = val.cpu().numpy()
        return out

    return f


def gaussian_weights(pattern: sp.csr_matrix, dist: np.ndarray, dtype: DTypeLike = np.float64) -> sp.csr_matrix:
    """V: exp(-dist) over each row's pattern entries (``dist`` in CSR order), rows summing to 1."""
    n = pattern.shape[0]
    counts = np.diff(pattern.indptr)
    rows = np.repeat(np.arange(n), counts)
    d = np.asarray(dist, dtype=np.float64)
    if d.size:
        # exp(-d) / sum exp(-d); subtracting the row minimum first gives the same ratio, stabler
        nonempty = counts > 0
        row_min = np.zeros(n)
        row_min[nonempty] = np.minimum.reduceat(d, pattern.indptr[:-1][nonempty])
        w = np.exp(-(d - row_min[rows]))
        w /= np.bincount(rows, weights=w, minlength=n)[rows]
    else:
        w = d
    return sp.csr_matrix((w.astype(dtype), pattern.indices.copy(), pattern.indptr.copy()), shape=(n, n))


def query_expansion(v: sp.csr_matrix, lists: np.ndarray) -> sp.csr_matrix:
    """Local query expansion: row i becomes the mean of the rows of V at ``lists[i]`` (k2 items)."""
    k2 = lists.shape[1]
    if k2 == 1 and (lists[:, 0] == np.arange(lists.shape[0])).all():
        return v
    q = list_matrix(np.asarray(lists, dtype=np.int64), v.shape[0], dtype=v.dtype)
    q.data[:] = 1.0 / k2
    out = (q @ v).tocsr()
    out.sort_indices()
    return cast(sp.csr_matrix, out)  # a csr times a csr is a csr; scipy-stubs type it Any


def k_reciprocal_encoding(
    lists: np.ndarray,
    k_main: int,
    k_half: int,
    k_qe: int,
    pair_dist: Callable[[np.ndarray, np.ndarray], np.ndarray],
    dtype: DTypeLike = np.float64,
) -> sp.csr_matrix:
    """V after query expansion (sparse N x N) from kNN lists (``N x K``, ``K >= k_main, k_half,
    k_qe``): reciprocal sets of the first ``k_main`` entries, expanded with half sets of the first
    ``k_half``, Gaussian weights of ``pair_dist(rows, cols)``, mean over the first ``k_qe``."""
    recip = reciprocal_sets(lists[:, :k_main])
    half = reciprocal_sets(lists[:, :k_half])
    pattern = expand_sets(recip, half)
    del recip, half
    rows = np.repeat(np.arange(pattern.shape[0]), np.diff(pattern.indptr))
    v = gaussian_weights(pattern, pair_dist(rows, pattern.indices), dtype)
    del pattern, rows
    if k_qe > 1:
        v = query_expansion(v, lists[:, :k_qe])
    return v
