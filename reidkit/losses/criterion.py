"""The supervised training criterion: ID (+label smoothing), triplet and center losses, combined."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from reidkit.errors import ReIDError
from reidkit.losses.center import CenterLoss, rescale_center_grad
from reidkit.losses.classification import cross_entropy_ls
from reidkit.losses.triplet import DISTANCES, VARIANTS, triplet_loss
from reidkit.losses.weighting import UncertaintyWeighting

LOSS_NAMES = ("softmax", "triplet", "center")


@dataclass
class LossConfig:
    """Loss options; the defaults are the BoT recipe (softmax with LS 0.1 + triplet margin 0.3)."""

    names: list[str] = field(default_factory=lambda: ["softmax", "triplet"])
    id_weight: float = 1.0
    label_smooth: float = 0.1
    triplet_margin: float = 0.3
    triplet_soft: bool = False
    triplet_distance: str = "euclidean"
    triplet_variant: str = "standard"
    metric_weight: float = 1.0
    center_weight: float = 5e-4
    center_lr: float = 0.5
    learnable_weights: bool = False

    def validate(self) -> None:
        """Raise ReIDError naming the first bad key."""
        names = list(self.names) if isinstance(self.names, (list, tuple)) else None
        if not names:
            raise ReIDError(f"loss.names: expected a non-empty list among {', '.join(LOSS_NAMES)}, got {self.names!r}")
        bad = [n for n in names if n not in LOSS_NAMES]
        if bad:
            raise ReIDError(f"loss.names: unknown loss {bad[0]!r}; expected names among {', '.join(LOSS_NAMES)}")
        if len(set(names)) != len(names):
            raise ReIDError(f"loss.names: duplicate names in {names}")
        if self.triplet_distance not in DISTANCES:
            raise ReIDError(
                f"loss.triplet_distance: unknown {self.triplet_distance!r}; expected one of {', '.join(DISTANCES)}"
            )
        if self.triplet_variant not in VARIANTS:
            raise ReIDError(
                f"loss.triplet_variant: unknown {self.triplet_variant!r}; expected one of {', '.join(VARIANTS)}"
            )
        if not 0.0 <= self.label_smooth < 1.0:
            raise ReIDError(f"loss.label_smooth: must be in [0, 1), got {self.label_smooth}")
        if self.triplet_margin < 0:
            raise ReIDError(f"loss.triplet_margin: must be >= 0, got {self.triplet_margin}")
        for key in ("id_weight", "metric_weight", "center_weight", "center_lr"):
            if getattr(self, key) < 0:
                raise ReIDError(f"loss.{key}: must be >= 0, got {getattr(self, key)}")
        if "center" in names and not self.learnable_weights and self.center_weight <= 0:
            raise ReIDError(f"loss.center_weight: must be > 0 when 'center' is used, got {self.center_weight}")


class Criterion(nn.Module):
    """``criterion(outputs, labels) -> (total, {name: detached raw loss})``.

    softmax: label-smoothed CE on ``logits`` (MGN: mean over ``logits_list``); triplet: batch-hard
    on ``feat`` (MGN: mean over the global ``feats``); center: on ``feat`` (MGN: the concatenated
    feature). Fixed weights id_weight / metric_weight / center_weight, or learnable uncertainty
    weights (``self.weighting``) when ``learnable_weights``. ``self.center`` is the CenterLoss
    (or None); its centres need their own SGD at ``center_lr`` and ``rescale_center_grad()``
    before that step.
    """

    def __init__(self, cfg: LossConfig, num_classes: int, feat_dim: int) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.names = list(cfg.names)
        self.center: CenterLoss | None = CenterLoss(num_classes, feat_dim) if "center" in self.names else None
        self.weighting: UncertaintyWeighting | None = (
            UncertaintyWeighting(self.names) if cfg.learnable_weights else None
        )
        self._fixed = {"softmax": cfg.id_weight, "triplet": cfg.metric_weight, "center": cfg.center_weight}

    def _id_loss(self, outputs: dict, labels: torch.Tensor) -> torch.Tensor:
        logits_list = outputs.get("logits_list") or ([outputs["logits"]] if "logits" in outputs else [])
        if not logits_list:
            raise ReIDError("loss.names: 'softmax' needs 'logits' in the model outputs (training mode)")
        return torch.stack(
            [cross_entropy_ls(lg, labels, self.cfg.label_smooth) for lg in logits_list]
        ).mean()

    def _metric_loss(self, outputs: dict, labels: torch.Tensor) -> torch.Tensor:
        feats = outputs.get("feats") or ([outputs["feat"]] if "feat" in outputs else [])
        if not feats:
            raise ReIDError("loss.names: 'triplet' needs 'feat' in the model outputs (training mode)")
        c = self.cfg
        return torch.stack([
            triplet_loss(f, labels, c.triplet_margin, c.triplet_soft, c.triplet_distance, c.triplet_variant)
            for f in feats
        ]).mean()

    def forward(self, outputs: dict, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and the unweighted value of each named loss (detached)."""
        if not isinstance(outputs, dict):
            raise ReIDError("criterion: expected the model's training-mode output dict (call model.train())")
        raw: dict[str, torch.Tensor] = {}
        for name in self.names:
            if name == "softmax":
                raw[name] = self._id_loss(outputs, labels)
            elif name == "triplet":
                raw[name] = self._metric_loss(outputs, labels)
            else:
                assert self.center is not None
                raw[name] = self.center(outputs["feat"], labels)
        if self.weighting is not None:
            total = self.weighting(raw)
        else:
            total = sum((self._fixed[n] * raw[n] for n in self.names), start=torch.zeros((), device=labels.device))
        return total, {n: v.detach() for n, v in raw.items()}

    def center_weight(self) -> float:
        """The weight the center loss currently enters the total with."""
        if self.weighting is not None:
            return float(self.weighting.weight("center").detach())
        return float(self.cfg.center_weight)

    def rescale_center_grad(self) -> None:
        """Divide the centres' gradients by the center-loss weight (BoT), before their SGD step."""
        if self.center is not None:
            rescale_center_grad(self.center, self.center_weight())


def build_criterion(loss_cfg: LossConfig, num_classes: int, feat_dim: int) -> Criterion:
    """Build the training criterion for a model with ``num_classes`` identities and ``feat_dim`` features."""
    if not isinstance(loss_cfg, LossConfig):
        raise ReIDError(f"loss: expected a LossConfig, got {type(loss_cfg).__name__}")
    return Criterion(loss_cfg, int(num_classes), int(feat_dim))
