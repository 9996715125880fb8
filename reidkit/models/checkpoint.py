"""Checkpoint files as a leaf: read (no code runs), save (atomic), sha256, TorchScript sniffing.

Unpickling is code execution: a pickle names globals (``module.name``) and calls them. So every
checkpoint is read with ``torch.load(weights_only=True)``, whose unpickler resolves only tensors
and plain containers, plus an explicit allowlist of the few other types that real checkpoints
hold (numpy scalars/arrays: torchreid stores ``rank1`` as ``numpy.float64``; ``argparse.Namespace``
and ``collections.OrderedDict``; yacs / fvcore / detectron2 / fast-reid ``CfgNode`` configs, read
as a plain ``collections.OrderedDict``: their keys and values, none of their code). A plain pickle (a ``.pkl`` state of
numpy arrays, as fast-reid and detectron2 converted weights come) goes through a restricted
``pickle.Unpickler`` whose ``find_class`` resolves that same allowlist and nothing else (the
"Restricting Globals" recipe of the Python ``pickle`` documentation). Anything else is refused with
one :class:`ReIDError` naming the file and the global. ``trust=True`` (CLI ``--trust-checkpoint``;
or :func:`trusted`) falls back to full unpickling only for a file that needs it, after a warning
on stderr that this can run arbitrary code from that file.

A TorchScript archive is a program, not data: ``torch.jit.load`` runs the scripted code it holds
(a scripted ``__setstate__`` runs at load and can write any file). :func:`require_program_trust`
is the one gate every TorchScript load passes: without trust it raises one ReIDError naming the
file and the flag, with trust it warns. Reading an archive's reidkit metadata
(:func:`torchscript_extra`) opens the zip and runs nothing.

This module imports only torch, the standard library, ``reidkit.errors`` and ``reidkit.utils``.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import sys
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from reidkit.errors import ReIDError

__all__ = [
    "read_checkpoint",
    "save_checkpoint",
    "file_sha256",
    "is_torchscript",
    "trusted",
    "trust_active",
    "allowed_globals",
    "require_program_trust",
    "torchscript_extra",
    "UNSAFE_WARNING",
    "PROGRAM_WARNING",
]

UNSAFE_WARNING = (
    "warning: --trust-checkpoint: loading {path} with full unpickling because it holds "
    "{what}; this can run arbitrary code from that file. Only do this for files you trust."
)

PROGRAM_WARNING = (
    "warning: --trust-checkpoint: loading the TorchScript program {path}; TorchScript runs the "
    "code stored in the file. Only do this for files you trust."
)

_lock = threading.Lock()
_trust_depth = 0


# Config classes of other toolkits, by the name the pickle stores. They are dict subclasses; they
# come back as ``collections.OrderedDict`` (the stand-in: the keys and values, no behaviour; torch's
# unpickler fills only exact dict types, and an OrderedDict also takes the node's attribute state).
_CONFIG_NAMES = (
    "yacs.config.CfgNode",
    "fvcore.common.config.CfgNode",
    "detectron2.config.config.CfgNode",
    "fastreid.config.config.CfgNode",
)


def _numpy_globals() -> dict[str, Any]:
    """numpy's array/scalar reconstruction under the names numpy 1 and 2 pickle them."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        return {}
    core = getattr(np, "_core", None) or np.core
    out: dict[str, Any] = {"numpy.ndarray": np.ndarray, "numpy.dtype": np.dtype}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[f"{mod}._reconstruct"] = core.multiarray._reconstruct
        out[f"{mod}.scalar"] = core.multiarray.scalar
    dtypes = getattr(np, "dtypes", None)
    for name in dir(dtypes) if dtypes is not None else ():
        obj = getattr(dtypes, name)
        if isinstance(obj, type) and name.endswith("DType"):
            out[f"numpy.dtypes.{name}"] = obj
    return out


