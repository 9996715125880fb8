"""One re-clustering round of unsupervised training, as a pure function: features in, a ``Round`` out.

For every feature space (the global feature, or SSG's global / upper / lower):

1. camera centring (optional): each camera's mean feature is subtracted and the result
   re-normalised, so that a camera's style does not make clusters of its own;
2. the k-reciprocal Jaccard distance, mixed with a source-domain term when source features are
   given (SSG / UDAP): ``d = (1 - w) * Jaccard + w * (d_s(i) + d_s(j))``, ``d_s`` = mean distance
   of an image to its ``source_k`` nearest source features;
3. DBSCAN at ``eps``; with no eps, the rho rule (SSG: the mean of the smallest rho fraction of the
   pair distances), optionally fixed after the first round (``fixed_eps`` carries it);

then the outlier policy over the spaces (an image that is an outlier in any space is left out;
``noise`` keeps outliers of the global space as one class, ``singleton`` as one class each) and
relabelling to contiguous ids. The result carries the per-space labels and a report (eps, counts,
purity / NMI / ARI against true labels when given: for the log only, never for training).

Nothing here knows the trainer or the config: :class:`RoundSettings` holds the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from reidkit.errors import ReIDError

__all__ = [
    "Round",
    "RoundSettings",
    "camera_centred",
    "cluster_round",
    "cluster_space",
    "relabel_round",
    "source_distance",
]


@dataclass
class Round:
    """One re-clustering round: training labels (-1: not trained on), per-space labels, its report."""

    labels: np.ndarray
    space_labels: dict[str, np.ndarray] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    # the eps DBSCAN used in each space (the rho rule's choice when no eps was given)
    eps: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RoundSettings:
    """The numbers of a clustering round (the trainer builds them from ``usl.*``)."""

    eps: float | None = 0.6  # None: the rho rule
    rho: float = 1.6e-3
    k1: int = 30
    k2: int = 6
    min_samples: int = 4
    outliers: Literal["drop", "noise", "singleton"] = "drop"
    camera_norm: bool = False
    include_self_in_k1: bool = False
    search: str = "faiss"
    source_weight: float = 0.0  # weight of the source-domain term (0: off)
    source_k: int = 6


def camera_centred(feats: torch.Tensor, camids: np.ndarray) -> torch.Tensor:
    """Features minus their camera's mean feature, L2-normalised (``usl.camera_norm``)."""
    cams = torch.as_tensor(camids, dtype=torch.long)
    n_cams = int(cams.max()) + 1
    sums = torch.zeros(n_cams, feats.shape[1], dtype=feats.dtype).index_add_(0, cams, feats)
    counts = torch.bincount(cams, minlength=n_cams).clamp(min=1).to(feats.dtype)
    return F.normalize(feats - (sums / counts[:, None])[cams], dim=1)


def source_distance(feats: torch.Tensor, source: torch.Tensor, k: int) -> np.ndarray:
    """Per image: mean distance (2 - 2 cos) to its ``k`` nearest source features."""
    k = min(int(k), len(source))
    out = []
    for a in range(0, len(feats), 4096):
        sims = feats[a : a + 4096] @ source.T
        out.append((2.0 - 2.0 * sims.topk(k, dim=1).values).mean(1))
    return torch.cat(out).numpy().astype(np.float64)


