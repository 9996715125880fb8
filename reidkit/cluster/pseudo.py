"""Pseudo labels from the sparse Jaccard distance: DBSCAN, the SSG eps rule, reports, k-means.

Designed to be called once per epoch by a cluster trainer::

    labels = pseudo_labels(features)                              # cluster contrast (eps 0.6)
    keep = labels >= 0
    labels = pseudo_labels(features, eps=0.6, outliers="singleton")  # SpCL
    labels = pseudo_labels(features, eps="rho", rho=1.6e-3)         # SSG's eps rule

Outlier modes (DBSCAN's noise points):

* ``"drop"``: outliers keep label -1; the trainer leaves them out of this epoch.
* ``"noise"``: all outliers share one extra label, ``n_clusters`` (the last id): they stay in
  training as a single "noise" class.
* ``"singleton"``: each outlier gets its own new id ``n_clusters, n_clusters + 1, ...`` in
  index order (SpCL's un-clustered instances as their own classes).

Cluster ids ``0..n_clusters-1`` are DBSCAN's, so every mode agrees on the clustered points.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from reidkit.cluster.jaccard import normalize_features, symmetric_csr, upper_chunks, v_matrix
from reidkit.errors import ReIDError

# A sparse pairwise-distance matrix as the Jaccard code makes it (CSR) or as a caller builds it (COO).
SparseDistance = sp.csr_matrix | sp.coo_matrix

__all__ = [
    "cluster_report",
    "eps_by_rho",
    "kmeans",
    "pseudo_labels",
    "eps_and_rho",
    "OUTLIER_MODES",
    "DEFAULT_EPS",
    "DEFAULT_RHO",
]

OUTLIER_MODES = ("drop", "noise", "singleton")
DEFAULT_EPS = 0.6  # cluster contrast / SpCL on the k-reciprocal Jaccard distance
DEFAULT_RHO = 1.6e-3  # SSG
_SHRINK_SLACK = 1 << 20  # extra candidates held before the streamed rho rule shrinks


def _num_smallest(n: int, rho: float) -> int:
    """How many of the N(N-1)/2 pairs the rho rule averages (rounded, at least one)."""
    if not 0.0 < rho <= 1.0:
        raise ReIDError(f"rho: expected a fraction in (0, 1], got {rho!r}")
    pairs = n * (n - 1) // 2
    if pairs == 0:
        raise ReIDError("features: the eps rule needs at least 2 samples")
    return max(1, int(np.round(rho * pairs)))


def _eps_from(smallest: np.ndarray, m: int, stored: int, stored_sum: float) -> float:
    """Mean of the m smallest pair distances, given every stored value's count and sum.

    ``smallest`` holds (at least) the m smallest stored upper-triangle values when
    ``stored >= m``; otherwise every unstored pair (distance 1.0) fills the remainder.
    """
    if stored >= m:
        return float(np.partition(smallest, m - 1)[:m].astype(np.float64).mean())
    return float((stored_sum + (m - stored) * 1.0) / m)


def eps_by_rho(dist: SparseDistance, rho: float = DEFAULT_RHO) -> float:
    """SSG's eps: mean of the smallest rho fraction of all N(N-1)/2 pairwise distances.

    Pairs absent from the sparse matrix count as distance 1.0. Unlike SSG's code, which drops
    exact zeros (``np.nonzero``) before sorting, every pair counts, zeros included.
    """
    dist = sp.csr_matrix(dist)
    n = dist.shape[0]
    m = _num_smallest(n, rho)
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(dist.indptr))
    vals = np.asarray(dist.data[dist.indices > rows], dtype=np.float64)
    return _eps_from(vals, m, len(vals), float(vals.sum()))


def eps_and_rho(eps: float | str | None, rho: float | None) -> tuple[float | None, float]:
    """(eps, rho) for ``pseudo_labels``: eps None means "pick by the rho rule"."""
    if isinstance(eps, str):
        if eps != "rho":
            raise ReIDError(f"eps: expected a positive distance or 'rho' (the SSG rule), got {eps!r}")
        return None, DEFAULT_RHO if rho is None else float(rho)
    if eps is None:
        if rho is None:
            return DEFAULT_EPS, DEFAULT_RHO
        return None, float(rho)
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating, np.integer)) or not eps > 0:
        raise ReIDError(f"eps: expected a positive distance or 'rho' (the SSG rule), got {eps!r}")
    return float(eps), DEFAULT_RHO if rho is None else float(rho)


def _threshold(dist: SparseDistance, eps: float) -> sp.csr_matrix:
    """Entries <= eps of a distance matrix, plus an explicit zero diagonal (zeros kept)."""
    dist = sp.csr_matrix(dist)
    n = dist.shape[0]
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(dist.indptr))
    keep = (dist.data <= eps) & (dist.indices != rows)
    r = np.concatenate([rows[keep], np.arange(n)]).astype(np.int32)
    c = np.concatenate([dist.indices[keep], np.arange(n)]).astype(np.int32)
    v = np.concatenate([np.clip(dist.data[keep], 0.0, None), np.zeros(n)]).astype(np.float32)
    return sp.coo_matrix((v, (r, c)), shape=(n, n)).tocsr()


def _streamed_rho(v: sp.csr_matrix, rho: float, eps: float | None) -> tuple[float, sp.csr_matrix]:
    """(eps, matrix of the entries <= eps) in one pass, never holding all pairs.

    eps is a mean of the m smallest distances, so it is at most the m-th smallest: every entry
    <= eps is among the m smallest (ties included), which is all this keeps.
    """
    n = v.shape[0]
    m = _num_smallest(n, rho) if eps is None else 0
    bound = 1.0 if eps is None else float(eps)
    stored, stored_sum = 0, 0.0
    kr: list[np.ndarray] = []
    kc: list[np.ndarray] = []
    kd: list[np.ndarray] = []
    held = 0
    for r, c, d in upper_chunks(v):
        off = r != c
        stored += int(off.sum())
        stored_sum += float(d[off].sum())
        keep = off & (d <= bound)
        kr.append(r[keep].astype(np.int32))
        kc.append(c[keep].astype(np.int32))
        kd.append(d[keep].astype(np.float32))
        held += int(keep.sum())
        if eps is None and held > 2 * m + _SHRINK_SLACK:
            # shrink to the m smallest so far (ties kept); later entries must beat them
            r_, c_, d_ = (np.concatenate(a) for a in (kr, kc, kd))
            bound = float(np.partition(d_, m - 1)[m - 1])
            sel = d_ <= bound
            kr, kc, kd = [r_[sel]], [c_[sel]], [d_[sel]]
            held = int(sel.sum())
    r, c, d = (np.concatenate(a) for a in (kr, kc, kd))
    if eps is None:
        eps = _eps_from(d, m, stored, stored_sum)
    sel = d <= eps
    diag = np.arange(n, dtype=np.int32)
    mat = symmetric_csr(
        np.concatenate([r[sel], diag]),
        np.concatenate([c[sel], diag]),
        np.concatenate([d[sel], np.zeros(n, np.float32)]),
        n,
    )
    return float(eps), mat


def pseudo_labels(
    features: np.ndarray | torch.Tensor | None,
    eps: float | str | None = None,
    k1: int = 30,
    k2: int = 6,
    min_samples: int = 4,
    rho: float | None = None,
    outliers: str = "drop",
    dist: SparseDistance | None = None,
    include_self_in_k1: bool = False,
    search: str = "faiss",
    device: str | torch.device | None = None,
    return_eps: bool = False,
) -> np.ndarray | tuple[np.ndarray, float]:
    """Cluster labels (int64, one per feature) by DBSCAN on the sparse Jaccard distance.

    eps: a Jaccard distance (default ``DEFAULT_EPS`` = 0.6, cluster contrast's and SpCL's value,
    which separates well-separated identities: 300 ids x 12 images give ARI 0.996), or
    ``"rho"`` for the SSG rule (``eps_by_rho``: the mean of the smallest ``rho`` fraction of all
    pair distances, ``rho`` default ``DEFAULT_RHO`` = 1.6e-3). Passing ``rho=`` without ``eps``
    also selects the rho rule. The rho rule fits SSG's setting: noisy features of a model trained
    on another domain, on a target set with many identities (rho = 1.6e-3 is about the share of
    same-identity pairs among ~750 ids on Market/Duke), where the smallest pair distances span
    the same-identity pairs. On well-separated features the smallest distances are near 0 (the
    members of a tight cluster share their reciprocal sets), so the rule picks a tiny eps and
    leaves most points as outliers (300 ids x 12 images: eps 0.03, ARI 0.01; eps 0.6: ARI 0.996).
    ``rho`` is ignored for a numeric eps.
    ``dist``: a precomputed sparse distance (absent entries = 1.0) used instead of computing one
    from ``features``. ``outliers``: "drop" (-1), "noise" (one shared extra id) or "singleton"
    (one new id each); see the module docstring. ``return_eps=True`` returns ``(labels, eps)``
    so a trainer can fix eps after the first round, as SSG does.
    """
    from sklearn.cluster import DBSCAN

    if outliers not in OUTLIER_MODES:
        raise ReIDError(f"outliers: expected one of {OUTLIER_MODES}, got {outliers!r}")
    if int(min_samples) != min_samples or min_samples < 1:
        raise ReIDError(f"min_samples: expected a positive integer, got {min_samples!r}")
    eps, rho = eps_and_rho(eps, rho)
    if dist is not None:
        if not sp.issparse(dist) or dist.shape[0] != dist.shape[1]:
            raise ReIDError("dist: expected a square scipy.sparse distance matrix")
        if features is not None and len(features) != dist.shape[0]:
            raise ReIDError(f"dist: expected {len(features)} rows (one per feature), got {dist.shape[0]}")
        if eps is None:
            eps = eps_by_rho(dist, rho)
        graph = _threshold(dist, eps)
    else:
        if features is None:
            raise ReIDError("features: expected an N x D array (or pass dist=)")
        v = v_matrix(features, k1, k2, device, search, include_self_in_k1)
        eps, graph = _streamed_rho(v, rho, eps)
        del v
    if not eps > 0:
        raise ReIDError(f"eps: the rho rule (rho={rho}) gave {eps!r} (many identical features?); pass a numeric eps")
    # Absent entries of a sparse precomputed matrix are "not neighbours" to scikit-learn; the
    # graph holds every pair <= eps explicitly (zero distances and the diagonal included).
    labels = DBSCAN(eps=eps, min_samples=int(min_samples), metric="precomputed").fit_predict(graph)
    labels = np.asarray(labels, dtype=np.int64)
    n_clusters = int(labels.max()) + 1 if labels.size else 0
    out = labels < 0
    if outliers == "noise":
        labels[out] = n_clusters
    elif outliers == "singleton":
        labels[out] = n_clusters + np.arange(int(out.sum()))
    return (labels, float(eps)) if return_eps else labels


def cluster_report(labels: np.ndarray, true_labels: np.ndarray | None = None) -> dict:
    """Cluster counts; with true labels also purity, NMI and ARI.

    ``labels``: -1 marks outliers (pass the "drop" labels). Purity is over the clustered
    samples (each cluster's majority true label); NMI and ARI are over all samples, each
    outlier counted as its own singleton cluster (so outliers are never merged into one).
    """
    from sklearn import metrics

    labels = np.asarray(labels).ravel()
    if labels.size == 0:
        raise ReIDError("labels: expected at least one label")
    clustered = labels >= 0
    ids, sizes = np.unique(labels[clustered], return_counts=True)
    n_out = int((~clustered).sum())
    rep: dict = {
        "n_samples": int(labels.size),
        "n_clusters": int(len(ids)),
        "n_outliers": n_out,
        "outlier_fraction": n_out / labels.size,
        "mean_cluster_size": float(sizes.mean()) if len(sizes) else 0.0,
        "max_cluster_size": int(sizes.max()) if len(sizes) else 0,
    }
    if true_labels is None:
        return rep
    true_labels = np.asarray(true_labels).ravel()
    if true_labels.shape != labels.shape:
        raise ReIDError(f"true_labels: expected {labels.size} labels (one per sample), got {true_labels.size}")
    if clustered.any():
        cont = metrics.cluster.contingency_matrix(labels[clustered], true_labels[clustered])
        purity = float(np.asarray(cont.max(axis=1)).sum() / clustered.sum())
    else:
        purity = 0.0
    single = labels.copy()
    top = int(labels.max()) + 1 if clustered.any() else 0
    single[~clustered] = top + np.arange(n_out)
    rep["purity"] = purity
    rep["nmi"] = float(metrics.normalized_mutual_info_score(true_labels, single))
    rep["ari"] = float(metrics.adjusted_rand_score(true_labels, single))
    return rep


def kmeans(
    features: np.ndarray | torch.Tensor,
    k: int,
    seed: int = 0,
    n_init: int = 4,
    max_iter: int = 300,
    normalize: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """k-means (scikit-learn, k-means++): (centres k x D float32, labels N int64)."""
    from sklearn.cluster import KMeans

    if isinstance(features, torch.Tensor):
        features = features.detach().float().cpu().numpy()
    x = normalize_features(features) if normalize else np.asarray(features, dtype=np.float32)
    if x.ndim != 2:
        raise ReIDError(f"features: expected a 2-d array (N x D), got shape {x.shape}")
    if int(k) != k or not 1 <= k <= len(x):
        raise ReIDError(f"k: expected an integer in [1, {len(x)}], got {k!r}")
    km = KMeans(n_clusters=int(k), n_init=n_init, max_iter=max_iter, random_state=seed)
    lab = km.fit_predict(x)
    return km.cluster_centers_.astype(np.float32), lab.astype(np.int64)