def allowed_globals() -> dict[str, Any]:
    """The allowlist beyond torch's own: stored name -> the object it resolves to."""
    import argparse
    import collections

    out = _numpy_globals()
    out["collections.OrderedDict"] = collections.OrderedDict
    out["argparse.Namespace"] = argparse.Namespace
    for name in _CONFIG_NAMES:
        out[name] = collections.OrderedDict
    # Plain-pickle containers (torch's unpickler has them built in).
    for name, obj in (
        ("builtins.set", set),
        ("builtins.frozenset", frozenset),
        ("builtins.slice", slice),
        ("builtins.complex", complex),
        ("builtins.bytearray", bytearray),
    ):
        out[name] = obj
    # Protocol-2 pickles store bytes as _codecs.encode(text, "latin1") (torch allows it by default).
    import _codecs

    out["_codecs.encode"] = _codecs.encode
    return out


def _torch_safe_globals() -> list[Any]:
    # (object, "stored.name") tuples: torch resolves the stored name to our object.
    return [(obj, name) for name, obj in allowed_globals().items()]


@contextmanager
def trusted(enabled: bool = True) -> Iterator[None]:
    """Within the block, checkpoints that need more than the allowlist are fully unpickled (with a warning)."""
    global _trust_depth
    if not enabled:
        yield
        return
    with _lock:
        _trust_depth += 1
    try:
        yield
    finally:
        with _lock:
            _trust_depth -= 1


def trust_active() -> bool:
    """True inside a :func:`trusted` block (the CLI's ``--trust-checkpoint`` for the duration of a verb)."""
    return _trust_depth > 0


def require_program_trust(path: str | os.PathLike, trust: bool = False, warn: bool = True) -> None:
    """Raise one ReIDError unless loading the TorchScript program ``path`` was allowed (``trust`` or
    :func:`trusted`); warn on stderr when it was (``warn``: not for a file this process just wrote)."""
    if not (trust or trust_active()):
        raise ReIDError(
            f"checkpoint {path}: refused to load a TorchScript program: loading it runs the code stored in the "
            "file. Use an ONNX export or a checkpoint instead; if you trust this file, pass --trust-checkpoint "
            "(Python: trust_checkpoint=True)"
        )
    if warn:
        print(PROGRAM_WARNING.format(path=path), file=sys.stderr, flush=True)


