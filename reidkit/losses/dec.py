"""Deep Embedded Clustering (Xie et al., ICML 2016): Student-t assignments, sharpened targets, KL.

Note: SSG's optional DEC loss inverts the Student-t kernel (a bug, see REFERENCE.md section 3);
this module follows the paper: q_ij proportional to (1 + ||z_i - mu_j||^2 / alpha)^(-(alpha+1)/2).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from reidkit.errors import ReIDError

__all__ = ["DECHead", "dec_loss", "student_t_assignment", "target_distribution"]


def student_t_assignment(z: torch.Tensor, centres: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Soft assignments q (N x K), rows summing to one, from the Student-t kernel."""
    if z.ndim != 2 or centres.ndim != 2 or z.shape[1] != centres.shape[1]:
        raise ReIDError(f"z/centres: expected N x D and K x D, got {tuple(z.shape)} and {tuple(centres.shape)}")
    if not alpha > 0:
        raise ReIDError(f"alpha: expected a positive degree of freedom, got {alpha!r}")
    d2 = (z.unsqueeze(1) - centres.unsqueeze(0)).pow(2).sum(-1)
    # log-space keeps far points from underflowing to an all-zero row
    logits = -(alpha + 1.0) / 2.0 * torch.log1p(d2 / alpha)
    return torch.softmax(logits, dim=1)


def target_distribution(q: torch.Tensor) -> torch.Tensor:
    """DEC's target p_ij = (q_ij^2 / f_j) / sum_j' (q_ij'^2 / f_j'), f_j = sum_i q_ij (detached)."""
    q = q.detach()
    w = q.pow(2) / q.sum(0, keepdim=True)
    return w / w.sum(1, keepdim=True)


def dec_loss(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) summed over clusters, averaged over the batch ("batchmean")."""
    if q.shape != p.shape:
        raise ReIDError(f"q/p: expected equal shapes, got {tuple(q.shape)} and {tuple(p.shape)}")
    kl = torch.xlogy(p, p) - p * torch.log(q.clamp_min(torch.finfo(q.dtype).tiny))
    return kl.sum() / q.shape[0]


class DECHead(nn.Module):
    """Cluster centres as parameters; ``forward(z)`` returns the Student-t assignments q."""

    def __init__(self, num_clusters: int, feat_dim: int, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = float(alpha)
        self.centres = nn.Parameter(torch.zeros(int(num_clusters), int(feat_dim)))
        nn.init.xavier_uniform_(self.centres)

    @torch.no_grad()
    def init_centres(self, features: torch.Tensor | np.ndarray, seed: int = 0) -> np.ndarray:
        """Set the centres by k-means on the features; returns the k-means labels."""
        from reidkit.cluster.pseudo import kmeans

        cent, labels = kmeans(features, self.centres.shape[0], seed=seed)
        self.centres.copy_(torch.from_numpy(cent).to(self.centres))
        return labels

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Soft assignments of z to the centres."""
        return student_t_assignment(z, self.centres, self.alpha)
