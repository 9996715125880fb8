"""Models: backbones, heads, MGN and model assembly (names resolved lazily to keep imports light)."""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "build_backbone": "reidkit.models.backbones",
    "BACKBONES": "reidkit.models.backbones",
    "ModelConfig": "reidkit.models.build",
    "ReIDModel": "reidkit.models.build",
    "build_model": "reidkit.models.build",
    "save_model": "reidkit.models.build",
    "load_model": "reidkit.models.build",
    "read_checkpoint": "reidkit.models.build",
    "param_groups": "reidkit.models.build",
    "ReIDHead": "reidkit.models.heads",
    "BNNeck": "reidkit.models.heads",
    "GeM": "reidkit.models.heads",
    "EmbeddingHead": "reidkit.models.heads",
    "build_pooling": "reidkit.models.heads",
    "build_classifier": "reidkit.models.heads",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    # Lazy so that importing reidkit.models.backbones does not pull in the heads and vice versa.
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'reidkit.models' has no attribute {name!r}")
