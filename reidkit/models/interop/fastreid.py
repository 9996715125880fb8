"""fast-reid checkpoints (JDAI-CV/fast-reid: Baseline/BoT, AGW, SBS on ResNet / IBN-a / SE / NL).

Layout: ``{"model": state_dict, "optimizer": ..., "iteration": ...}``; the state dict holds
``backbone.*`` (torchvision names; IBN-a as ``bn1.IN`` / ``bn1.BN``; SE as ``se.fc.0/2``; AGW's
non-local blocks as ``backbone.NL_<stage>.<j>.{g,theta,phi,W.0,W.1}``), ``heads.*``
(``heads.pool_layer.p`` for learnable GeM; ``heads.bottleneck.0`` the BNNeck, or a 1x1
reduction conv followed by ``heads.bottleneck.1``; ``heads.weight`` / ``heads.classifier.weight``
the classifier) and, in older releases, the ``pixel_mean``/``pixel_std`` buffers (0-255 units).

Inference (meta_arch/baseline.py + heads/embedding_head.py): images are 0-255 RGB,
``(x - pixel_mean) / pixel_std``, the ResNet (its stem max pool is kernel 3, stride 2, *no*
padding and ``ceil_mode=True``, unlike torchvision's), pooling, the bottleneck, and the eval
output is the post-bottleneck feature whatever ``NECK_FEAT`` says (that key only picks the
training feature). A non-local block (Wang et al. 2018, AGW's variant) follows the last
``n`` blocks of a stage: ``z = x + W(softmax-free attention)``, with the affinity
``theta(x)^T phi(x)`` divided by the number of positions.

The pooling is stored only when it has a parameter (GeM with learnable p); otherwise it is not
in the checkpoint: ``pooling="avg"`` (BoT, default) or ``"max"``, ``"avgmax"``, ``"gem"``
(fixed p = 3) as the recipe used. The last stride is not stored either (fast-reid's recipes all
use 1; ``last_stride=2`` otherwise).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import torch
from torch import nn

from reidkit.errors import ReIDError
from reidkit.models.backbones.resnet import ResNet, spec
from reidkit.models.interop.common import (
    ForeignHead,
    GeMPool,
    KeyMap,
    SimplePool,
    batchnorm1d_from,
    bn_keys,
    infer_resnet,
    linear_from,
    load_mapped,
    resnet_name,
)

DESCRIPTION = "fast-reid (JDAI-CV/fast-reid): {'model': ...} with backbone.* and heads.*"
# fast-reid's default MODEL.PIXEL_MEAN / PIXEL_STD (ImageNet statistics in 0-255 units), used when
# the buffers are not in the checkpoint (newer fast-reid registers them non-persistent).
DEFAULT_PIXEL_MEAN = [123.675, 116.28, 103.53]
DEFAULT_PIXEL_STD = [58.395, 57.12, 57.375]


def detect(state: Mapping[str, Any]) -> bool:
    """fast-reid: backbone.* and heads.* keys."""
    return any(k.startswith("backbone.") for k in state) and any(k.startswith("heads.") for k in state)


class NonLocal(nn.Module):
    """Non-local block as fast-reid's AGW (Ye et al. 2021): dot-product affinity / N, BN'd output, residual."""

    def __init__(self, channels: int, inter: int) -> None:
        super().__init__()
        self.inter = inter
        self.g = nn.Conv2d(channels, inter, 1)
        self.theta = nn.Conv2d(channels, inter, 1)
        self.phi = nn.Conv2d(channels, inter, 1)
        self.W = nn.Sequential(nn.Conv2d(inter, channels, 1), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x + W(f(x) g(x))`` with ``f = theta^T phi / N`` (no softmax, as in AGW)."""
        b, _, h, w = x.shape
        g = self.g(x).flatten(2).transpose(1, 2)  # B x N x c
        theta = self.theta(x).flatten(2).transpose(1, 2)  # B x N x c
        phi = self.phi(x).flatten(2)  # B x c x N
        affinity = theta @ phi / phi.shape[-1]
        y = (affinity @ g).transpose(1, 2).reshape(b, self.inter, h, w)
        return cast(torch.Tensor, x + self.W(y))