def cluster_space(
    feats: torch.Tensor,
    settings: RoundSettings,
    *,
    eps: float | None = None,
    camids: np.ndarray | None = None,
    source: torch.Tensor | None = None,
) -> tuple[np.ndarray, float]:
    """Pseudo labels of one space (outliers -1) and the eps used (``eps`` None: the rho rule)."""
    from reidkit.cluster import jaccard_distance, pseudo_labels

    s = settings
    raw = feats
    if s.camera_norm:
        if camids is None:
            raise ReIDError("camera_norm: camera ids of the images are needed")
        feats = camera_centred(feats, camids)
    common: dict[str, Any] = dict(
        eps=eps,
        k1=s.k1,
        k2=s.k2,
        min_samples=s.min_samples,
        rho=s.rho,
        outliers="drop",
        include_self_in_k1=s.include_self_in_k1,
        search=s.search,
        return_eps=True,
    )
    if source is not None and s.source_weight > 0:
        import scipy.sparse as sp

        dist = jaccard_distance(feats, s.k1, s.k2, search=s.search, include_self_in_k1=s.include_self_in_k1).tocoo()
        ds = source_distance(raw, source, s.source_k)
        lam = s.source_weight
        vals = (1.0 - lam) * dist.data + lam * (ds[dist.row] + ds[dist.col])
        vals[dist.row == dist.col] = 0.0
        mixed = sp.coo_matrix((vals.astype(np.float32), (dist.row, dist.col)), shape=dist.shape).tocsr()
        labels, used = pseudo_labels(None, dist=mixed, **common)
    else:
        try:
            labels, used = pseudo_labels(feats, **common)
        except ReIDError as exc:
            if eps is not None:
                raise
            # the rho rule failed: name the setting that chose it
            raise ReIDError(f"usl.rho={s.rho}: {exc}; raise usl.rho or set usl.eps to a number") from None
    return np.asarray(labels, dtype=np.int64), float(used)


def relabel_round(space_labels: dict[str, np.ndarray], outliers: str) -> tuple[np.ndarray, np.ndarray]:
    """(training labels, kept mask) from per-space labels: the outlier policy, then contiguous ids."""
    keep = np.all(np.stack([lab >= 0 for lab in space_labels.values()]), axis=0)
    glob = space_labels["global"].copy()
    n_clusters = int(glob.max()) + 1 if (glob >= 0).any() else 0
    if outliers == "noise" and (glob < 0).any():
        glob[glob < 0] = n_clusters
        keep = np.ones_like(keep)
    elif outliers == "singleton" and (glob < 0).any():
        out = glob < 0
        glob[out] = n_clusters + np.arange(int(out.sum()))
        keep = np.ones_like(keep)
    train = np.where(keep, glob, -1)
    ids = np.unique(train[train >= 0])
    if len(ids):
        # Contiguous ids for the memory (noise/singleton ids are already contiguous after clusters).
        remap = np.full(int(train.max()) + 1, -1, dtype=np.int64)
        remap[ids] = np.arange(len(ids))
        train = np.where(train >= 0, remap[np.maximum(train, 0)], -1)
    return train, keep


def cluster_round(
    feats: dict[str, torch.Tensor],
    settings: RoundSettings,
    *,
    spaces: list[str] | None = None,
    epoch: int = 0,
    camids: np.ndarray | None = None,
    source: torch.Tensor | None = None,
    fixed_eps: dict[str, float] | None = None,
    true_labels: np.ndarray | None = None,
) -> Round:
    """Features per space -> the round's labels: DBSCAN in every space, outliers by ``settings.outliers``.

    ``fixed_eps`` (space -> eps) replaces the rho rule in the spaces it names (SSG's fixed eps);
    ``source``: source-domain features for the source term; ``true_labels``: for the report only.
    """
    from reidkit.cluster import cluster_report

    spaces = list(spaces or feats)
    fixed_eps = fixed_eps or {}
    labels: dict[str, np.ndarray] = {}
    eps_used: dict[str, float] = {}
    for name in spaces:
        eps = settings.eps if settings.eps is not None else fixed_eps.get(name)
        labels[name], eps_used[name] = cluster_space(feats[name], settings, eps=eps, camids=camids, source=source)
    train, keep = relabel_round(labels, settings.outliers)
    report: dict[str, Any] = {"epoch": epoch, "eps": eps_used["global"], "kept": int(keep.sum())}
    report.update(cluster_report(labels["global"], true_labels))
    for name in spaces:
        if name != "global":
            rep = cluster_report(labels[name], true_labels)
            report[name] = {
                "eps": eps_used[name],
                **{k: rep[k] for k in ("n_clusters", "n_outliers", "purity", "nmi", "ari")},
            }
    return Round(train, {k: np.where(keep, v, -1) for k, v in labels.items()}, report, eps_used)
