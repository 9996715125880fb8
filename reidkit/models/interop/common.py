"""Shared pieces of the foreign-checkpoint loaders: unwrapping, key bookkeeping, ResNet layout
inference and the generic head that reproduces other toolkits' inference features.

Every loader follows the same three steps: (1) infer the architecture from tensor names and
shapes (block counts, widths, IBN/SE markers), (2) build a reidkit module whose parameter names
are known, (3) rename every foreign tensor to its reidkit name with a :class:`KeyMap` that
records which foreign keys were used. A foreign tensor nobody consumed is an unsupported part
of the checkpoint and raises one :class:`ReIDError` naming it, so a model is never silently
built from part of its weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from reidkit.errors import ReIDError

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
HALF_MEAN = [0.5, 0.5, 0.5]
HALF_STD = [0.5, 0.5, 0.5]

# Keys under which training scripts nest the weights (fast-reid "model", torchreid
# "state_dict", others "net" / "model_state").
_WRAPPERS = ("model", "state_dict", "model_state", "model_state_dict", "net", "network")


def unwrap_state(obj: Any, origin: str) -> dict[str, torch.Tensor]:
    """The flat ``name -> tensor`` dict of a checkpoint object, with ``module.`` prefixes removed."""
    for _ in range(3):
        if isinstance(obj, nn.Module):
            obj = obj.state_dict()
        if not isinstance(obj, Mapping):
            break
        if any(isinstance(v, (torch.Tensor, np.ndarray)) for v in obj.values()):
            break
        inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), (Mapping, nn.Module))), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping):
        raise ReIDError(f"checkpoint {origin}: does not hold a state dict (got {type(obj).__name__})")
    # A plain .pkl (detectron2 / fast-reid converted weights) stores numpy arrays.
    state = {
        str(k): (torch.from_numpy(np.array(v)) if isinstance(v, np.ndarray) and v.dtype != object else v)
        for k, v in obj.items()
    }
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise ReIDError(
            f"checkpoint {origin}: holds no tensors: neither a reidkit checkpoint (model, model_cfg, "
            f"num_classes) nor a state dict (alone or under one of {', '.join(_WRAPPERS)})"
        )
    # DataParallel / DDP wrappers prefix every name; one layer of it is common, two happen.
    while all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


class KeyMap:
    """Renames foreign tensors to reidkit names and remembers which foreign keys were consumed."""

    def __init__(self, state: Mapping[str, torch.Tensor], fmt: str, origin: str) -> None:
        self.state = dict(state)
        self.fmt = fmt
        self.origin = origin
        self.used: set[str] = set()
        self.out: dict[str, torch.Tensor] = {}

    def has(self, key: str) -> bool:
        """Whether the foreign checkpoint holds ``key``."""
        return key in self.state

    def get(self, key: str) -> torch.Tensor:
        """The foreign tensor ``key`` (not marked as used)."""
        if key not in self.state:
            raise ReIDError(f"{self.fmt} checkpoint {self.origin}: missing the key {key!r}")
        return self.state[key]

    def put(self, dst: str, src: str, fn: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        """Store foreign ``src`` (optionally transformed) as reidkit ``dst``."""
        value = self.get(src)
        self.out[dst] = fn(value) if fn is not None else value
        self.used.add(src)

    def put_prefix(self, dst: str, src: str) -> int:
        """Store every foreign key under ``src`` as the same suffix under ``dst``; returns how many."""
        n = 0
        for key in list(self.state):
            if key.startswith(src):
                self.put(dst + key[len(src) :], key)
                n += 1
        return n

    def drop(self, pred: Callable[[str], bool]) -> None:
        """Mark foreign keys that reidkit does not need (e.g. ImageNet fc layers) as consumed."""
        self.used.update(k for k in self.state if pred(k))

    def leftover(self) -> list[str]:
        """Foreign keys nothing consumed, in checkpoint order."""
        return [k for k in self.state if k not in self.used]

    def check_consumed(self, hint: str = "") -> None:
        """Raise when some foreign tensors have no place in the reidkit model."""
        rest = self.leftover()
        if rest:
            more = f" (+{len(rest) - 8} more)" if len(rest) > 8 else ""
            raise ReIDError(
                f"{self.fmt} checkpoint {self.origin}: unsupported part(s): no reidkit counterpart for "
                f"{', '.join(rest[:8])}{more}{'; ' + hint if hint else ''}"
            )


def load_mapped(model: nn.Module, mapped: Mapping[str, torch.Tensor], fmt: str, origin: str) -> None:
    """Load renamed weights strictly; a shape or name mismatch is one ReIDError naming the keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in mapped]
    unexpected = [k for k in mapped if k not in own]
    bad = [k for k in mapped if k in own and tuple(own[k].shape) != tuple(mapped[k].shape)]
    if missing or unexpected or bad:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:6])}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected[:6])}")
        if bad:
            parts.append(
                "shape mismatch " + ", ".join(f"{k} {tuple(mapped[k].shape)} vs {tuple(own[k].shape)}" for k in bad[:4])
            )
        raise ReIDError(
            f"{fmt} checkpoint {origin}: the weights do not fit the inferred architecture ({'; '.join(parts)})"
        )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in mapped.items()}, strict=True)


