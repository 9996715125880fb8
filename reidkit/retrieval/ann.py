"""Approximate nearest-neighbour search with faiss (inner product on L2-normalised features = cosine).

Index kinds: ``flat`` (exact), ``ivf`` (IVF-Flat), ``ivfpq`` (IVF with product-quantised codes in
memory; the top ``refine_k * k`` candidates are re-scored exactly with their stored vectors, so
memory holds codes only) and ``hnsw`` (HNSW-Flat). Jegou et al., "Product quantization for nearest
neighbor search" (TPAMI 2011); Malkov & Yashunin, "Efficient and robust approximate nearest neighbor
search using HNSW" (2018).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from reidkit.errors import OptionError, ReIDError
from reidkit.utils.validate import check_positive

__all__ = [
    "INDEX_KINDS",
    "DEFAULT_APPROX_INDEX",
    "HNSW_M",
    "DEFAULT_NPROBE",
    "DEFAULT_EF_SEARCH",
    "DEFAULT_REFINE_K",
    "default_nlist",
    "default_pq_m",
    "make_faiss_index",
    "set_search_params",
    "refine_exact",
    "index_params",
]

INDEX_KINDS = ("flat", "ivf", "ivfpq", "hnsw")
# What `--index approx` means, chosen from benchmarks/results/million.md (1M x 256-d, 2 threads):
# IVF-PQ at nprobe 32, refine_k 8 had recall@10 0.990, p99 6.3 ms in 71 MiB; IVF-Flat needs 986 MiB
# for the same recall, HNSW 1,244 MiB and reached only 0.949 at efSearch 128.
DEFAULT_APPROX_INDEX = "ivfpq"
HNSW_M = 32
DEFAULT_NPROBE = 32
DEFAULT_EF_SEARCH = 128
# IVF-PQ: candidates re-scored exactly = REFINE_K * k.
DEFAULT_REFINE_K = 8


def default_nlist(n: int) -> int:
    """IVF list count: about 4 * sqrt(N), and at most N / 39 so every centroid gets enough training points."""
    return int(max(1, min(round(4 * np.sqrt(max(n, 1))), n // 39 if n >= 39 else 1)))


def default_pq_m(dim: int) -> int:
    """PQ sub-quantisers: the largest divisor of `dim` that is at most dim / 4 and at most 64."""
    for m in range(min(64, max(1, dim // 4)), 0, -1):
        if dim % m == 0:
            return m
    return 1


def make_faiss_index(
    kind: str,
    dim: int,
    train: np.ndarray | None = None,
    nlist: int | None = None,
    hnsw_m: int = HNSW_M,
    pq_m: int | None = None,
    seed: int = 0,
) -> Any:
    """An empty inner-product faiss index of `kind` that takes `add_with_ids`; ivf / ivfpq are trained on `train`.

    ivfpq holds only the PQ codes (dim / pq_m times smaller than the vectors); the gallery re-scores
    its top candidates exactly with the vectors kept in the store (see `Gallery.search_features`).
    """
    import faiss

    if kind not in INDEX_KINDS:
        raise OptionError("kind", f"expected one of {', '.join(INDEX_KINDS)}, got {kind!r}")
    check_positive("nlist", nlist)
    check_positive("pq_m", pq_m)
    if kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if kind == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = 80
        return faiss.IndexIDMap2(inner)
    if train is None or len(train) == 0:
        raise ReIDError(f"{kind} index: needs training features (the gallery is empty)")
    train = np.ascontiguousarray(train, dtype=np.float32)
    nlist = int(nlist or default_nlist(len(train)))
    if nlist > len(train):
        raise OptionError("nlist", f"more lists than gallery entries ({len(train)})", value=nlist)
    quantizer = faiss.IndexFlatIP(dim)
    index: faiss.IndexIVF
    if kind == "ivf":
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        m = int(pq_m or default_pq_m(dim))
        if dim % m:
            raise OptionError("pq_m", f"must divide the feature dimension {dim}", value=m)
        # 8-bit codes need >= 256 training points per sub-quantiser; small galleries get fewer bits.
        nbits = int(max(1, min(8, np.floor(np.log2(max(2, len(train)))))))
        ivfpq = faiss.IndexIVFPQ(quantizer, dim, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
        ivfpq.pq.cp.min_points_per_centroid = 1
        ivfpq.pq.cp.seed = int(seed)
        index = ivfpq
    index.cp.seed = int(seed)
    # faiss only warns below 39 points per centroid; small galleries are expected to be there
    index.cp.min_points_per_centroid = 1
    index.train(train)
    return index


def set_search_params(index: Any, nprobe: int | None = None, ef_search: int | None = None) -> None:
    """Set IVF nprobe (clamped to nlist) and HNSW efSearch through the id-map wrapper."""
    import faiss

    check_positive("nprobe", nprobe)
    check_positive("ef_search", ef_search)
    if nprobe is not None:
        try:
            ivf = faiss.extract_index_ivf(index)
        except RuntimeError:
            ivf = None
        if ivf is not None:
            ivf.nprobe = int(min(int(nprobe), ivf.nlist))
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    if ef_search is not None and hasattr(inner, "hnsw"):
        inner.hnsw.efSearch = int(ef_search)


def refine_exact(
    queries: np.ndarray, candidates: np.ndarray, vectors: Callable[[np.ndarray], np.ndarray], k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Re-score each row's candidate ids exactly (inner product with `vectors(ids)`); (scores, ids) top k, -1 padded.

    The IVF-PQ re-ranking step of Jegou et al. (2011), with the exact vectors read from the store
    instead of held in memory.
    """
    out_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    out_i = np.full((len(queries), k), -1, dtype=np.int64)
    for b in range(len(queries)):
        cand = candidates[b][candidates[b] >= 0]
        if len(cand) == 0:
            continue
        scores = vectors(cand) @ queries[b]
        top = np.argsort(-scores, kind="stable")[:k]
        out_s[b, : len(top)] = scores[top]
        out_i[b, : len(top)] = cand[top]
    return out_s, out_i


def index_params(info: dict[str, str]) -> dict[str, Any]:
    """The stored search settings (nprobe, ef_search) of a gallery's info record."""
    return {
        "nprobe": int(info.get("nprobe", DEFAULT_NPROBE)),
        "ef_search": int(info.get("ef_search", DEFAULT_EF_SEARCH)),
    }
