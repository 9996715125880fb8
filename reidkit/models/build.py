"""Model assembly: ``ModelConfig`` -> ``ReIDModel`` (backbone + head, or MGN), checkpoints, param groups."""
from __future__ import annotations

import dataclasses
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from reidkit.config.model import ModelConfig
from reidkit.errors import ReIDError
from reidkit.models.heads import GeM, ReIDHead

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

    def __init__(
        self, backbone: nn.Module, head: nn.Module, mean: list[float], std: list[float],
        arch: str = "baseline",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.arch = arch
        self.mean = [float(v) for v in mean]
        self.std = [float(v) for v in std]
        self.feat_dim = int(head.feat_dim)
        self.uses_camera = bool(getattr(backbone, "uses_camera", False))

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
        return self.head.forward_head(fmap, which, labels)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None, cams: torch.Tensor | None = None) -> Any:
        """Training: ``{"feat", "logits"[, "feats", "logits_list"]}``; eval: ``B x feat_dim``."""
        return self.head(self.forward_features(x, cams), labels)


def build_model(cfg: ModelConfig, num_classes: int) -> ReIDModel:
    """Build the model described by ``cfg`` with an ID classifier over ``num_classes``."""
    model = _assemble_model(cfg, num_classes)
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
            cfg.backbone, int(num_classes), cfg.pretrained, cfg.classifier, cfg.cls_scale,
            cfg.cls_margin,
        )
        return ReIDModel(trunk, mhead, mean, std, arch="mgn")
    if cfg.arch == "transreid":
        from reidkit.models.transreid import build_transreid_parts

        ttrunk, thead, mean, std = build_transreid_parts(cfg, int(num_classes))
        return ReIDModel(ttrunk, thead, mean, std, arch="transreid")
    from reidkit.models.backbones import build_backbone, options_from_config

    backbone = build_backbone(cfg.backbone, pretrained=cfg.pretrained, last_stride=cfg.last_stride,
                              **options_from_config(cfg))
    head = ReIDHead(
        int(backbone.out_channels), int(num_classes), pooling=cfg.pooling, gem_p=cfg.gem_p,
        neck=cfg.neck, neck_feat=cfg.neck_feat, embedding_dim=cfg.embedding_dim,
        embedding_hidden=cfg.embedding_hidden, dropout=cfg.dropout, classifier=cfg.classifier,
        cls_scale=cfg.cls_scale, cls_margin=cfg.cls_margin,
    )
    mean = list(getattr(backbone, "mean", _DEFAULT_MEAN))
    std = list(getattr(backbone, "std", _DEFAULT_STD))
    return ReIDModel(backbone, head, mean, std, arch="baseline")


# ----------------------------------------------------------------------------- checkpoints


