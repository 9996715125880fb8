"""The loss registry and the built-in training losses as registered terms.

A registered loss is a class (or factory) ``(loss_cfg, num_classes, feat_dim) -> nn.Module``
whose ``forward(outputs, labels)`` takes the model's training-mode output dict (``feat``,
``logits``, and for multi-branch models such as MGN the lists ``feats`` / ``logits_list``) and
returns a scalar. ``Criterion`` (criterion.py) builds one module per name of ``loss.names``
from :data:`LOSSES` and sums them with their weights. The built-ins (``softmax``, ``triplet``,
``center``) are registered here the same way a user registers their own::

    from reidkit.losses import register_loss

    @register_loss("l2_feat")
    class L2Feat(torch.nn.Module):
        def __init__(self, cfg, num_classes, feat_dim):
            super().__init__()
        def forward(self, outputs, labels):
            return outputs["feat"].pow(2).mean()

then ``loss.names=[softmax, l2_feat]`` (weight ``loss.weights.l2_feat``, default 1.0).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from reidkit.errors import ReIDError
from reidkit.losses.center import CenterLoss
from reidkit.losses.classification import cross_entropy_ls
from reidkit.losses.triplet import triplet_loss
from reidkit.registry import Registry

if TYPE_CHECKING:
    from reidkit.losses.criterion import LossConfig

__all__ = ["LOSSES", "register_loss", "SoftmaxLoss", "TripletLoss", "CenterTerm"]

LOSSES: Registry = Registry("loss", "loss.names")


def register_loss(name: str, obj: Any = None, *, options: type | None = None, overwrite: bool = False) -> Any:
    """Register a loss ``cls(loss_cfg, num_classes, feat_dim) -> nn.Module`` (decorator or call).

    ``options`` (default: the class's ``options`` attribute) is a dataclass of the loss's own keys,
    set in a recipe as ``loss.<name>.<key>``; the loss reads them with ``loss_cfg.options(name)``.
    """
    from reidkit.config.options import part_options

    return LOSSES.register(name, obj, overwrite=overwrite, then=part_options("loss", name, options))


def _output_list(outputs: dict, many: str, one: str, loss: str) -> list[torch.Tensor]:
    """The per-branch tensors (``feats`` / ``logits_list``) or the single one, as a list."""
    items = outputs.get(many) or ([outputs[one]] if outputs.get(one) is not None else [])
    if not items:
        raise ReIDError(f"loss.names: {loss!r} needs {one!r} in the model outputs (training mode)")
    return list(items)


def _branch_mean(values: list[torch.Tensor], outputs: dict) -> torch.Tensor:
    """The mean over branches, or the model's ``branch_weights`` (e.g. TransReID: 0.5 global, 0.5 / k each local)."""
    weights = outputs.get("branch_weights")
    if weights is None or len(values) == 1:
        return torch.stack(values).mean()
    if len(weights) != len(values):
        raise ReIDError(f"model output 'branch_weights' has {len(weights)} weights for {len(values)} branches")
    total = float(weights[0]) * values[0]
    for w, v in zip(weights[1:], values[1:]):
        total = total + float(w) * v
    return total


@register_loss("softmax")
class SoftmaxLoss(nn.Module):
    """Label-smoothed cross-entropy on ``logits`` (multi-branch: mean over ``logits_list``, or ``branch_weights``)."""

    def __init__(self, cfg: LossConfig, num_classes: int, feat_dim: int) -> None:
        super().__init__()
        self.label_smooth = cfg.label_smooth
        self.form = getattr(cfg, "label_smooth_form", "uniform")

    def forward(self, outputs: dict, labels: torch.Tensor) -> torch.Tensor:
        """Mean label-smoothed CE over the branches."""
        logits = _output_list(outputs, "logits_list", "logits", "softmax")
        return _branch_mean([cross_entropy_ls(lg, labels, self.label_smooth, self.form) for lg in logits], outputs)


@register_loss("triplet")
class TripletLoss(nn.Module):
    """Triplet loss on ``feat`` (multi-branch: mean over ``feats``, or ``branch_weights``); ``loss.triplet_*``."""

    def __init__(self, cfg: LossConfig, num_classes: int, feat_dim: int) -> None:
        super().__init__()
        self.margin, self.soft = cfg.triplet_margin, cfg.triplet_soft
        self.distance, self.variant = cfg.triplet_distance, cfg.triplet_variant

    def forward(self, outputs: dict, labels: torch.Tensor) -> torch.Tensor:
        """Mean triplet loss over the branches."""
        feats = _output_list(outputs, "feats", "feat", "triplet")
        return _branch_mean(
            [triplet_loss(f, labels, self.margin, self.soft, self.distance, self.variant) for f in feats], outputs
        )


@register_loss("center")
class CenterTerm(CenterLoss):
    """Center loss on ``feat`` (multi-branch: the concatenated feature). Its centres need their
    own SGD at ``loss.center_lr`` (``Criterion.center`` / ``rescale_center_grad``)."""

    def __init__(self, cfg: LossConfig, num_classes: int, feat_dim: int) -> None:
        super().__init__(num_classes, feat_dim, half=getattr(cfg, "center_half", True))

    # a loss term's forward(outputs, labels) (the Criterion's protocol), over CenterLoss's forward(feats, labels)
    def forward(self, outputs: dict, labels: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Center loss of ``outputs["feat"]``."""
        if outputs.get("feat") is None:
            raise ReIDError("loss.names: 'center' needs 'feat' in the model outputs (training mode)")
        return super().forward(outputs["feat"], labels)