def torchscript_extra(path: str | os.PathLike, name: str) -> str | None:
    """The text of extra file ``name`` inside TorchScript archive ``path`` (None if absent), read from the
    zip without loading (running) the program."""
    try:
        with zipfile.ZipFile(path) as zf:
            for member in zf.namelist():
                parts = member.split("/")
                if len(parts) == 3 and parts[1] == "extra" and parts[2] == name:
                    info = zf.getinfo(member)
                    if info.file_size > 1 << 20:
                        raise ReIDError(f"{path}: extra file {name} is larger than 1 MiB")
                    return zf.read(member).decode("utf-8")
    except (OSError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise ReIDError(f"cannot read TorchScript file {path}: {exc}") from None
    return None


class _RestrictedUnpickler(pickle.Unpickler):
    """A pickle reader that resolves only the allowlisted globals (plain ``.pkl`` checkpoints)."""

    def find_class(self, module: str, name: str) -> Any:
        full = f"{module}.{name}"
        obj = allowed_globals().get(full)
        if obj is None:
            raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {full} is not allowed")
        return obj

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids (torch storages outside torch.save's zip) are not allowed")


def _disallowed_global(exc: BaseException, path: Path) -> str:
    """The global a refused load named (torch's message, or the file's own list of globals)."""
    text = str(exc)
    m = re.search(r"GLOBAL ([\w.]+)", text)
    if m:
        return m.group(1)
    m = re.search(
        r"(?:unrecognized function|new object for nn.Parameter or classes allowlisted via "
        r"`add_safe_globals` but got) <?(?:class |built-in function )?'?([\w.]+)",
        text,
    )
    if m:
        return m.group(1)
    try:
        from torch.serialization import get_unsafe_globals_in_checkpoint

        names = [n for n in get_unsafe_globals_in_checkpoint(str(path)) if n not in allowed_globals()]
        if names:
            return ", ".join(sorted(names))
    except Exception:  # noqa: BLE001 - only a better message was at stake
        pass
    return text.strip().splitlines()[-1] if text.strip() else type(exc).__name__


def _refusal(path: Path, what: str) -> ReIDError:
    return ReIDError(
        f"checkpoint {path}: refused to unpickle the global {what}: loading it could run code from the "
        "file. reidkit reads tensors, plain containers, numpy arrays and config objects only; if you "
        "trust this file, pass --trust-checkpoint (Python: trust_checkpoint=True)"
    )


def _warn_unsafe(path: Path, what: str) -> None:
    print(UNSAFE_WARNING.format(path=path, what=f"the global {what}"), file=sys.stderr, flush=True)


def _plain_pickle(path: Path) -> tuple[bool, Any]:
    """(True, content) for a plain pickle; (False, None) for torch's legacy format (magic number first)."""
    with open(path, "rb") as fh:
        first = _RestrictedUnpickler(fh, encoding="latin1").load()
    legacy_magic = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
    if isinstance(first, int) and not isinstance(first, bool) and first == legacy_magic:
        return False, None
    return True, first


def _full_load(path: Path, device: Any, plain: bool) -> Any:
    if plain:
        with open(path, "rb") as fh:
            return pickle.load(fh, encoding="latin1")  # noqa: S301 - the user passed --trust-checkpoint
    return torch.load(path, map_location=device, weights_only=False)  # noqa: S614 - trusted by the user


def read_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu", trust: bool = False) -> Any:
    """Load a checkpoint file without running code from it (see the module docstring).

    Missing, unreadable and corrupt files, TorchScript archives, and files that need a global
    outside the allowlist raise one ReIDError naming the file (and the global). ``trust`` (or an
    enclosing :func:`trusted`) loads such a file fully after a warning on stderr.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ReIDError(f"checkpoint: file not found: {path}")
    if is_torchscript(path):
        raise ReIDError(
            f"checkpoint: {path} is a TorchScript export, not a training checkpoint; it serves "
            "features (reidkit extract --weights, reidkit.inference.FeatureExtractor) but cannot "
            "be rebuilt into a trainable model"
        )
    trust = trust or trust_active()
    plain = False
    try:
        if not zipfile.is_zipfile(path):
            plain, content = _plain_pickle(path)
            if plain:
                return _to_device(content, device)
        with torch.serialization.safe_globals(_torch_safe_globals()):
            return torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as exc:
        what = _disallowed_global(exc, path)
        if not any(k in str(exc) for k in ("Weights only load failed", "Unsupported global")):
            raise ReIDError(f"checkpoint: cannot read {path}: corrupt or not a torch checkpoint ({exc})") from None
        if not trust:
            raise _refusal(path, what) from None
        _warn_unsafe(path, what)
    except ReIDError:
        raise
    except Exception as exc:  # noqa: BLE001 - any decoding failure is a corrupt file to the user
        raise ReIDError(f"checkpoint: cannot read {path}: corrupt or not a torch checkpoint ({exc})") from None
    try:
        return _full_load(path, device, plain)
    except Exception as exc:  # noqa: BLE001
        raise ReIDError(f"checkpoint: cannot read {path} even with --trust-checkpoint ({exc})") from None


def _to_device(obj: Any, device: Any) -> Any:
    """Tensors inside a plain pickle moved like torch.load's map_location would (numpy stays numpy)."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, dict) and type(obj) is dict:
        return {k: _to_device(v, device) for k, v in obj.items()}
    return obj


def save_checkpoint(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` atomically (unique temp beside ``path``, fsync, rename); returns the path."""
    from reidkit.utils.io import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as fh:
        torch.save(obj, fh)
    return path


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise ReIDError(f"cannot read {path}: {exc}") from exc
    return digest.hexdigest()


def is_torchscript(path: str | os.PathLike) -> bool:
    """True when ``path`` is a TorchScript archive (a zip with a ``code/`` folder), not a torch.save file."""
    try:
        if not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as zf:
            return any("/code/" in n or n.endswith("/constants.pkl") for n in zf.namelist())
    except OSError:
        return False
