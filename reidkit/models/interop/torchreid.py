"""torchreid checkpoints (KaiyangZhou/deep-person-reid): the OSNet family and the ResNets.

Layout: a plain state dict or ``{"state_dict": ..., "epoch": ..., "rank1": ..., "optimizer": ...}``
(``module.`` prefixes when trained under DataParallel). OSNet keys: ``conv1.conv``, ``conv2..conv5``
(OSNet-AIN adds ``pool2``/``pool3``), ``fc.0`` (Linear), ``fc.1`` (BatchNorm1d), ``classifier``.
ResNet keys: torchvision's, plus ``fc.0/fc.1`` for ``resnet50_fc512`` and ``classifier``.

Inference (models/osnet.py, models/resnet.py ``forward`` in eval mode, loss "softmax"): the
feature map, global average pooling, then -- when the model has an ``fc`` block -- Linear ->
BatchNorm1d -> ReLU, and that vector ``v`` is the feature (OSNet: 512-d whatever the width;
``resnet50``: the 2048-d pooled map; ``resnet50_fc512``: 512-d). Preprocessing: RGB in [0, 1],
ImageNet mean/std, 256x128 by default. The ResNet's last stride is not stored: torchreid's
``resnet50`` uses 2, ``resnet50_fc512`` uses 1; the default follows that (``fc`` present -> 1),
``last_stride=`` overrides it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from reidkit.errors import ReIDError
from reidkit.models.interop.common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ForeignHead,
    KeyMap,
    SimplePool,
    bn_keys,
    infer_resnet,
    linear_from,
    load_mapped,
    resnet_name,
)

DESCRIPTION = "torchreid (KaiyangZhou/deep-person-reid): OSNet / ResNet state dict, optionally under 'state_dict'"

# OSNet width multiplier by the stem's output channels.
_OSNET_WIDTHS = {64: "x1_0", 48: "x0_75", 32: "x0_5", 16: "x0_25"}


def _is_osnet(state: Mapping[str, Any]) -> bool:
    return "conv1.conv.weight" in state and any(k.startswith("conv2.0.") for k in state)


def detect(state: Mapping[str, Any]) -> bool:
    """torchreid: OSNet keys (conv1.conv, conv2.0...) or a torchvision ResNet with torchreid's fc/classifier."""
    head = "classifier.weight" in state or "fc.0.weight" in state
    if _is_osnet(state):
        return head
    return "conv1.weight" in state and "layer1.0.conv1.weight" in state and head


def _fc_block(km: KeyMap) -> tuple[nn.Module | None, int | None]:
    """torchreid's fc: Linear -> BatchNorm1d -> ReLU (-> Dropout), or none."""
    if not km.has("fc.0.weight"):
        return None, None
    w = km.get("fc.0.weight")
    if km.has("fc.3.weight") or km.has("fc.4.weight"):
        raise ReIDError(
            f"torchreid checkpoint {km.origin}: a multi-layer fc block (fc.3/fc.4) is not supported; "
            "only one Linear -> BatchNorm1d -> ReLU layer (fc_dims=[D])"
        )
    block = nn.Sequential(
        nn.Linear(int(w.shape[1]), int(w.shape[0])), nn.BatchNorm1d(int(w.shape[0])), nn.ReLU(inplace=False)
    )
    km.put("head.embed.0.weight", "fc.0.weight")
    km.put("head.embed.0.bias", "fc.0.bias")
    bn_keys(km, "head.embed.1", "fc.1")
    return block, int(w.shape[0])


def _classifier(km: KeyMap) -> nn.Module | None:
    if not km.has("classifier.weight"):
        return None
    clf = linear_from(km.get("classifier.weight"), km.state.get("classifier.bias"))
    km.put("head.classifier.weight", "classifier.weight")
    if km.has("classifier.bias"):
        km.put("head.classifier.bias", "classifier.bias")
    return clf


def build(
    state: Mapping[str, torch.Tensor],
    origin: str,
    input_size: tuple[int, int] = (256, 128),
    last_stride: int | None = None,
    **unused: Any,
) -> Any:
    """A reidkit model equal to torchreid's eval-mode ``forward`` on ``state``."""
    from reidkit.models.build import ReIDModel

    if unused:
        raise ReIDError(f"torchreid: unknown option(s) {', '.join(unused)} (accepted: input_size, last_stride)")
    km = KeyMap(state, "torchreid", origin)
    if _is_osnet(state):
        from reidkit.models.backbones import osnet as osnet_mod

        stem = int(km.get("conv1.conv.weight").shape[0])
        width = _OSNET_WIDTHS.get(stem)
        if width is None:
            raise ReIDError(
                f"torchreid checkpoint {origin}: OSNet stem width {stem} is not one of "
                f"{sorted(_OSNET_WIDTHS)} (x0_25..x1_0)"
            )
        if any(k.startswith("pool2.") for k in state):
            if width != "x1_0":
                raise ReIDError(f"torchreid checkpoint {origin}: OSNet-AIN is released only at x1_0, got {width}")
            backbone: nn.Module = osnet_mod.osnet_ain_x1_0()
            arch = "osnet_ain_x1_0"
        else:
            backbone = osnet_mod.osnet(width)
            arch = f"osnet_{width}"
        prefixes = tuple(f"{n}." for n in ("conv1", "conv2", "conv3", "conv4", "conv5", "pool2", "pool3"))
    else:
        from reidkit.models.backbones.resnet import build_resnet, spec

        info = infer_resnet(state, "", "torchreid", origin)
        stride = last_stride if last_stride is not None else (1 if km.has("fc.0.weight") else 2)
        backbone = build_resnet(
            spec(
                info["depth"],
                groups=info["groups"],
                width_per_group=info["width_per_group"],
                ibn=info["ibn"],
                se=info["se"],
            ),
            last_stride=stride,
        )
        arch = resnet_name(info) + ("_fc" if km.has("fc.0.weight") else "")
        prefixes = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")
    for key in list(state):
        if key.startswith(prefixes):
            km.put("backbone." + key, key)
    embed, dim = _fc_block(km)
    feat_dim = dim if dim is not None else int(getattr(backbone, "out_channels"))
    classifier = _classifier(km)
    km.check_consumed("torchreid parts outside the backbone + global average pool + fc + classifier")
    head = ForeignHead(SimplePool("avg"), feat_dim, embed=embed, bn=None, classifier=classifier, neck_feat="before")
    model = ReIDModel(backbone, head, IMAGENET_MEAN, IMAGENET_STD, arch="torchreid")
    load_mapped(model, km.out, "torchreid", origin)
    model.input_size = [int(v) for v in input_size]
    model.source_arch = arch
    return model
