"""Center loss (Wen et al., ECCV 2016)."""

from __future__ import annotations

import torch
from torch import nn

from reidkit.errors import ReIDError


class CenterLoss(nn.Module):
    """Mean over the batch of 1/2 ||x_i - c_{y_i}||^2 with one learnable centre per class.

    ``half=False`` drops the 1/2 (reid-strong-baseline's ``layers/center_loss.py``: the mean of
    the squared distances), which doubles both the pull on the features and the centres' step.

    The centres get their own SGD optimiser (lr 0.5 in BoT) while the loss enters the total
    with a small weight (5e-4). As in BoT, the engine must divide the centres' gradients by
    that weight before the centre step (``rescale_center_grad``), so the centre update does
    not shrink with the loss weight.
    """

    def __init__(self, num_classes: int, feat_dim: int, half: bool = True) -> None:
        super().__init__()
        self.scale = 0.5 if half else 1.0
        if num_classes < 1 or feat_dim < 1:
            raise ReIDError(f"CenterLoss: num_classes and feat_dim must be >= 1, got {num_classes}, {feat_dim}")
        self.num_classes = num_classes
        self.feat_dim = feat_dim
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim))

    def forward(self, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Center loss of ``B x feat_dim`` features."""
        if feats.dim() != 2 or feats.shape[1] != self.feat_dim:
            raise ReIDError(f"CenterLoss: expected B x {self.feat_dim} features, got {tuple(feats.shape)}")
        diff = feats.float() - self.centers[labels.long()]
        return self.scale * diff.pow(2).sum(dim=1).mean()


def rescale_center_grad(center: nn.Module, weight: float | torch.Tensor) -> None:
    """Divide the centres' gradients by the loss weight (call after backward, before their step)."""
    w = float(weight)
    if w <= 0:
        raise ReIDError(f"loss.center_weight: must be > 0 to rescale centre gradients, got {w}")
    for p in center.parameters():
        if p.grad is not None:
            p.grad.mul_(1.0 / w)
