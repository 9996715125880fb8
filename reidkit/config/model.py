"""The ``model`` section: ``ModelConfig`` (read without torch; checked against the registries).

The model code (``reidkit.models``) imports this class; this module imports nothing from it at
import time, so ``import reidkit.config`` loads no torch. ``check()`` looks the backbone up in its
registry (that import happens there, when a recipe is checked).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from reidkit.errors import ReIDError

__all__ = ["ModelConfig"]


@dataclass
class ModelConfig:
    """Model options; the defaults are the BoT recipe (ResNet-50, last stride 1, BNNeck)."""

    arch: str = "baseline"
    backbone: str = "resnet50"
    pretrained: bool | str = True
    last_stride: int = 1
    pooling: str = "avg"
    gem_p: float = 3.0
    neck: str = "bnneck"
    neck_feat: str = "after"
    embedding_dim: int = 128
    embedding_hidden: int = 1024
    dropout: float = 0.0
    classifier: str = "linear"
    cls_scale: float = 30.0
    cls_margin: float = 0.35
    cls_init_std: float = 0.001  # linear classifier init N(0, std): BoT 0.001, fast-reid 0.01
    cls_bias: bool = False  # linear classifier bias (torchreid: true; BoT: none)
    # ResNet stem max-pool: "pad" (torchvision: 3x3 stride 2 padding 1) or "ceil" (fast-reid's
    # ResNet: no padding, ceil_mode; same output size, windows shifted by one pixel)
    stem_pool: str = "pad"
    # Ghost BatchNorm: training statistics over N groups of the batch (see models/ghost_bn.py),
    # so one GPU reproduces a recipe tuned on N GPUs without SyncBN.
    bn_groups: int = 1
    # Transformer options (models/backbones/vit.py, swin.py; the transreid arch, models/transreid.py).
    stride_size: int = 16  # ViT patch stride: 16, or 12 for TransReID's overlapping patches
    sie: bool = False  # side information embedding of the camera (ViT)
    sie_lambda: float = 3.0
    num_cameras: int = 0  # SIE cameras; 0: set by the trainer from the data
    jpm: bool = False  # jigsaw patch module (arch transreid)
    jpm_groups: int = 4
    jpm_shift: int = 5
    jpm_shuffle_groups: int = 2
    drop_path: float = 0.0  # stochastic depth rate (ViT, Swin)
    semantic_weight: float = -1.0  # SOLIDER's Swin semantic weight; -1: off
    # The backbone's own options (``register_backbone(name, options=Dataclass)``), read against
    # that dataclass: unknown keys are refused with the nearest valid one.
    options: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """Raise ReIDError naming the first bad key (unknown names list the valid values)."""
        from reidkit.models.build import ARCHS
        from reidkit.models.heads import CLASSIFIERS, NECK_FEATS, NECKS, POOLINGS, check_choice

        check_choice("model.arch", self.arch, ARCHS)
        from reidkit.models.backbones import BACKBONES

        if self.backbone not in BACKBONES:
            raise BACKBONES.unknown(self.backbone)
        check_choice("model.pooling", self.pooling, POOLINGS)
        check_choice("model.neck", self.neck, NECKS)
        check_choice("model.neck_feat", self.neck_feat, NECK_FEATS)
        check_choice("model.classifier", self.classifier, CLASSIFIERS)
        if self.last_stride not in (1, 2):
            raise ReIDError(f"model.last_stride: expected 1 or 2, got {self.last_stride!r}")
        if self.gem_p <= 0:
            raise ReIDError(f"model.gem_p: must be > 0, got {self.gem_p}")
        if not 0.0 <= self.dropout < 1.0:
            raise ReIDError(f"model.dropout: must be in [0, 1), got {self.dropout}")
        for key in ("embedding_dim", "embedding_hidden"):
            if int(getattr(self, key)) < 1:
                raise ReIDError(f"model.{key}: must be >= 1, got {getattr(self, key)}")
        if self.cls_scale <= 0:
            raise ReIDError(f"model.cls_scale: must be > 0, got {self.cls_scale}")
        if self.cls_margin < 0:
            raise ReIDError(f"model.cls_margin: must be >= 0, got {self.cls_margin}")
        if isinstance(self.bn_groups, bool) or not isinstance(self.bn_groups, int) or self.bn_groups < 1:
            raise ReIDError(f"model.bn_groups: expected an integer >= 1, got {self.bn_groups!r}")
        if self.stem_pool not in ("pad", "ceil"):
            raise ReIDError(f"model.stem_pool: expected pad or ceil, got {self.stem_pool!r}")
        self.backbone_options()

    def backbone_options(self) -> Any:
        """The backbone's options dataclass filled from ``model.options`` (None: it declares none)."""
        from reidkit.config.options import read_options

        return read_options("backbone", self.backbone, self.options, "model.options")
