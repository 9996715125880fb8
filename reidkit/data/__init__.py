"""Datasets, sampling, augmentation and the image pipeline.

Only the dataset API is imported here (it is light); the other modules (pipeline, augment,
samplers, synthetic) are imported by name where they are needed.
"""

from __future__ import annotations

from reidkit.data.datasets import (
    DATASETS,
    JointDataset,
    Record,
    ReIDDataset,
    load_dataset,
    load_datasets,
    train_labels,
)

__all__ = [
    "DATASETS",
    "JointDataset",
    "Record",
    "ReIDDataset",
    "load_dataset",
    "load_datasets",
    "train_labels",
]
