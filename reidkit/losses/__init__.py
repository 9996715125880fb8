"""Losses: identity (CE + label smoothing), triplet, center, learnable weighting; the LOSSES registry, criterion."""

from __future__ import annotations

from reidkit.losses.center import CenterLoss, rescale_center_grad
from reidkit.losses.classification import cross_entropy_ls
from reidkit.losses.criterion import LOSS_NAMES, Criterion, LossConfig, build_criterion
from reidkit.losses.terms import LOSSES, register_loss
from reidkit.losses.triplet import pairwise_distance, triplet_loss
from reidkit.losses.weighting import UncertaintyWeighting

__all__ = [
    "CenterLoss",
    "rescale_center_grad",
    "cross_entropy_ls",
    "LOSS_NAMES",
    "Criterion",
    "LossConfig",
    "build_criterion",
    "LOSSES",
    "register_loss",
    "pairwise_distance",
    "triplet_loss",
    "UncertaintyWeighting",
]