class FastReIDResNet(ResNet):
    """reidkit's ResNet with fast-reid's stem pooling and optional non-local blocks (``NL_1..NL_4``)."""

    def __init__(self, info: Mapping[str, Any], last_stride: int, nonlocal_inter: Mapping[int, list[int]]) -> None:
        s = spec(
            info["depth"],
            groups=info["groups"],
            width_per_group=info["width_per_group"],
            ibn=info["ibn"],
            se=info["se"],
        )
        super().__init__(
            s.block,
            s.layers,
            groups=s.groups,
            width_per_group=s.width_per_group,
            ibn=s.ibn,
            se=s.se,
            last_stride=last_stride,
        )
        # fast-reid pools the stem with padding 0 and ceil_mode: a one-pixel shift of every window
        # against torchvision's padding 1, so the features differ unless this is reproduced.
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)
        self.nl_after: dict[int, list[int]] = {}
        for stage, inters in nonlocal_inter.items():
            if not inters:
                continue
            channels = (64, 128, 256, 512)[stage - 1] * s.block.expansion
            setattr(self, f"NL_{stage}", nn.ModuleList(NonLocal(channels, c) for c in inters))
            n_blocks = s.layers[stage - 1]
            # fast-reid places the j-th block after the (n - count + j)-th residual block.
            self.nl_after[stage] = sorted(n_blocks - (i + 1) for i in range(len(inters)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem, then the four stages with the non-local blocks after their residual blocks."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in range(1, 5):
            after = self.nl_after.get(stage, [])
            blocks = getattr(self, f"layer{stage}")
            for i, block in enumerate(blocks):
                x = block(x)
                if i in after:
                    x = getattr(self, f"NL_{stage}")[after.index(i)](x)
        return x


def _nonlocal_inter(state: Mapping[str, torch.Tensor]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for stage in range(1, 5):
        inters = []
        j = 0
        while f"backbone.NL_{stage}.{j}.g.weight" in state:
            inters.append(int(state[f"backbone.NL_{stage}.{j}.g.weight"].shape[0]))
            j += 1
        out[stage] = inters
    return out


def build(
    state: Mapping[str, torch.Tensor],
    origin: str,
    input_size: tuple[int, int] = (256, 128),
    last_stride: int = 1,
    pooling: str | None = None,
    **unused: Any,
) -> Any:
    """A reidkit model equal to fast-reid's inference on ``state``."""
    from reidkit.models.build import ReIDModel

    if unused:
        raise ReIDError(f"fastreid: unknown option(s) {', '.join(unused)} (accepted: input_size, last_stride, pooling)")
    if "backbone.layer1.0.conv1.weight" not in state:
        stem = next((k for k in state if k.startswith("backbone.")), "")
        raise ReIDError(
            f"fastreid checkpoint {origin}: only ResNet-family backbones are supported (ResNet, IBN-a, "
            f"SE, non-local); this backbone's first key is {stem!r} (ResNeSt, RegNet, OSNet, "
            "MobileNet, ViT backbones of fast-reid are not supported)"
        )
    km = KeyMap(state, "fastreid", origin)
    info = infer_resnet(state, "backbone.", "fastreid", origin)
    backbone = FastReIDResNet(info, last_stride, _nonlocal_inter(state))
    km.put_prefix("backbone.", "backbone.")

    # Head: pooling (GeM only when its p is stored), 1x1 reduction conv, BNNeck, classifier.
    if km.has("heads.pool_layer.p"):
        if pooling not in (None, "gem_learned", "gem"):
            raise ReIDError(
                f"fastreid checkpoint {origin}: holds a learnable GeM p (heads.pool_layer.p) but "
                f"pooling={pooling!r} was asked"
            )
        pool: nn.Module = GeMPool()
        km.put("head.pool.p", "heads.pool_layer.p", lambda t: t.reshape(1))
    else:
        pool = SimplePool(pooling or "avg")
    feat_dim = backbone.out_channels
    embed = bn = None
    neck = "heads.bottleneck"
    idx = 0
    if km.has(f"{neck}.0.weight") and km.get(f"{neck}.0.weight").dim() == 4:
        w = km.get(f"{neck}.0.weight")
        embed = linear_from(w)
        km.put("head.embed.weight", f"{neck}.0.weight", lambda t: t.flatten(1))
        feat_dim = int(w.shape[0])
        idx = 1
    if km.has(f"{neck}.{idx}.weight"):
        bn = batchnorm1d_from(km.get(f"{neck}.{idx}.weight"))
        bn_keys(km, "head.bn", f"{neck}.{idx}")
    elif km.has("heads.bnneck.weight"):  # fast-reid v0.1 named the BNNeck directly
        bn = batchnorm1d_from(km.get("heads.bnneck.weight"))
        bn_keys(km, "head.bn", "heads.bnneck")
    classifier = None
    for key in ("heads.weight", "heads.classifier.weight", "heads.cls_layer.weight"):
        if km.has(key):
            classifier = linear_from(km.get(key))
            km.put("head.classifier.weight", key)
            break
    mean = [float(v) / 255.0 for v in (km.get("pixel_mean").flatten() if km.has("pixel_mean") else DEFAULT_PIXEL_MEAN)]
    std = [float(v) / 255.0 for v in (km.get("pixel_std").flatten() if km.has("pixel_std") else DEFAULT_PIXEL_STD)]
    km.drop(lambda k: k in ("pixel_mean", "pixel_std"))
    km.check_consumed("fast-reid parts outside backbone (ResNet/IBN/SE/NL) + pooling + bottleneck + classifier")
    # fast-reid always returns the post-bottleneck feature at inference.
    head = ForeignHead(pool, feat_dim, embed=embed, bn=bn, classifier=classifier, neck_feat="after")
    model = ReIDModel(backbone, head, mean, std, arch="fastreid")
    load_mapped(model, km.out, "fastreid", origin)
    model.input_size = [int(v) for v in input_size]
    model.source_arch = resnet_name(info) + ("_nl" if any(_nonlocal_inter(state).values()) else "")
    return model
