"""reid-strong-baseline checkpoints (michuanhaohao/reid-strong-baseline, the BoT paper's code).

Layout: a state dict with ``base.*`` (the ResNet, torchvision names; ``resnet50_ibn_a`` with
``bn1.IN``/``bn1.BN``; an unused ImageNet ``base.fc``), ``bottleneck.*`` (BatchNorm1d BNNeck,
absent with ``neck="no"``) and ``classifier.*``.

Inference (modeling/baseline.py, eval): ``gap(base(x))`` -> BNNeck -> the post-BN feature with
``TEST.NECK_FEAT="after"`` (the default here), the pooled feature with ``"before"``. A quirk
reproduced exactly: the plain ResNet of that repository (modeling/backbones/resnet.py) has no ReLU
after the stem's BatchNorm (the line is commented out there), while its ``resnet50_ibn_a`` does.
TransReID's ResNet-50 (its make_model.py ``Backbone``) has the same keys and the same missing
ReLU but a 2x2 stem max pool without padding: load it with ``fmt="transreid"`` (keys cannot tell
the two apart; detection picks this format). Preprocessing: RGB [0, 1], ImageNet mean/std,
256x128. The last stride (1 in the BoT recipe) is
not stored; ``last_stride=2`` overrides it. The SENet/SE-ResNeXt backbones of that repository
(Cadene layout, ``base.layer0.*``) are not supported.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from reidkit.errors import ReIDError
from reidkit.models.backbones.resnet import build_resnet, spec
from reidkit.models.interop.common import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ForeignHead,
    KeyMap,
    SimplePool,
    batchnorm1d_from,
    bn_keys,
    infer_resnet,
    linear_from,
    load_mapped,
    resnet_name,
)

DESCRIPTION = "reid-strong-baseline (michuanhaohao): base.* ResNet, bottleneck.*, classifier.*"


def detect(state: Mapping[str, Any]) -> bool:
    """strong-baseline: base.* plus classifier.weight, and no ViT/Swin marker (those are TransReID/SOLIDER)."""
    return ("base.conv1.weight" in state or "base.layer0.conv1.weight" in state) and "classifier.weight" in state


# Stem max pool (kernel, stride, padding): the repository's, and TransReID's copy of that ResNet
# (model/backbones/resnet.py there: kernel 2, no padding; same keys, so it is chosen by name).
STEM_POOLS = {"strong_baseline": (3, 2, 1), "transreid": (2, 2, 0)}


def build(
    state: Mapping[str, torch.Tensor],
    origin: str,
    input_size: tuple[int, int] = (256, 128),
    last_stride: int = 1,
    neck_feat: str = "after",
    stem_pool: str = "strong_baseline",
    **unused: Any,
) -> Any:
    """A reidkit model equal to reid-strong-baseline's eval forward on ``state``.

    ``stem_pool="transreid"`` reproduces TransReID's ResNet-50 (same layout, 2x2 stem pooling).
    """
    from reidkit.models.build import ReIDModel

    if unused:
        raise ReIDError(
            f"strong_baseline: unknown option(s) {', '.join(unused)} (accepted: input_size, "
            "last_stride, neck_feat, stem_pool)"
        )
    if stem_pool not in STEM_POOLS:
        raise ReIDError(f"strong_baseline: stem_pool must be one of {', '.join(STEM_POOLS)}, got {stem_pool!r}")
    if neck_feat not in ("after", "before"):
        raise ReIDError(f"strong_baseline: neck_feat must be 'after' or 'before', got {neck_feat!r}")
    km = KeyMap(state, "strong_baseline", origin)
    info = infer_resnet(state, "base.", "strong_baseline", origin)
    if info["groups"] != 1 or info["se"] or info["ibn"] == "b":
        raise ReIDError(
            f"strong_baseline checkpoint {origin}: backbone {resnet_name(info)} is not one of that "
            "repository's torchvision-layout ResNets (resnet18..152, resnet50_ibn_a)"
        )
    backbone = build_resnet(spec(info["depth"], ibn=info["ibn"]), last_stride=last_stride)
    if info["ibn"] is None:
        # The repository's plain ResNet skips the stem ReLU (commented out in its resnet.py).
        backbone.relu = nn.Identity()
        k, st, pad = STEM_POOLS[stem_pool]
        backbone.maxpool = nn.MaxPool2d(kernel_size=k, stride=st, padding=pad)
    km.drop(lambda k: k.startswith("base.fc."))  # the ImageNet classifier of the IBN ResNet, unused
    for key in list(state):
        if key.startswith("base.") and not key.startswith("base.fc."):
            km.put("backbone." + key[len("base.") :], key)
    bn = None
    if km.has("bottleneck.weight"):
        bn = batchnorm1d_from(km.get("bottleneck.weight"))
        bn_keys(km, "head.bn", "bottleneck")
    clf = linear_from(km.get("classifier.weight"), km.state.get("classifier.bias"))
    km.put("head.classifier.weight", "classifier.weight")
    if km.has("classifier.bias"):
        km.put("head.classifier.bias", "classifier.bias")
    km.check_consumed("strong-baseline parts outside base + bottleneck + classifier")
    head = ForeignHead(
        SimplePool("avg"),
        int(backbone.out_channels),
        bn=bn,
        classifier=clf,
        neck_feat=neck_feat if bn is not None else "before",
    )
    model = ReIDModel(backbone, head, IMAGENET_MEAN, IMAGENET_STD, arch="strong_baseline")
    load_mapped(model, km.out, "strong_baseline", origin)
    model.input_size = [int(v) for v in input_size]
    model.source_arch = resnet_name(info)
    return model
