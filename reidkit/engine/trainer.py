"""Compatibility names: the supervised trainer and helpers under their earlier module path.

The lifecycle lives in :mod:`reidkit.engine.base`, the supervised step in
:mod:`reidkit.engine.supervised`, schedules and the step object in :mod:`reidkit.engine.optim`.
"""
from __future__ import annotations

from reidkit.engine.data import EpochStream, build_sampler, load_training_data
from reidkit.engine.handlers import console_logging
from reidkit.engine.optim import build_optimizer, lr_factor
from reidkit.engine.supervised import SupervisedTrainer
from reidkit.engine.validation import (
    METRIC_KEYS, ValSet, evaluate_sets, extract_val_features, mean_metrics, prepare_val_sets,
)
from reidkit.utils.io import write_json
from reidkit.utils.runtime import dist_env, resolve_device, seed_everything

Trainer = SupervisedTrainer

__all__ = [
    "METRIC_KEYS", "EpochStream", "SupervisedTrainer", "Trainer", "ValSet", "build_optimizer", "build_sampler",
    "console_logging", "dist_env", "evaluate_sets", "extract_val_features", "load_training_data", "lr_factor",
    "mean_metrics", "prepare_val_sets", "resolve_device", "seed_everything", "write_json",
]
