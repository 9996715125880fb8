"""The training criterion: a weighted sum of named, registered losses.

Each name of ``loss.names`` is looked up in :data:`reidkit.losses.terms.LOSSES` (did-you-mean
error on an unknown name) and built as ``LOSSES.get(name)(loss_cfg, num_classes, feat_dim)``, an
``nn.Module`` of ``(outputs: dict, labels) -> scalar``. Weights: ``loss.weights[name]`` when
given, else the BoT fields (``id_weight`` for softmax, ``metric_weight`` for triplet,
``center_weight`` for center), else 1.0. With ``learnable_weights`` the weights become learnable
uncertainty weights that start at those same values.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from reidkit.errors import ReIDError
from reidkit.losses.center import CenterLoss, rescale_center_grad
from reidkit.losses.terms import LOSSES
from reidkit.losses.triplet import DISTANCES, VARIANTS
from reidkit.losses.weighting import UncertaintyWeighting

# the built-in losses (every registered name is valid in loss.names: LOSSES.names())
LOSS_NAMES = ("softmax", "triplet", "center")
# the BoT weight field of each built-in loss
WEIGHT_KEYS = {"softmax": "id_weight", "triplet": "metric_weight", "center": "center_weight"}


@dataclass
class LossConfig:
    """Loss options; the defaults are the BoT recipe (softmax with LS 0.1 + triplet margin 0.3)."""

    names: list[str] = field(default_factory=lambda: ["softmax", "triplet"])
    id_weight: float = 1.0
    label_smooth: float = 0.1
    # "uniform": eps / N on every class (BoT, torchreid); "others": eps / (N - 1) off-target (fast-reid)
    label_smooth_form: str = "uniform"
    triplet_margin: float = 0.3
    triplet_soft: bool = False
    triplet_distance: str = "euclidean"
    # "standard" (batch-hard per anchor), "ap_plus" (adds d(a, p)), "batch_hardest" (one triplet:
    # the hardest positive pair and the hardest negative pair of the whole batch)
    triplet_variant: str = "standard"
    metric_weight: float = 1.0
    center_weight: float = 5e-4
    center_lr: float = 0.5
    # true: 1/2 ||x - c||^2 (Wen et al.); false: ||x - c||^2 (reid-strong-baseline's code)
    center_half: bool = True
    learnable_weights: bool = False
    # weight per loss name; wins over id_weight / metric_weight / center_weight; default 1.0
    weights: dict[str, float] = field(default_factory=dict)

    def weight(self, name: str) -> float:
        """The fixed weight of loss ``name`` (``weights``, else its BoT field, else 1.0)."""
        if name in (self.weights or {}):
            return float(self.weights[name])
        if name in WEIGHT_KEYS:
            return float(getattr(self, WEIGHT_KEYS[name]))
        return 1.0

    def _weight_key(self, name: str) -> str:
        if name in (self.weights or {}):
            return f"loss.weights.{name}"
        return f"loss.{WEIGHT_KEYS[name]}" if name in WEIGHT_KEYS else f"loss.weights.{name}"

    def validate(self) -> None:
        """Raise ReIDError naming the first bad key."""
        names = list(self.names) if isinstance(self.names, (list, tuple)) else None
        if not names:
            raise ReIDError(
                f"loss.names: expected a non-empty list among {', '.join(LOSSES.names())}, got {self.names!r}"
            )
        for n in names:
            LOSSES.get(n)  # the registry's error: unknown name, nearest match, valid names
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
        if self.label_smooth_form not in ("uniform", "others"):
            raise ReIDError(
                f"loss.label_smooth_form: unknown {self.label_smooth_form!r}; expected uniform or others"
            )
        if not 0.0 <= self.label_smooth < 1.0:
            raise ReIDError(f"loss.label_smooth: must be in [0, 1), got {self.label_smooth}")
        if self.triplet_margin < 0:
            raise ReIDError(f"loss.triplet_margin: must be >= 0, got {self.triplet_margin}")
        for key in ("id_weight", "metric_weight", "center_weight", "center_lr"):
            if getattr(self, key) < 0:
                raise ReIDError(f"loss.{key}: must be >= 0, got {getattr(self, key)}")
        if not isinstance(self.weights, dict):
            raise ReIDError(f"loss.weights: expected a mapping of loss name -> weight, got {self.weights!r}")
        for n, w in self.weights.items():
            if n not in names:
                raise ReIDError(f"loss.weights.{n}: {n!r} is not in loss.names {names}")
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0:
                raise ReIDError(f"loss.weights.{n}: expected a finite number >= 0, got {w!r}")
        if self.learnable_weights:
            # uncertainty weights start at the fixed weights: s = -log(w) needs w > 0
            for n in names:
                if not self.weight(n) > 0:
                    raise ReIDError(
                        f"{self._weight_key(n)}: must be > 0 with loss.learnable_weights=true (the learnable "
                        f"weight starts at it), got {self.weight(n)}"
                    )
        elif "center" in names and self.weight("center") <= 0:
            raise ReIDError(
                f"{self._weight_key('center')}: must be > 0 when 'center' is used, got {self.weight('center')}"
            )


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
        cfg.validate()
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
        self._register_load_state_dict_pre_hook(_rename_old_keys)

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
                raise ReIDError(f"loss {name!r}: forward must return a scalar tensor, got {type(value).__name__}"
                                + (f" of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else ""))
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


def _rename_old_keys(state_dict, prefix, *args) -> None:
    """Checkpoints written before the loss registry keep the centres at ``center.centers``."""
    old = prefix + "center.centers"
    if old in state_dict:
        state_dict[prefix + "terms.center.centers"] = state_dict.pop(old)


def build_criterion(loss_cfg: LossConfig, num_classes: int, feat_dim: int) -> Criterion:
    """Build the training criterion for a model with ``num_classes`` identities and ``feat_dim`` features."""
    if not isinstance(loss_cfg, LossConfig):
        raise ReIDError(f"loss: expected a LossConfig, got {type(loss_cfg).__name__}")
    return Criterion(loss_cfg, int(num_classes), int(feat_dim))