# ----------------------------------------------------------------------------- ResNet layouts

_RESNET_DEPTHS: dict[tuple[str, tuple[int, ...]], int] = {
    ("basic", (2, 2, 2, 2)): 18,
    ("basic", (3, 4, 6, 3)): 34,
    ("bottleneck", (3, 4, 6, 3)): 50,
    ("bottleneck", (3, 4, 23, 3)): 101,
    ("bottleneck", (3, 8, 36, 3)): 152,
}


def _count(state: Mapping[str, Any], prefix: str) -> int:
    """Number of consecutive integer children ``prefix0.``, ``prefix1.``, ... present."""
    n = 0
    while any(k.startswith(f"{prefix}{n}.") for k in state):
        n += 1
    return n


def infer_resnet(state: Mapping[str, torch.Tensor], prefix: str, fmt: str, origin: str) -> dict[str, Any]:
    """Depth, block type, groups/width, IBN and SE of a torchvision-named ResNet under ``prefix``."""
    if f"{prefix}layer0.conv1.weight" in state or f"{prefix}layer0.0.weight" in state:
        raise ReIDError(
            f"{fmt} checkpoint {origin}: the SENet/SE-ResNeXt layout ({prefix}layer0.*, Cadene's "
            "pretrainedmodels) is not supported; supported: torchvision-named ResNet / ResNeXt / "
            "IBN-a / IBN-b / SE-ResNet"
        )
    if f"{prefix}conv1.weight" not in state or f"{prefix}layer1.0.conv1.weight" not in state:
        raise ReIDError(
            f"{fmt} checkpoint {origin}: no ResNet backbone under {prefix!r} (expected "
            f"{prefix}conv1.weight and {prefix}layer1.0.conv1.weight)"
        )
    layers = tuple(_count(state, f"{prefix}layer{i}.") for i in range(1, 5))
    kind = "bottleneck" if f"{prefix}layer1.0.conv3.weight" in state else "basic"
    depth = _RESNET_DEPTHS.get((kind, layers))
    if depth is None:
        raise ReIDError(
            f"{fmt} checkpoint {origin}: ResNet with {kind} blocks {list(layers)} per stage is not "
            "a known depth (18, 34, 50, 101, 152)"
        )
    groups, width_per_group = 1, 64
    if kind == "bottleneck":
        w = state[f"{prefix}layer1.0.conv2.weight"]
        width, per_group = int(w.shape[0]), int(w.shape[1])
        groups = width // per_group
        width_per_group = width // groups  # layer1 has planes = 64, so width = groups * width_per_group
    ibn = None
    if f"{prefix}layer1.0.bn1.IN.weight" in state:
        ibn = "a"
    elif f"{prefix}layer1.{layers[0] - 1}.IN.weight" in state:
        ibn = "b"
    se = f"{prefix}layer1.0.se.fc.0.weight" in state
    return {"depth": depth, "groups": groups, "width_per_group": width_per_group, "ibn": ibn, "se": se}


def resnet_name(info: Mapping[str, Any]) -> str:
    """A readable name of an inferred ResNet (e.g. resnet50_ibn_a)."""
    name = f"resnet{info['depth']}"
    if info["groups"] > 1:
        name = f"resnext{info['depth']}_{info['groups']}x{info['width_per_group']}d"
    if info["se"]:
        name = "se_" + name
    if info["ibn"]:
        name += f"_ibn_{info['ibn']}"
    return name


# ----------------------------------------------------------------------------- the generic head


class GeMPool(nn.Module):
    """Generalised-mean pooling with a learnable p, clamped at eps (fast-reid's GeneralizedMeanPoolingP)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.full((1,), float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x C x h x w`` -> ``B x C``."""
        return F.adaptive_avg_pool2d(x.clamp(min=self.eps).pow(self.p), 1).pow(1.0 / self.p).flatten(1)


