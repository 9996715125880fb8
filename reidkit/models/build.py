"""Model assembly: ``ModelConfig`` -> ``ReIDModel`` (backbone + head, or MGN), checkpoints, param groups."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, cast

import torch
from torch import nn

from reidkit.config.model import ModelConfig as ModelConfig  # re-exported: build_model's argument
from reidkit.errors import ReIDError
from reidkit.models.info import DEFAULT_INPUT_SIZE, ModelInfo
from reidkit.models.heads import (
    ReIDHead,
)

ARCHS = ("baseline", "mgn", "transreid")
_DEFAULT_MEAN = [0.485, 0.456, 0.406]
_DEFAULT_STD = [0.229, 0.224, 0.225]


class ReIDModel(nn.Module):
    """Backbone + head. ``forward(x, labels=None, cams=None)``: training -> dict, eval -> ``B x feat_dim``.

    Parameters under ``backbone.`` are the (pretrained) backbone; everything else is head.
    ``labels`` are only needed in training by margin classifiers (arcface/cosface/circle);
    ``cams`` (LongTensor B) only by models whose backbone has ``uses_camera = True`` (SIE).
    Callers that need another output than ``forward``'s use ``forward_features`` and
    ``forward_head(fmap, which=...)``; nothing outside should mutate the head or reach into it.
    """

    # Any module with forward_features (and out_channels) / forward_head: the backbone and head
    # contracts, met by several classes (ResNet, ViT, MGN, ...; ReIDHead, TransReIDHead, ...).
    backbone: Any
    head: Any

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        mean: list[float],
        std: list[float],
        arch: str = "baseline",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.arch = arch
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]
        self.feat_dim = int(self.head.feat_dim)
        self.uses_camera = bool(getattr(backbone, "uses_camera", False))
        # Provenance, set by the loaders (reidkit.models.loading, interop); read through ``info``.
        self.input_size: list[int] = list(DEFAULT_INPUT_SIZE)
        self.source_format = "reidkit"
        self.source_arch: str | None = None
        self.model_cfg: ModelConfig | None = None
        self.sha256: str | None = None
        self.path: str | None = None

    @property
    def info(self) -> ModelInfo:
        """The typed facts about this model (input size, normalisation, feature size, provenance)."""
        cfg = self.model_cfg
        return ModelInfo(
            source_format=self.source_format,
            feat_dim=int(self.feat_dim),
            input_size=(int(self.input_size[0]), int(self.input_size[1])),
            mean=tuple(float(v) for v in self.mean),
            std=tuple(float(v) for v in self.std),
            uses_camera=bool(self.uses_camera),
            source_arch=self.source_arch,
            sha256=self.sha256,
            path=self.path,
            model_cfg=dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else None,
        )

    def forward_features(self, x: torch.Tensor, cams: torch.Tensor | None = None) -> Any:
        """The backbone's feature map ``B x C x h x w`` (MGN: the list of its branch maps)."""
        if self.uses_camera:
            return self.backbone.forward_features(x, cams)
        return self.backbone.forward_features(x)

    def forward_head(self, fmap: Any, which: str = "after", labels: torch.Tensor | None = None) -> torch.Tensor:
        """One head output of a feature map: "after" (post-neck), "before" (metric feature), "logits".

        ``which="before"`` (or ``"pooled"``, the bare pooled feature) also takes a partial map such
        as ``fmap[:, :, :h // 2]`` and gives that part's pooled feature. Runs in the current mode.
        """
        return cast(torch.Tensor, self.head.forward_head(fmap, which, labels))

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, cams: torch.Tensor | None = None) -> Any:
        """Training: ``{"feat", "logits"[, "feats", "logits_list"]}``; eval: ``B x feat_dim``."""
        return self.head(self.forward_features(x, cams), labels)


