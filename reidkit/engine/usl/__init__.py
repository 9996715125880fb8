"""Unsupervised and domain-adaptive training: the cluster trainer and its registered methods."""
from __future__ import annotations

from reidkit.config.schema import SPACES, UnsupervisedConfig
from reidkit.engine.usl.methods import USL_METHODS, Round, USLMethod, register_usl_method
from reidkit.engine.usl.spaces import SpaceModel, extract_spaces, space_features
from reidkit.engine.usl.trainer import (
    ClusterTrainer, RandomBatches, camera_centred, load_usl_config, resolve_eps, train_usl,
)



__all__ = [
    "SPACES", "USL_METHODS", "ClusterTrainer", "RandomBatches", "Round", "SpaceModel", "USLMethod",
    "UnsupervisedConfig", "camera_centred", "extract_spaces", "load_usl_config", "register_usl_method",
    "resolve_eps", "space_features", "train_usl",
]
