"""Models: backbones, heads, MGN and model assembly (names resolved lazily to keep imports light)."""

from __future__ import annotations

from reidkit._lazy import lazy_module

__all__, __getattr__ = lazy_module(
    __name__,
    {
        "reidkit.models.backbones": ["build_backbone", "BACKBONES"],
        "reidkit.models.build": ["ModelConfig", "ReIDModel", "build_model", "save_model"],
        "reidkit.models.loading": ["load_model", "load_feature_model"],
        "reidkit.models.checkpoint": ["read_checkpoint", "save_checkpoint"],
        "reidkit.models.info": ["ModelInfo"],
        "reidkit.models.heads": ["ReIDHead", "BNNeck", "GeM", "EmbeddingHead", "build_pooling", "build_classifier"],
    },
)
