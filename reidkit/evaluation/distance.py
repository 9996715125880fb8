"""Query x gallery distances, chunked so the working memory stays bounded, on CPU or GPU."""

from __future__ import annotations

import numpy as np
import torch
from numpy.typing import ArrayLike

from reidkit.errors import ReIDError
from reidkit.utils.runtime import resolve_device

__all__ = ["compute_distance", "query_expansion", "to_tensor", "pick_device", "METRICS"]

#: "euclidean" = plain L2 distance; "sqeuclidean" = its square (what re-ranking consumes);
#: "cosine" = 1 - cosine similarity (features are L2-normalised first).
METRICS = ("euclidean", "sqeuclidean", "cosine")


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The given device, else CUDA when available, else CPU (``reidkit.utils.runtime.resolve_device``)."""
    return resolve_device(device)


def to_tensor(x: ArrayLike, name: str = "features") -> torch.Tensor:
    """A 2-D float32 CPU tensor view/copy of an array or tensor."""
    t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(np.asarray(x)))
    if t.ndim != 2:
        raise ReIDError(f"{name}: expected a 2-D (N x D) array, got shape {tuple(t.shape)}")
    return t.float()


def _block(q: torch.Tensor, g: torch.Tensor, g_sq: torch.Tensor | None, metric: str) -> torch.Tensor:
    if metric == "cosine":
        return 1.0 - q @ g.T
    assert g_sq is not None  # the squared gallery norms, computed once by the callers for L2 metrics
    d = (q * q).sum(1, keepdim=True) + g_sq[None, :] - 2.0 * (q @ g.T)
    d.clamp_(min=0.0)  # cancellation can give tiny negatives
    return d.sqrt_() if metric == "euclidean" else d


def compute_distance(
    qf: ArrayLike,
    gf: ArrayLike,
    metric: str = "euclidean",
    chunk_size: int = 1024,
    device: str | torch.device | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Q x G float32 distance matrix ("euclidean" plain L2, "sqeuclidean", or "cosine")."""
    if metric not in METRICS:
        raise ReIDError(f"metric: expected one of {METRICS}, got {metric!r}")
    q, g = to_tensor(qf, "query features"), to_tensor(gf, "gallery features")
    if q.shape[1] != g.shape[1]:
        raise ReIDError(f"features: query dim {q.shape[1]} != gallery dim {g.shape[1]}")
    if chunk_size < 1:
        raise ReIDError(f"chunk_size: expected a positive integer, got {chunk_size}")
    dev = pick_device(device)
    gd = g.to(dev)
    if metric == "cosine":
        gd = torch.nn.functional.normalize(gd, dim=1)
    g_sq = (gd * gd).sum(1) if metric != "cosine" else None
    result = out if out is not None else np.empty((q.shape[0], g.shape[0]), dtype=np.float32)
    # only one (chunk x G) block lives on the device at a time
    for s in range(0, q.shape[0], chunk_size):
        qc = q[s : s + chunk_size].to(dev)
        if metric == "cosine":
            qc = torch.nn.functional.normalize(qc, dim=1)
        result[s : s + qc.shape[0]] = _block(qc, gd, g_sq, metric).cpu().numpy()
    return result


def query_expansion(
    qf: ArrayLike,
    gf: ArrayLike,
    k: int = 5,
    alpha: float = 0.0,
    normalize: bool = True,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """alpha-QE: each query becomes the weighted mean of itself and its top-k gallery features.

    Weights are cosine similarity ** alpha (the query's own weight is 1), so alpha=0 is plain
    average query expansion. Neighbours are found by cosine similarity.
    """
    if k < 0:
        raise ReIDError(f"k: expected a non-negative integer, got {k}")
    q, g = to_tensor(qf, "query features"), to_tensor(gf, "gallery features")
    if k == 0:
        return torch.nn.functional.normalize(q, dim=1) if normalize else q.clone()
    k = min(k, g.shape[0])
    dev = pick_device(device)
    qn = torch.nn.functional.normalize(q.to(dev), dim=1)
    gn = torch.nn.functional.normalize(g.to(dev), dim=1)
    gd = g.to(dev)
    out = torch.empty_like(q)
    for s in range(0, q.shape[0], 1024):
        sim = qn[s : s + 1024] @ gn.T
        top_sim, top_idx = sim.topk(k, dim=1)
        w = top_sim.clamp(min=0).pow(alpha) if alpha > 0 else torch.ones_like(top_sim)
        num = q[s : s + 1024].to(dev) + (w[..., None] * gd[top_idx]).sum(1)
        out[s : s + 1024] = (num / (1.0 + w.sum(1, keepdim=True))).cpu()
    return torch.nn.functional.normalize(out, dim=1) if normalize else out
