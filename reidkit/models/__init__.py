"""Models: backbones, heads, MGN and model assembly (names resolved lazily to keep imports light)."""

from __future__ import annotations

from reidkit._lazy import lazy_getattr

_LAZY = {
    "build_backbone": "reidkit.models.backbones",
    "BACKBONES": "reidkit.models.backbones",
    "ModelConfig": "reidkit.models.build",
    "ReIDModel": "reidkit.models.build",
    "build_model": "reidkit.models.build",
    "save_model": "reidkit.models.build",
    "load_model": "reidkit.models.loading",
    "load_feature_model": "reidkit.models.loading",
    "read_checkpoint": "reidkit.models.checkpoint",
    "save_checkpoint": "reidkit.models.checkpoint",
    "ModelInfo": "reidkit.models.info",
    "ReIDHead": "reidkit.models.heads",
    "BNNeck": "reidkit.models.heads",
    "GeM": "reidkit.models.heads",
    "EmbeddingHead": "reidkit.models.heads",
    "build_pooling": "reidkit.models.heads",
    "build_classifier": "reidkit.models.heads",
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