def save_model(
    path: str | os.PathLike, model: ReIDModel, cfg: ModelConfig, num_classes: int,
    input_size: tuple[int, int] | list[int], extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``{"model", "model_cfg", "num_classes", "input_size", "mean", "std", **extra}`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = model.module if hasattr(model, "module") else model  # unwrap DDP
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
    from reidkit.utils.io import atomic_write

    with atomic_write(path, "wb") as fh:
        torch.save(ckpt, fh)
    return path


def read_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict; missing or unreadable files raise ReIDError naming the path."""
    path = Path(path)
    if not path.is_file():
        raise ReIDError(f"checkpoint: file not found: {path}")
    from reidkit.export import is_torchscript

    if is_torchscript(path):
        raise ReIDError(f"checkpoint: {path} is a TorchScript export, not a training checkpoint; it serves "
                        "features (reidkit extract --weights, export.load_feature_model) but cannot be "
                        "rebuilt into a trainable model")
    try:
        try:
            ckpt = torch.load(path, map_location=device, weights_only=True)
        except pickle.UnpicklingError:
            # Training checkpoints may hold objects outside the safe allow-list (e.g. numpy
            # RNG state); they are the user's own files, so fall back to full unpickling.
            ckpt = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any decoding failure is a corrupt file to the user
        raise ReIDError(f"checkpoint: cannot read {path}: corrupt or not a torch checkpoint ({exc})") from exc
    if not isinstance(ckpt, dict):
        raise ReIDError(f"checkpoint: {path} does not hold a checkpoint dict")
    return ckpt


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", fmt: str | None = None,
               **foreign_options: Any) -> ReIDModel:
    """Rebuild a model from a checkpoint (model or training checkpoint); returned in eval mode.

    Other toolkits' checkpoints (no ``model_cfg``, or ``fmt`` named: fastreid, torchreid,
    strong_baseline, transreid, solider) go to ``reidkit.models.interop.load_foreign`` with
    ``foreign_options`` (e.g. ``input_size``).
    """
    ckpt = read_checkpoint(path, "cpu" if fmt is not None else device)
    if fmt is not None or "model_cfg" not in ckpt:
        from reidkit.models.interop import load_foreign

        return load_foreign(ckpt, fmt=fmt, device=device, origin=os.fspath(path), **foreign_options)
    missing = [k for k in ("model", "model_cfg", "num_classes") if k not in ckpt]
    if missing:
        raise ReIDError(f"checkpoint: {path} lacks the key(s) {', '.join(missing)}")
    raw_cfg = ckpt["model_cfg"]
    if not isinstance(raw_cfg, dict):
        raise ReIDError(f"checkpoint: {path}: 'model_cfg' must be a dict")
    from reidkit.plugins import import_recorded

    import_recorded(ckpt.get("plugins"), path)  # a user backbone registers itself on import
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    # The stored weights replace any pretrained ones, so never fetch those again.
    cfg = ModelConfig(**{k: v for k, v in raw_cfg.items() if k in known})
    cfg.pretrained = False
    model = build_model(cfg, int(ckpt["num_classes"]))
    state = ckpt["model"]
    if any(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ReIDError(f"checkpoint: {path}: weights do not match the stored model_cfg ({exc})") from exc
    if "mean" in ckpt:
        model.mean = [float(v) for v in ckpt["mean"]]
    if "std" in ckpt:
        model.std = [float(v) for v in ckpt["std"]]
    model.input_size = [int(v) for v in ckpt.get("input_size", [256, 128])]  # type: ignore[assignment]
    model.model_cfg = cfg  # type: ignore[assignment]
    return model.to(device).eval()


# ----------------------------------------------------------------------------- optimiser groups

_NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm,
               nn.modules.instancenorm._InstanceNorm, nn.LocalResponseNorm)


def param_groups(
    model: nn.Module, base_lr: float, weight_decay: float, backbone_lr_factor: float = 1.0,
    head_lr_factor: float = 1.0, bias_lr_factor: float = 1.0, no_decay_norm: bool = False,
    extra_modules: Iterable[nn.Module] = (),
) -> list[dict[str, Any]]:
    """Optimiser groups: backbone vs head lr factors, bias lr factor, optional no-decay norms/biases.

    Parameters under ``backbone.`` use ``backbone_lr_factor``; the rest of ``model`` and all of
    ``extra_modules`` (e.g. learnable loss weights) use ``head_lr_factor``. With
    ``no_decay_norm`` normalisation weights, biases and GeM's p get weight decay 0. Frozen
    parameters are skipped; every trainable parameter lands in exactly one group.
    """
    net = model.module if hasattr(model, "module") else model
    no_decay_ids: set[int] = set()
    for mod in [net, *extra_modules]:
        for sub in mod.modules():
            if isinstance(sub, _NORM_TYPES) or isinstance(sub, GeM):
                no_decay_ids.update(id(p) for p in sub.parameters(recurse=False))
    named: list[tuple[str, str, nn.Parameter]] = [
        ("backbone" if n.startswith("backbone.") else "head", n, p) for n, p in net.named_parameters()
    ]
    for i, mod in enumerate(extra_modules):
        named.extend(("head", f"extra{i}.{n}", p) for n, p in mod.named_parameters())
    groups: dict[tuple[str, bool, bool], dict[str, Any]] = {}
    seen: set[int] = set()
    for part, name, p in named:
        if not p.requires_grad or id(p) in seen:  # frozen, or shared/tied parameter
            continue
        seen.add(id(p))
        is_bias = name.endswith("bias")
        decay = not (no_decay_norm and (is_bias or id(p) in no_decay_ids))
        key = (part, is_bias, decay)
        if key not in groups:
            lr = base_lr * (backbone_lr_factor if part == "backbone" else head_lr_factor)
            if is_bias:
                lr *= bias_lr_factor
            groups[key] = {
                "params": [],
                "lr": lr,
                "weight_decay": weight_decay if decay else 0.0,
                "name": f"{part}{'.bias' if is_bias else ''}{'' if decay else '.no_decay'}",
            }
        groups[key]["params"].append(p)
    return list(groups.values())
