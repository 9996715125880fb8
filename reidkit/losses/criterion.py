"""The training criterion: a weighted sum of named, registered losses.

Each name of ``loss.names`` is looked up in :data:`reidkit.losses.terms.LOSSES` (did-you-mean
error on an unknown name) and built as ``LOSSES.get(name)(loss_cfg, num_classes, feat_dim)``, an
``nn.Module`` of ``(outputs: dict, labels) -> scalar``. Weights: ``loss.weights[name]`` when
given, else the BoT fields (``id_weight`` for softmax, ``metric_weight`` for triplet,
``center_weight`` for center), else 1.0. With ``learnable_weights`` the weights become learnable
uncertainty weights that start at those same values.
"""

from __future__ import annotations

import torch
from torch import nn

from reidkit.config.loss import LOSS_NAMES, WEIGHT_KEYS, LossConfig
from reidkit.errors import ReIDError
from reidkit.losses.center import CenterLoss, rescale_center_grad
from reidkit.losses.terms import LOSSES
from reidkit.losses.weighting import UncertaintyWeighting

__all__ = ["LOSS_NAMES", "WEIGHT_KEYS", "Criterion", "LossConfig", "build_criterion"]


class Criterion(nn.Module):
    """``criterion(outputs, labels) -> (total, {name: detached raw loss})``.

    One registered module per name in ``self.terms``; total = sum of weight * loss with the
    fixed weights (``LossConfig.weight``) or the learnable uncertainty weights
    (``self.weighting``, started at the fixed weights) when ``learnable_weights``.
    ``self.center`` is the center loss (or None); its centres need their own SGD at
    ``center_lr`` and ``rescale_center_grad()`` before that step.
    """

    def __init__(self, cfg: LossConfig, num_classes: int, feat_dim: int) -> None:
        super().__init__()
        cfg.check()
        self.cfg = cfg
        self.names = list(cfg.names)
        terms = {}
        for name in self.names:
            term = LOSSES.get(name)(cfg, num_classes, feat_dim)
            if not isinstance(term, nn.Module):
                raise ReIDError(
                    f"loss.names: the loss registered as {name!r} built a {type(term).__name__}; expected an "
                    "nn.Module of (outputs, labels) -> scalar"
                )
            terms[name] = term
        self.terms = nn.ModuleDict(terms)
        self._fixed = {n: cfg.weight(n) for n in self.names}
        self.weighting: UncertaintyWeighting | None = (
            UncertaintyWeighting(self.names, self._fixed) if cfg.learnable_weights else None
        )

    @property
    def center(self) -> CenterLoss | None:
        """The center-loss module (its centres get their own optimiser), or None."""
        term = self.terms["center"] if "center" in self.terms else None
        return term if isinstance(term, CenterLoss) else None

    def forward(self, outputs: dict, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and the unweighted value of each named loss (detached)."""
        if not isinstance(outputs, dict):
            raise ReIDError("criterion: expected the model's training-mode output dict (call model.train())")
        raw: dict[str, torch.Tensor] = {}
        for name in self.names:
            value = self.terms[name](outputs, labels)
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                raise ReIDError(
                    f"loss {name!r}: forward must return a scalar tensor, got {type(value).__name__}"
                    + (f" of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else "")
                )
            raw[name] = value.reshape(())
        if self.weighting is not None:
            total = self.weighting(raw)
        else:
            total = sum((self._fixed[n] * raw[n] for n in self.names), start=torch.zeros((), device=labels.device))
        return total, {n: v.detach() for n, v in raw.items()}

    def trainable_modules(self) -> list[nn.Module]:
        """Modules whose parameters the main optimiser should train: the learnable weights and
        every loss with parameters except the center loss (its centres have their own SGD)."""
        mods: list[nn.Module] = [self.weighting] if self.weighting is not None else []
        for name, term in self.terms.items():
            if term is not self.center and any(p.requires_grad for p in term.parameters()):
                mods.append(term)
        return mods

    def weight(self, name: str) -> float:
        """The weight loss ``name`` currently enters the total with."""
        if self.weighting is not None:
            return float(self.weighting.weight(name).detach())
        return float(self._fixed[name])

    def center_weight(self) -> float:
        """The weight the center loss currently enters the total with."""
        return self.weight("center") if "center" in self.names else float(self.cfg.center_weight)

    def rescale_center_grad(self) -> None:
        """Divide the centres' gradients by the center-loss weight (BoT), before their SGD step."""
        if self.center is not None:
            rescale_center_grad(self.center, self.center_weight())


def build_criterion(loss_cfg: LossConfig, num_classes: int, feat_dim: int) -> Criterion:
    """Build the training criterion for a model with ``num_classes`` identities and ``feat_dim`` features."""
    if not isinstance(loss_cfg, LossConfig):
        raise ReIDError(f"loss: expected a LossConfig, got {type(loss_cfg).__name__}")
    return Criterion(loss_cfg, int(num_classes), int(feat_dim))