def build_model(cfg: ModelConfig, num_classes: int) -> ReIDModel:
    """Build the model described by ``cfg`` with an ID classifier over ``num_classes``."""
    model = _assemble_model(cfg, num_classes)
    if cfg.stem_pool == "ceil":
        pool = getattr(model.backbone, "maxpool", None)
        if not isinstance(pool, nn.MaxPool2d):
            raise ReIDError(f"model.stem_pool=ceil: backbone {cfg.backbone} has no ResNet stem max-pool")
        model.backbone.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
    if cfg.bn_groups > 1:
        from reidkit.models.ghost_bn import convert_ghost_bn

        convert_ghost_bn(model, cfg.bn_groups)
    return model


def _assemble_model(cfg: ModelConfig, num_classes: int) -> ReIDModel:
    """The model of ``cfg`` per arch (before model-wide switches such as ghost BN)."""
    if not isinstance(cfg, ModelConfig):
        raise ReIDError(f"model: expected a ModelConfig, got {type(cfg).__name__}")
    cfg.check()
    if int(num_classes) < 1:
        raise ReIDError(f"num_classes: must be >= 1, got {num_classes}")
    if cfg.arch == "mgn":
        from reidkit.models.mgn import build_mgn_parts

        trunk, mhead, mean, std = build_mgn_parts(
            cfg.backbone,
            int(num_classes),
            cfg.pretrained,
            cfg.classifier,
            cfg.cls_scale,
            cfg.cls_margin,
        )
        return ReIDModel(trunk, mhead, mean, std, arch="mgn")
    if cfg.arch == "transreid":
        from reidkit.models.transreid import build_transreid_parts

        ttrunk, thead, mean, std = build_transreid_parts(cfg, int(num_classes))
        return ReIDModel(ttrunk, thead, mean, std, arch="transreid")
    from reidkit.models.backbones import build_backbone, options_from_config

    backbone = build_backbone(
        cfg.backbone, pretrained=cfg.pretrained, last_stride=cfg.last_stride, **options_from_config(cfg)
    )
    head = ReIDHead(
        int(getattr(backbone, "out_channels")),  # every backbone's contract (models/backbones)
        int(num_classes),
        pooling=cfg.pooling,
        gem_p=cfg.gem_p,
        neck=cfg.neck,
        neck_feat=cfg.neck_feat,
        embedding_dim=cfg.embedding_dim,
        embedding_hidden=cfg.embedding_hidden,
        dropout=cfg.dropout,
        classifier=cfg.classifier,
        cls_scale=cfg.cls_scale,
        cls_margin=cfg.cls_margin,
        cls_init_std=cfg.cls_init_std,
        cls_bias=cfg.cls_bias,
    )
    mean = list(getattr(backbone, "mean", _DEFAULT_MEAN))
    std = list(getattr(backbone, "std", _DEFAULT_STD))
    return ReIDModel(backbone, head, mean, std, arch="baseline")


# ----------------------------------------------------------------------------- checkpoints


