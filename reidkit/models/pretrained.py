"""Pretrained weight loading: URL or local file -> key mapping -> shape-checked load with a report."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reidkit.errors import ReIDError

logger = logging.getLogger(__name__)

# First key component of ImageNet classifier heads in the layouts we load (torchvision: fc,
# classifier; Cadene pretrainedmodels: last_linear). A ReID model replaces them anyway.
CLASSIFIER_PREFIXES: tuple[str, ...] = ("fc", "classifier", "last_linear")

# Containers other projects wrap a state dict in (training checkpoints, EMA copies).
_WRAPPER_KEYS: tuple[str, ...] = ("state_dict", "model", "model_state", "state_dict_ema", "net")

# Prefixes that frameworks put in front of a backbone's keys (DataParallel, fast-reid,
# reid-strong-baseline, generic wrappers); stripped only when that makes more keys match.
_CANDIDATE_PREFIXES: tuple[str, ...] = ("backbone.", "base.", "model.", "encoder.", "features_extractor.")

KeyMap = Mapping[str, str] | Callable[[str], str | None]


@dataclass(frozen=True)
class WeightsConfig:
    """Default pretrained weights of a registry entry (timm-style): where they come from and what they expect."""

    url: str | None = None
    # Resolves a local file shipped by an installed package (offline weights); wins over `url`.
    file: Callable[[], str] | None = None
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    key_map: KeyMap | None = None
    note: str = ""

    def resolve(self) -> str:
        """Return the URL or local path to load these weights from."""
        if self.file is not None:
            return self.file()
        if self.url is None:
            raise ReIDError("weights config has neither a url nor a file")
        return self.url


@dataclass
class LoadReport:
    """What a pretrained load did: keys loaded, missing from the file, unexpected in it, dropped, mismatched."""

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    def summary(self) -> str:
        """One-line human summary of the load."""
        return (
            f"loaded {len(self.loaded)} tensors from {self.source}; missing {len(self.missing)}, "
            f"unexpected {len(self.unexpected)}, dropped {len(self.dropped)} classifier keys, "
            f"shape-mismatched {len(self.mismatched)}"
        )


def is_url(source: str) -> bool:
    """True when `source` looks like an http(s) or file URL rather than a local path."""
    return bool(re.match(r"^(https?|ftp|file)://", source))


def _download(url: str) -> dict[str, Any]:
    try:
        # check_hash would reject files renamed by users; the shape check below catches wrong files.
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False, check_hash=False)
    except Exception as exc:  # network errors come in many types (URLError, HTTPError, OSError, ...)
        name = os.path.basename(url.split("?")[0])
        raise ReIDError(
            f"could not download pretrained weights from {url} ({type(exc).__name__}: {exc}). "
            f"Without network access, download {name} on another machine, copy it here and pass "
            f"the local file instead: set model.pretrained=/path/to/{name} (or put it into "
            f"{torch.hub.get_dir()}/checkpoints/)"
        ) from exc


def _read_file(path: str) -> Any:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ReIDError(f"pretrained weights file not found: {p} (expected a .pth/.pt state dict)")
    try:
        # weights_only: a checkpoint from the internet must not be able to run code on unpickling.
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ReIDError(
            f"could not read pretrained weights {p}: {type(exc).__name__}: {exc} "
            "(expected a PyTorch state dict saved with torch.save)"
        ) from exc


def read_state_dict(source: str | os.PathLike | Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Read a state dict from a URL, a local file or a mapping, unwrapping training checkpoints."""
    if isinstance(source, Mapping):
        obj: Any = source
    else:
        src = os.fspath(source)
        obj = _download(src) if is_url(src) else _read_file(src)
    # Training checkpoints nest the weights one or two levels deep.
    for _ in range(2):
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is not None and not any(isinstance(v, torch.Tensor) for v in obj.values()):
                obj = inner
    if not isinstance(obj, Mapping):
        raise ReIDError(f"pretrained weights {_name(source)} do not hold a state dict (got {type(obj).__name__})")
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise ReIDError(f"pretrained weights {_name(source)} hold no tensors")
    return sd


def _name(source: Any) -> str:
    return "<state dict>" if isinstance(source, Mapping) else os.fspath(source)


def _apply_key_map(key: str, key_map: KeyMap | None) -> str | None:
    if key_map is None:
        return key
    if callable(key_map):
        return key_map(key)
    # Mapping: longest matching prefix wins, so specific rules override general ones.
    for old in sorted(key_map, key=len, reverse=True):
        if key.startswith(old):
            return key_map[old] + key[len(old) :]
    return key


def map_keys(
    sd: Mapping[str, torch.Tensor], model_keys: set[str], key_map: KeyMap | None = None
) -> dict[str, torch.Tensor]:
    """Rename checkpoint keys to the model's layout: strip DataParallel/wrapper prefixes, apply `key_map`."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        k = k[len("module.") :] if k.startswith("module.") else k
        new = _apply_key_map(k, key_map)
        if new is not None:
            out[new] = v
    hits = len(model_keys.intersection(out))
    for prefix in _CANDIDATE_PREFIXES:
        stripped = {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in out.items()}
        n = len(model_keys.intersection(stripped))
        if n > hits:
            out, hits = stripped, n
    return out


def load_pretrained(
    module: nn.Module,
    source: str | os.PathLike | Mapping[str, Any],
    *,
    key_map: KeyMap | None = None,
    strict_shapes: bool = True,
) -> LoadReport:
    """Load weights from a URL, local file or state dict into `module`; return a LoadReport."""
    name = _name(source)
    sd = read_state_dict(source)
    own = module.state_dict()
    mapped = map_keys(sd, set(own), key_map)

    report = LoadReport(source=name)
    to_load: dict[str, torch.Tensor] = {}
    for k, v in mapped.items():
        if k.split(".", 1)[0] in CLASSIFIER_PREFIXES and k not in own:
            report.dropped.append(k)
            continue
        if k not in own:
            report.unexpected.append(k)
            continue
        if tuple(v.shape) != tuple(own[k].shape):
            if strict_shapes:
                raise ReIDError(
                    f"pretrained weights {name}: shape mismatch for key '{k}': "
                    f"checkpoint has {tuple(v.shape)}, model expects {tuple(own[k].shape)} "
                    "(wrong architecture for this file?)"
                )
            report.mismatched.append((k, tuple(v.shape), tuple(own[k].shape)))
            continue
        to_load[k] = v
    if not to_load:
        raise ReIDError(
            f"pretrained weights {name}: no key matches the model "
            f"(file keys look like {sorted(mapped)[:3]}, model keys like {sorted(own)[:3]})"
        )
    # num_batches_tracked is absent from old torchvision files and harmless to leave at zero.
    report.missing = [k for k in own if k not in to_load and not k.endswith("num_batches_tracked")]
    report.loaded = sorted(to_load)
    module.load_state_dict(to_load, strict=False)

    logger.info(report.summary())
    if report.missing:
        logger.warning(
            "pretrained weights %s: %d model keys missing from the file: %s",
            name,
            len(report.missing),
            ", ".join(report.missing[:20]),
        )
    if report.unexpected:
        logger.warning(
            "pretrained weights %s: %d unexpected keys ignored: %s",
            name,
            len(report.unexpected),
            ", ".join(report.unexpected[:20]),
        )
    if report.mismatched:
        logger.warning(
            "pretrained weights %s: %d shape-mismatched keys skipped: %s",
            name,
            len(report.mismatched),
            report.mismatched[:5],
        )
    return report
