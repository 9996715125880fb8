"""Learnable loss weighting by homoscedastic uncertainty (Kendall et al., CVPR 2018)."""
from __future__ import annotations

import torch
from torch import nn

from reidkit.errors import ReIDError


class UncertaintyWeighting(nn.Module):
    """total = sum_i exp(-s_i) * L_i + s_i, with learnable log-variances s_i (init 0)."""

    def __init__(self, names: list[str] | tuple[str, ...]) -> None:
        super().__init__()
        self.names = list(names)
        if not self.names or len(set(self.names)) != len(self.names):
            raise ReIDError(f"UncertaintyWeighting: names must be non-empty and distinct, got {self.names}")
        self.log_vars = nn.Parameter(torch.zeros(len(self.names)))

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
