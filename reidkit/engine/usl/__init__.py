"""Unsupervised and domain-adaptive training: the cluster trainer and its registered methods."""
from __future__ import annotations

from reidkit.config.schema import SPACES, UnsupervisedConfig
from reidkit.engine.usl.methods import USL_METHODS, Round, USLMethod, register_usl_method
from reidkit.engine.usl.spaces import SpaceModel, extract_spaces, space_features
from reidkit.engine.usl.trainer import (
    ClusterTrainer, RandomBatches, camera_centred, load_usl_config, resolve_eps, train_usl,
)

_space_feats = space_features  # the name earlier code used


def prepare_val(datasets: list, size: tuple[int, int], cache_dir: str | None = None) -> list:
    """Decoded validation sets (the shared :func:`reidkit.engine.validation.prepare_val_sets`)."""
    from reidkit.engine.validation import prepare_val_sets

    return prepare_val_sets(datasets, size, cache_dir)


def evaluate_prepared(net, prepared: list, cfg, device, mean=None, std=None) -> dict:  # noqa: ANN001
    """Metrics of ``net`` on prepared sets with ``cfg.test`` (normalisation: ``mean``/``std`` or the model's)."""
    from reidkit.engine.validation import evaluate_sets

    if mean is not None:
        net.mean, net.std = list(mean), list(std)
    return evaluate_sets(net, prepared, cfg.test, device)

__all__ = [
    "SPACES", "USL_METHODS", "ClusterTrainer", "RandomBatches", "Round", "SpaceModel", "USLMethod",
    "UnsupervisedConfig", "camera_centred", "evaluate_prepared", "prepare_val", "extract_spaces", "load_usl_config", "register_usl_method",
    "resolve_eps", "space_features", "train_usl",
]
