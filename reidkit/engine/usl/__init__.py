"""Unsupervised and domain-adaptive training: the cluster trainer and its registered methods."""

from __future__ import annotations

from reidkit.cluster.rounds import camera_centred
from reidkit.config.usl import SPACES, UnsupervisedConfig
from reidkit.engine.usl.methods import USL_METHODS, Round, USLContext, USLMethod, register_usl_method
from reidkit.engine.usl.spaces import SpaceModel, extract_spaces, space_features
from reidkit.engine.usl.trainer import ClusterTrainer, RandomBatches, dataset_eps, load_usl_config, train_usl

__all__ = [
    "SPACES",
    "USL_METHODS",
    "ClusterTrainer",
    "RandomBatches",
    "Round",
    "SpaceModel",
    "USLContext",
    "USLMethod",
    "UnsupervisedConfig",
    "camera_centred",
    "dataset_eps",
    "extract_spaces",
    "load_usl_config",
    "register_usl_method",
    "space_features",
    "train_usl",
]
