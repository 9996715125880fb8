"""Other toolkits' trained ReID checkpoints, loaded as they are into reidkit models.

Supported layouts (one file each; ``FORMATS`` registers them in detection order):

- ``fastreid``: fast-reid (JDAI-CV/fast-reid) Baseline/BoT, AGW, SBS on ResNet / IBN-a / SE
  backbones, ``{"model": state_dict}`` with ``backbone.*``, ``heads.*`` and the 0-255
  ``pixel_mean``/``pixel_std`` buffers;
- ``torchreid``: torchreid (KaiyangZhou/deep-person-reid) OSNet family and ResNet(-fc512);
- ``strong_baseline``: reid-strong-baseline (michuanhaohao) ``base.*`` / ``bottleneck.*`` /
  ``classifier.*``;
- ``transreid``: TransReID (damo-cv) ViT with SIE and JPM;
- ``solider``: SOLIDER-REID (tinyvision) Swin with the semantic weight.

Each loader infers the architecture from key names and shapes, builds a reidkit
:class:`~reidkit.models.build.ReIDModel` whose inference feature equals the original code's
(same layers, same pooling, the same neck output), renames every tensor, and sets the input
normalisation the original preprocessing used (``model.mean``/``model.std`` in [0, 1] units:
fast-reid's 0-255 ``pixel_mean``/``pixel_std`` are divided by 255, which is the same
arithmetic). The returned model's ``info`` (a ``ModelInfo``) carries ``source_format``,
``source_arch``, ``input_size``, ``feat_dim``, ``mean``, ``std``; ``model_cfg`` is None (it is not
rebuildable from a ``ModelConfig``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from reidkit.errors import ReIDError
from reidkit.models.checkpoint import read_checkpoint
from reidkit.models.interop.common import first_keys, unwrap_state
from reidkit.registry import Registry

__all__ = ["FORMATS", "ForeignFormat", "detect_format", "load_foreign", "register_format"]


@dataclass(frozen=True)
class ForeignFormat:
    """A checkpoint layout: ``detect(state) -> bool`` on the unwrapped state dict, ``build(state, origin, **options)``."""

    detect: Callable[[Mapping[str, torch.Tensor]], bool]
    build: Callable[..., Any]
    description: str = ""


FORMATS: Registry[ForeignFormat] = Registry("checkpoint format", "--from")


def register_format(name: str, fmt: ForeignFormat, *, overwrite: bool = False) -> ForeignFormat:
    """Add a foreign checkpoint layout (tried by ``detect_format`` after the built-ins)."""
    FORMATS.register(name, fmt, overwrite=overwrite)
    return fmt


def _register_builtins() -> None:
    from reidkit.models.interop import fastreid, solider, strong_baseline, torchreid, transreid

    # Order matters only for detection: the most specific signatures first.
    for name, mod in (
        ("fastreid", fastreid),
        ("transreid", transreid),
        ("solider", solider),
        ("strong_baseline", strong_baseline),
        ("torchreid", torchreid),
    ):
        FORMATS.register(name, ForeignFormat(mod.detect, mod.build, mod.DESCRIPTION))


def _origin(source: Any) -> str:
    return os.fspath(source) if isinstance(source, (str, os.PathLike)) else "<state dict>"


def _read(source: str | os.PathLike, trust: bool = False) -> Any:
    # One reader for every checkpoint: missing/corrupt files, TorchScript exports and files that
    # would run code get the same errors as reidkit's own checkpoints.
    return read_checkpoint(Path(source).expanduser(), "cpu", trust=trust)


def detect_format(state: Mapping[str, Any], origin: str = "<state dict>") -> str:
    """The registered format whose key signature ``state`` (a checkpoint or state dict) matches."""
    flat = unwrap_state(state, origin)
    for name, fmt in FORMATS.items():
        if fmt.detect(flat):
            return name
    raise ReIDError(
        f"checkpoint {origin}: not a reidkit checkpoint (no model_cfg) and no known layout matches (tried "
        f"{', '.join(FORMATS.names())}); first keys: {first_keys(flat)}. Name the format with "
        "fmt=... (CLI: --from) if it is one of these"
    )


def load_foreign(
    path_or_state: str | os.PathLike | Mapping[str, Any] | torch.nn.Module,
    fmt: str | None = None,
    device: str | torch.device = "cpu",
    origin: str | None = None,
    trust_checkpoint: bool = False,
    **options: Any,
) -> Any:
    """Load another toolkit's checkpoint (file or loaded dict) as a reidkit ``ReIDModel`` in eval mode.

    ``fmt``: one of ``FORMATS`` (detected from the keys when None). ``options`` go to the
    format's builder: ``input_size=(H, W)`` for all; per format e.g. ``last_stride``,
    ``pooling``, ``neck_feat``, ``sie_lambda``, ``semantic_weight`` (see each module).
    """
    origin = origin or _origin(path_or_state)
    raw = (
        path_or_state
        if isinstance(path_or_state, (Mapping, torch.nn.Module))
        else _read(path_or_state, trust_checkpoint)
    )
    if not isinstance(raw, (Mapping, torch.nn.Module)):
        raise ReIDError(f"checkpoint {origin}: does not hold a checkpoint dict (got {type(raw).__name__})")
    state = unwrap_state(raw, origin)
    name = detect_format(state, origin) if fmt is None else fmt
    entry = FORMATS.get(name)
    model = entry.build(state, origin, **options)
    model.source_format = name
    model.model_cfg = None
    if isinstance(path_or_state, (str, os.PathLike)):
        from reidkit.models.checkpoint import file_sha256

        model.sha256 = file_sha256(Path(path_or_state).expanduser())
        model.path = str(Path(path_or_state).expanduser().resolve())
    return model.to(device).eval()


_register_builtins()
