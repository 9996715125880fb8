"""Loading a model from a file: the one dispatch between reidkit checkpoints, other toolkits'
checkpoints (``reidkit.models.interop``) and exports (``reidkit.models.exported``).

Imports flow one way: ``loading -> (build, interop, exported) -> checkpoint``; nothing below
imports this module, so there is no circle (``build`` rebuilds a model from a checkpoint dict,
``interop`` maps foreign state dicts onto ``build``'s models, ``checkpoint`` reads files safely).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import torch

from reidkit.errors import OptionError, ReIDError
from reidkit.models.build import ReIDModel, model_from_checkpoint
from reidkit.models.checkpoint import file_sha256, is_torchscript, read_checkpoint
from reidkit.models.exported import open_exported
from reidkit.models.interop import load_foreign

__all__ = ["load_model", "load_feature_model", "is_exported", "local_weights"]


def local_weights(path_or_name: str | os.PathLike) -> Path:
    """The local file for a path or a ReID name of the catalogue (``reidkit weights list``: fetched and verified
    once); a detector's name is refused (it goes to --detector)."""
    from reidkit.models.zoo import resolve_weights

    return Path(resolve_weights(path_or_name, kind="reid")).expanduser()


def is_exported(path: str | os.PathLike) -> bool:
    """True for an ONNX file (by suffix) or a TorchScript archive."""
    path = Path(path)
    return path.suffix.lower() == ".onnx" or (path.is_file() and is_torchscript(path))


def load_model(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    fmt: str | None = None,
    trust_checkpoint: bool = False,
    **foreign_options: Any,
) -> ReIDModel:
    """Rebuild a model from a checkpoint (model or training checkpoint); returned in eval mode.

    Other toolkits' checkpoints (no ``model_cfg``, or ``fmt`` named: fastreid, torchreid,
    strong_baseline, transreid, solider) go to ``reidkit.models.interop.load_foreign`` with
    ``foreign_options`` (e.g. ``input_size``). The file is read without running code
    (``reidkit.models.checkpoint``); ``trust_checkpoint`` allows full unpickling with a warning.
    ``model.info`` (a ``ModelInfo``) carries the facts, the weights' sha256 included.
    """
    path = local_weights(path)
    ckpt = read_checkpoint(path, "cpu" if fmt is not None else device, trust=trust_checkpoint)
    if not isinstance(ckpt, (Mapping, torch.nn.Module)):
        raise ReIDError(f"checkpoint: {path} does not hold a checkpoint dict (got {type(ckpt).__name__})")
    if fmt is not None or not isinstance(ckpt, Mapping) or "model_cfg" not in ckpt:
        model = load_foreign(ckpt, fmt=fmt, device=device, origin=os.fspath(path), **foreign_options)
    else:
        if foreign_options:
            raise ReIDError(
                f"checkpoint {path}: options {', '.join(sorted(foreign_options))} apply to other "
                "toolkits' checkpoints only (this is a reidkit checkpoint)"
            )
        model = model_from_checkpoint(ckpt, os.fspath(path)).to(device)
    model.sha256 = file_sha256(path)
    model.path = str(path.resolve())
    # load_foreign's builders are typed Any; they build a ReIDModel (its docstring)
    return cast(ReIDModel, model.eval())


def load_feature_model(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    fmt: str | None = None,
    trust_checkpoint: bool = False,
    threads: int | None = None,
    **foreign_options: Any,
) -> Any:
    """A feature model for a path: the ONNX runner (.onnx), the TorchScript runner, or a checkpoint (eval).

    Checkpoints of other toolkits load too (format detected from the keys, or named by ``fmt``).
    A TorchScript program loads only with ``trust_checkpoint`` (it runs code from the file).
    """
    path = local_weights(path)
    if is_exported(path):
        if fmt is not None:
            raise OptionError(
                "fmt",
                f"{path} is an exported model ({'ONNX' if path.suffix.lower() == '.onnx' else 'TorchScript'}), "
                "not another toolkit's checkpoint; drop --from",
                value=fmt,
            )
        return open_exported(path, threads=threads, trust=trust_checkpoint)
    return load_model(path, device=device, fmt=fmt, trust_checkpoint=trust_checkpoint, **foreign_options)
