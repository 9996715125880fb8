"""Learnable loss weighting by homoscedastic uncertainty (Kendall et al., CVPR 2018).

total = sum_i exp(-s_i) * L_i + s_i with one learnable log-variance s_i per loss. The effective
weight of loss i is exp(-s_i); starting every s_i at 0 gives every loss weight 1, which lets a
large raw loss (the center loss is ~440 at the start of a BoT run) swamp the others. So the
log-variances start at s_i = -log(w_i) for given initial weights w_i (the recipe's fixed
weights): the first steps weigh the losses exactly as the fixed-weight recipe does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from reidkit.errors import ReIDError


class UncertaintyWeighting(nn.Module):
    """total = sum_i exp(-s_i) * L_i + s_i, learnable s_i initialised to -log(initial weight_i)."""

    def __init__(self, names: list[str] | tuple[str, ...], init_weights: Mapping[str, float] | None = None) -> None:
        super().__init__()
        self.names = list(names)
        if not self.names or len(set(self.names)) != len(self.names):
            raise ReIDError(f"UncertaintyWeighting: names must be non-empty and distinct, got {self.names}")
        init = dict(init_weights or {})
        unknown = [k for k in init if k not in self.names]
        if unknown:
            raise ReIDError(
                f"UncertaintyWeighting: initial weights for unknown loss(es) {unknown}; expected {self.names}"
            )
        s0 = []
        for name in self.names:
            w = float(init.get(name, 1.0))
            if not (w > 0 and math.isfinite(w)):
                raise ReIDError(
                    f"loss weight of {name!r}: learnable weights start at the fixed weight, which must be "
                    f"a positive finite number, got {w}"
                )
            s0.append(-math.log(w))
        self.log_vars = nn.Parameter(torch.tensor(s0, dtype=torch.float32))

    def weight(self, name: str) -> torch.Tensor:
        """The current multiplier exp(-s) of loss ``name``."""
        return torch.exp(-self.log_vars[self.names.index(name)])

    def forward(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """Weighted sum of the losses present in ``losses`` (keys among ``names``)."""
        unknown = [k for k in losses if k not in self.names]
        if unknown:
            raise ReIDError(f"UncertaintyWeighting: unknown loss(es) {unknown}; expected {self.names}")
        total = self.log_vars.new_zeros(())
        for i, name in enumerate(self.names):
            if name in losses:
                s = self.log_vars[i]
                total = total + torch.exp(-s) * losses[name] + s
        return total
