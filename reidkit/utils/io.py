"""File helpers used everywhere: one atomic write, one JSON writer, one list of image extensions.

Atomic write: the data goes to a uniquely named temp file in the target's folder
(``.<name>.<pid>.<random>.tmp``), is flushed and fsynced, then renamed over the target, so a
reader sees the old file or the new one whole, never a half-written one; two writers never share
a temp name; the temp is removed when the write fails. A process killed mid-write can still leave
its temp behind: :func:`clean_stale_temps` removes those (callers run it when they open a folder).
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from reidkit.errors import ReIDError

__all__ = [
    "IMAGE_EXTENSIONS", "atomic_write", "clean_stale_temps", "ensure_dir", "is_image_file", "list_images",
    "write_json", "json_default",
]

# Everything Pillow decodes that people store crops in (PGM/PPM/PBM/GIF included: a folder of
# them must not load as "empty").
IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".pbm", ".pnm", ".gif",
})

_TEMP_SUFFIX = ".tmp"


def is_image_file(name: str | os.PathLike) -> bool:
    """True for a visible file name with an image extension (case-insensitive)."""
    base = os.path.basename(os.fspath(name))
    return not base.startswith(".") and os.path.splitext(base)[1].lower() in IMAGE_EXTENSIONS


def list_images(root: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Image files under ``root``, sorted by path; a clear error when ``root`` is not a folder."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ReIDError(f"{root}: not a folder of images")
    if recursive:
        out = []
        for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            out.extend(Path(dirpath) / f for f in filenames if is_image_file(f))
        return sorted(out)
    return sorted(p for p in root.iterdir() if p.is_file() and is_image_file(p.name))


def ensure_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Create ``path`` (and parents) or raise one ReIDError naming it and why (a file in the way, no permission)."""
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReIDError(f"{what} {path}: cannot create it ({exc.strerror or exc})") from None
    return path


def _temp_for(path: Path) -> tuple[int, str]:
    return tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=_TEMP_SUFFIX, dir=path.parent)


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a unique temp file beside ``path``; on success fsync and rename it over ``path``.

    ``with atomic_write(p, "w") as f: f.write(text)``. The temp is removed if the body raises.
    A target folder that cannot be written gives one :class:`ReIDError` naming it.
    """
    path = Path(path)
    if "w" not in mode:
        raise ValueError("atomic_write opens files for writing ('w' or 'wb')")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _temp_for(path)
    except OSError as exc:
        raise ReIDError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb") as fh:
        fh.write(data)


def json_default(obj: Any) -> Any:
    """JSON encoding of numpy scalars/arrays, tensors and paths."""
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | os.PathLike, data: Any, indent: int = 2) -> None:
    """Write ``data`` as JSON atomically (unique temp name: concurrent writers do not collide)."""
    text = json.dumps(data, indent=indent, default=json_default)
    with atomic_write(path, "w") as fh:
        fh.write(text)


def clean_stale_temps(folder: str | os.PathLike, min_age_s: float = 0.0) -> list[Path]:
    """Remove temp files left by killed atomic writes in ``folder`` (``.<name>.<pid>.*.tmp``).

    A temp whose writer process is still alive is kept (it may be mid-write), as is one younger
    than ``min_age_s`` seconds. Returns the removed paths.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    now = time.time()
    for p in folder.iterdir():
        name = p.name
        if not (name.startswith(".") and _TEMP_SUFFIX in name and p.is_file()):
            continue
        pid = _writer_pid(name)
        if pid is not None and pid != os.getpid() and pid_alive(pid):
            continue
        if pid == os.getpid():
            continue
        try:
            if now - p.stat().st_mtime < min_age_s:
                continue
            p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def _writer_pid(name: str) -> int | None:
    for part in name.split("."):
        if part.isdigit() and len(part) <= 7:
            return int(part)
    return None


def pid_alive(pid: int) -> bool:
    """True when a process with this pid exists (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