def save_model(
    path: str | os.PathLike,
    model: nn.Module,
    cfg: ModelConfig,
    num_classes: int,
    input_size: tuple[int, int] | list[int],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``{"model", "model_cfg", "num_classes", "input_size", "mean", "std", **extra}`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    inner = getattr(model, "module", None)  # unwrap DDP / DataParallel
    net = inner if isinstance(inner, nn.Module) else model
    ckpt: dict[str, Any] = {
        "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "model_cfg": dataclasses.asdict(cfg),
        "num_classes": int(num_classes),
        "input_size": [int(v) for v in input_size],
        "mean": [float(v) for v in getattr(net, "mean", _DEFAULT_MEAN)],
        "std": [float(v) for v in getattr(net, "std", _DEFAULT_STD)],
    }
    from reidkit.plugins import loaded_plugins

    if loaded_plugins():  # the user's parts this model may need: imported again when it is loaded
        ckpt["plugins"] = loaded_plugins()
    if extra:
        ckpt.update(extra)
    # Temp file in the same folder, then rename: a crash never leaves a half-written checkpoint
    # (and a killed write's temp is recognised and removed by clean_stale_temps).
    from reidkit.models.checkpoint import save_checkpoint

    return save_checkpoint(ckpt, path)


def read_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu", trust: bool = False) -> dict[str, Any]:
    """A checkpoint dict read without running code (``reidkit.models.checkpoint.read_checkpoint``)."""
    from reidkit.models.checkpoint import read_checkpoint as _read

    ckpt = _read(path, device, trust=trust)
    if not isinstance(ckpt, dict):
        raise ReIDError(f"checkpoint: {path} does not hold a checkpoint dict")
    return ckpt


class _NoRandomFillOnMeta(torch.overrides.TorchFunctionMode):
    """The normal fills (``Tensor.normal_``, ``nn.init.normal_`` / ``kaiming_normal_`` / ...) return a meta
    tensor as it is. It has no values to fill, and PyTorch runs meta ``normal_`` through its Python reference
    implementation, whose first use imports torch._dynamo (~0.7 s in a fresh process: more than the
    initialisation a load skips)."""

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Collection[type],
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if getattr(func, "__name__", "").endswith("normal_"):
            target = args[0] if args else kwargs.get("tensor", kwargs.get("self"))
            if isinstance(target, torch.Tensor) and target.is_meta:
                return target
        return func(*args, **kwargs)


def _built_with_weights(cfg: ModelConfig, num_classes: int, state: Mapping[str, Any]) -> ReIDModel | None:
    """The model of `cfg` holding `state`, without initialising weights that are replaced at once: built on the
    meta device (shapes only), then given the stored tensors (cast to each parameter's dtype). A ResNet-50
    loads ~0.3 s faster, a ViT-B seconds. None where that does not work (a part that computes values while
    it is built, weights that do not fit, a tensor no checkpoint carries): build it the usual way then."""
    try:
        with _NoRandomFillOnMeta(), torch.device("meta"):
            model = build_model(cfg, num_classes)
        own = model.state_dict()
        cast = {
            k: v.to(own[k].dtype) if k in own and torch.is_tensor(v) and v.dtype != own[k].dtype else v
            for k, v in state.items()
        }
        model.load_state_dict(cast, strict=True, assign=True)
    except (RuntimeError, NotImplementedError, TypeError, ValueError):
        return None
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        return None
    return model


def model_from_checkpoint(ckpt: Mapping[str, Any], origin: str = "<checkpoint>") -> ReIDModel:
    """Rebuild the ``ReIDModel`` of a reidkit checkpoint dict (``model``, ``model_cfg``, ``num_classes``...), eval mode."""
    missing = [k for k in ("model", "model_cfg", "num_classes") if k not in ckpt]
    if missing:
        raise ReIDError(f"checkpoint: {origin} lacks the key(s) {', '.join(missing)}")
    raw_cfg = ckpt["model_cfg"]
    if not isinstance(raw_cfg, dict):
        raise ReIDError(f"checkpoint: {origin}: 'model_cfg' must be a dict")
    from reidkit.errors import UnknownName
    from reidkit.plugins import recorded_plugins_error

    try:
        return _rebuild(ckpt, raw_cfg, origin)
    except UnknownName as exc:  # a part a plug-in registers: never imported from the file's own list
        raise recorded_plugins_error(ckpt.get("plugins"), origin, exc) from None


def _rebuild(ckpt: Mapping[str, Any], raw_cfg: dict[str, Any], origin: str) -> ReIDModel:
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    # The stored weights replace any pretrained ones, so never fetch those again.
    cfg = ModelConfig(**{k: v for k, v in raw_cfg.items() if k in known})
    cfg.pretrained = False
    state = ckpt["model"]
    if any(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    model = _built_with_weights(cfg, int(ckpt["num_classes"]), state)
    if model is None:  # a model that cannot be built on the meta device, or weights that do not fit it
        model = build_model(cfg, int(ckpt["num_classes"]))
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ReIDError(f"checkpoint: {origin}: weights do not match the stored model_cfg ({exc})") from exc
    if "mean" in ckpt:
        model.mean = [float(v) for v in ckpt["mean"]]
    if "std" in ckpt:
        model.std = [float(v) for v in ckpt["std"]]
    from reidkit.utils.validate import check_hw  # a huge or zero size would allocate before failing

    model.input_size = list(check_hw(ckpt.get("input_size", DEFAULT_INPUT_SIZE), f"checkpoint {origin}: input_size"))
    model.model_cfg = cfg
    return model.eval()