class SimplePool(nn.Module):
    """Global pooling: "avg", "max", "avgmax" (sum of both, fast-reid's AdaptiveAvgMaxPool), "gem" (fixed p=3), "token"."""

    def __init__(self, kind: str = "avg", p: float = 3.0) -> None:
        super().__init__()
        if kind not in ("avg", "max", "avgmax", "gem", "token"):
            raise ReIDError(f"pooling: unknown value {kind!r}; expected avg, max, avgmax, gem")
        self.kind = kind
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``B x C x h x w`` -> ``B x C`` (token: a ``B x C x 1 x 1`` map is already pooled)."""
        if self.kind == "avg" or self.kind == "token":
            return x.mean(dim=(2, 3))
        if self.kind == "max":
            return x.amax(dim=(2, 3))
        if self.kind == "avgmax":
            return x.mean(dim=(2, 3)) + x.amax(dim=(2, 3))
        return F.adaptive_avg_pool2d(x.clamp(min=1e-6).pow(self.p), 1).pow(1.0 / self.p).flatten(1)


class ForeignHead(nn.Module):
    """Pool -> [embedding] -> [BatchNorm neck] -> classifier, the head shape shared by the toolkits.

    ``embed`` is fast-reid's 1x1 reduction conv (a bias-free linear) or torchreid's
    ``fc`` block (linear -> BN -> ReLU); ``bn`` is the BNNeck. Eval returns the feature after the
    neck (``neck_feat="after"``) or before it (``"before"``), as the original inference code does.
    """

    def __init__(
        self,
        pool: nn.Module,
        feat_dim: int,
        embed: nn.Module | None = None,
        bn: nn.Module | None = None,
        classifier: nn.Module | None = None,
        neck_feat: str = "after",
    ) -> None:
        super().__init__()
        if neck_feat not in ("after", "before"):
            raise ReIDError(f"neck_feat: unknown value {neck_feat!r}; expected after or before")
        self.pool = pool
        self.embed = embed
        self.bn = bn
        self.classifier = classifier
        self.neck_feat = neck_feat
        self.feat_dim = int(feat_dim)

    def forward_head(
        self, fmap: torch.Tensor, which: str = "after", labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """ "pooled", "before" (metric feature), "after" (post-neck) or "logits"."""
        if which not in ("after", "before", "logits", "pooled"):
            raise ReIDError(f"which: unknown value {which!r}; expected after, before, logits or pooled")
        # nn.Module.__call__ is typed Any; pool, embed, bn and classifier map tensors to tensors
        pooled = cast(torch.Tensor, self.pool(fmap))
        if which == "pooled":
            return pooled
        before = cast(torch.Tensor, self.embed(pooled)) if self.embed is not None else pooled
        if which == "before":
            return before
        after = cast(torch.Tensor, self.bn(before)) if self.bn is not None else before
        if which == "after":
            return after
        if self.classifier is None:
            raise ReIDError("this foreign checkpoint holds no classifier; logits are unavailable")
        return cast(torch.Tensor, self.classifier(after))

    def forward(self, fmap: torch.Tensor, labels: torch.Tensor | None = None) -> Any:
        """Eval: the inference feature; training: ``{"feat", "logits"}``."""
        if not self.training:
            return self.forward_head(fmap, self.neck_feat)
        out = {"feat": self.forward_head(fmap, "before")}
        if self.classifier is not None:
            out["logits"] = self.forward_head(fmap, "logits")
        return out


def linear_from(weight: torch.Tensor, bias: torch.Tensor | None = None) -> nn.Linear:
    """An ``nn.Linear`` shaped like ``weight`` (``out x in``, or ``out x in x 1 x 1`` for a 1x1 conv)."""
    return nn.Linear(int(weight.shape[1]), int(weight.shape[0]), bias=bias is not None)


def batchnorm1d_from(weight: torch.Tensor) -> nn.BatchNorm1d:
    """A BatchNorm1d with as many features as ``weight``."""
    return nn.BatchNorm1d(int(weight.shape[0]))


def bn_keys(km: KeyMap, dst: str, src: str) -> None:
    """Copy a BatchNorm's affine parameters and running statistics (num_batches_tracked optional)."""
    for name in ("weight", "bias", "running_mean", "running_var"):
        km.put(f"{dst}.{name}", f"{src}.{name}", lambda t: t.reshape(-1))
    if km.has(f"{src}.num_batches_tracked"):
        km.put(f"{dst}.num_batches_tracked", f"{src}.num_batches_tracked", lambda t: t.reshape(()))
    else:
        km.out[f"{dst}.num_batches_tracked"] = torch.tensor(0)


def first_keys(keys: Iterable[str], n: int = 6) -> str:
    """The first ``n`` keys, comma separated, for error messages."""
    keys = list(keys)
    more = f", ... ({len(keys)} keys)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more
