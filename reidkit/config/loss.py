"""The ``loss`` section: ``LossConfig`` (read without torch; checked against the loss registry).

``reidkit.losses`` imports this class; the registry and the triplet choices are imported when a
recipe is checked, so ``import reidkit.config`` loads no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from reidkit.errors import ReIDError

__all__ = ["LossConfig", "LOSS_NAMES", "WEIGHT_KEYS"]

# the built-in losses (every registered name is valid in loss.names: LOSSES.names())
LOSS_NAMES = ("softmax", "triplet", "center")
# the BoT weight field of each built-in loss
WEIGHT_KEYS = {"softmax": "id_weight", "triplet": "metric_weight", "center": "center_weight"}


@dataclass
class LossConfig:
    """Loss options; the defaults are the BoT recipe (softmax with LS 0.1 + triplet margin 0.3).

    A loss registered with ``options=Dataclass`` reads its own keys under ``loss.<name>.*``
    (``LossConfig.options(name)``).
    """

    PART_KIND = "loss"

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
    # each registered loss's own options, by loss name (``loss.<name>``)
    parts: dict[str, Any] = field(default_factory=dict, repr=False, metadata={"parts": True})

    def options(self, name: str) -> Any:
        """The options of loss ``name`` (its dataclass; defaults when not set; None: it declares none)."""
        from reidkit.config.options import read_options

        return self.parts[name] if name in self.parts else read_options("loss", name, {})

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

    def check(self) -> None:
        """Raise ReIDError naming the first bad key."""
        from reidkit.losses.terms import LOSSES
        from reidkit.losses.triplet import DISTANCES, VARIANTS

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
            raise ReIDError(f"loss.label_smooth_form: unknown {self.label_smooth_form!r}; expected uniform or others")
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
