"""File helpers used everywhere: one atomic write, one JSON writer, one list of image extensions.

Atomic write: the data goes to a uniquely named temp file in the target's folder
(``.<name>.<pid>.<random>.tmp``), is flushed and fsynced, then renamed over the target, so a
reader sees the old file or the new one whole, never a half-written one; two writers never share
a temp name; the temp is removed when the write fails. A process killed mid-write can still leave
its temp behind: :func:`clean_stale_temps` removes those (callers run it when they open a folder).
Work that needs a folder of its own (the int8 quantiser's copies of a model) gets one named the same
way, ``.<name>.<pid>.<random>.tmp`` (:func:`owned_temp_dir`): removed when the work ends, and by
``clean_stale_temps(folder, dirs=True)`` once its owner is dead when a kill left it.

What an output path may be (:func:`output_target`, used by every writer):
- missing or a regular file: written there (a new file gets ``0o666 & ~umask``, like any other
  tool; mkstemp alone would make it 0600; a replaced file keeps its permission bits);
- a symlink: the link is kept and its resolved target is written atomically (a dangling link
  creates its target), so ``--out latest.npz -> runs/7/f.npz`` updates ``runs/7/f.npz``;
- a folder, FIFO, socket or device node: refused with one :class:`ReIDError` naming it and
  nothing is written (renaming a regular file over ``/dev/full`` or a FIFO would replace it).

Folder walking (:func:`list_images`): symlinked folders are followed at most once (by
``(st_dev, st_ino)``), so a link to ``..`` cannot make the walk exponential; symlink loops,
broken links and names that are not valid UTF-8 are skipped and counted, never silently.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from reidkit.errors import OptionError, ReIDError

__all__ = [
    "IMAGE_EXTENSIONS",
    "atomic_path",
    "atomic_write",
    "atomic_write_bytes",
    "clean_stale_temps",
    "ensure_dir",
    "image_paths",
    "is_image_file",
    "list_images",
    "output_target",
    "owned_temp_dir",
    "write_json",
    "write_text",
    "json_default",
]

log = logging.getLogger(__name__)

# Everything Pillow decodes that people store crops in (PGM/PPM/PBM/GIF included: a folder of
# them must not load as "empty").
IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".png",
        ".bmp",
        ".webp",
        ".tif",
        ".tiff",
        ".pgm",
        ".ppm",
        ".pbm",
        ".pnm",
        ".gif",
    }
)

_TEMP_SUFFIX = ".tmp"


def is_image_file(name: str | os.PathLike) -> bool:
    """True for a visible file name with an image extension (case-insensitive)."""
    base = os.path.basename(os.fspath(name))
    return not base.startswith(".") and os.path.splitext(base)[1].lower() in IMAGE_EXTENSIONS


def _skip(skipped: list | None, path: str, why: str) -> None:
    if skipped is not None:
        skipped.append((path, why))


def list_images(
    root: str | os.PathLike, recursive: bool = True, skipped: list[tuple[str, str]] | None = None
) -> list[Path]:
    """Image files under ``root``, sorted by path; a clear error when ``root`` is not a folder.

    Symlinked folders are followed once each (a second link to a visited folder, or a link to an
    ancestor, is skipped); symlink loops, broken links and names that are not valid UTF-8 are
    skipped. Each skip is appended to ``skipped`` as ``(path, reason)`` when a list is given, and
    the total is logged as a warning either way.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ReIDError(f"{root}: not a folder of images")
    found: list[tuple[str, Path]] = []  # (path, Path)
    notes: list[tuple[str, str]] = []
    visited: set[tuple[int, int]] = set()
    try:
        st = root.stat()
        visited.add((st.st_dev, st.st_ino))
    except OSError as exc:
        raise ReIDError(f"{root}: cannot read the folder ({exc.strerror or exc})") from None
    stack = [str(root)]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as exc:
            _skip(notes, folder, f"unreadable folder ({exc.strerror or exc})")
            continue
        for entry in entries:
            name = entry.name
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:  # undecodable bytes arrive as surrogates (PEP 383)
                shown = entry.path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                _skip(notes, shown, "name is not UTF-8")
                continue
            if name.startswith("."):
                continue
            try:
                is_dir = entry.is_dir()  # follows links
                is_file = not is_dir and entry.is_file()
                if entry.is_symlink() and not (is_dir or is_file):
                    os.stat(entry.path)  # raises for a loop or a broken link
            except OSError as exc:
                why = "symlink loop" if exc.errno == errno.ELOOP else "broken link"
                _skip(notes, entry.path, why)
                continue
            if is_dir:
                if not recursive:
                    continue
                try:
                    st = entry.stat()
                except OSError:
                    _skip(notes, entry.path, "broken link")
                    continue
                key = (st.st_dev, st.st_ino)
                if key in visited:
                    if entry.is_symlink():
                        _skip(notes, entry.path, "link to a folder already listed")
                    continue
                visited.add(key)
                stack.append(entry.path)
            elif is_file and is_image_file(name):
                found.append((entry.path, Path(entry.path)))
            elif not is_file and is_image_file(name):
                _skip(notes, entry.path, "not a regular file")
    if notes:
        log.warning(
            "%s: skipped %d entr%s (symlink loops, broken links, non-UTF-8 names), e.g. %s (%s)",
            root,
            len(notes),
            "y" if len(notes) == 1 else "ies",
            notes[0][0],
            notes[0][1],
        )
        if skipped is not None:
            skipped.extend(notes)
    return sorted(p for _, p in found)


def image_paths(folder: str | os.PathLike, what: str = "images folder") -> list[str]:
    """Absolute real paths of the images under ``folder`` (``list_images``, recursive), each file once, sorted.

    A ``folder`` that is not a folder, or holds no image, is one ReIDError that starts with ``what``.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ReIDError(f"{what} {root} is not a folder")
    paths = sorted({str(p.resolve()) for p in list_images(root)})
    if not paths:
        raise ReIDError(f"{what} {root}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under it")
    return paths


def ensure_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Create ``path`` (and parents) or raise one OptionError naming ``what`` (the parameter: ``out``) and the
    path and why (a file in the way, no permission)."""
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OptionError(what, f"{path}: cannot create it ({exc.strerror or exc})") from None
    return path


_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def output_target(path: str | os.PathLike, what: str | None = None) -> Path:
    """The regular file an output named ``path`` is written to (see the module docstring's policy).

    A symlink resolves to its target; a folder, FIFO, socket or device raises one ReIDError
    (prefixed with ``what``, e.g. the flag ``--out``, when given).
    """
    path = Path(path).expanduser()
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    try:
        st = os.stat(target)
    except (FileNotFoundError, NotADirectoryError):
        return target  # a missing folder on the way is the caller's mkdir to report
    except OSError as exc:
        raise ReIDError(f"{what + ': ' if what else ''}cannot write {path}: {exc.strerror or exc}") from None
    if stat.S_ISREG(st.st_mode):
        return target
    kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
    shown = f"{path} (-> {target})" if target != path else str(path)
    raise ReIDError(
        f"{what + ': ' if what else ''}cannot write {shown}: it is {kind}; outputs are written only as regular files "
        f"(nothing was written)"
    )


def _umask() -> int:
    # /proc gives it without the set-and-restore race of os.umask (other threads may create files).
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def _final_mode(target: Path) -> int:
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except OSError:
        return 0o666 & ~_umask()


def _temp_for(path: Path) -> tuple[int, str]:
    return tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=_TEMP_SUFFIX, dir=path.parent)


def _open_temp(path: str | os.PathLike) -> tuple[Path, int, str]:
    target = output_target(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _temp_for(target)
    except OSError as exc:
        raise ReIDError(f"cannot write {path}: {exc.strerror or exc}") from None
    return target, fd, tmp


def _commit(tmp: str, target: Path, path: str | os.PathLike) -> None:
    os.chmod(tmp, _final_mode(target))
    output_target(target)  # something other than a file may have appeared meanwhile
    try:
        os.replace(tmp, target)
    except OSError as exc:
        raise ReIDError(f"cannot write {path}: {exc.strerror or exc}") from None


def _discard(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except OSError:
        pass


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a unique temp file beside ``path``; on success fsync and rename it over ``path``.

    ``with atomic_write(p, "w") as f: f.write(text)``. The temp is removed if the body raises.
    A target folder that cannot be written, or a ``path`` that is a folder, FIFO, socket or device,
    gives one :class:`ReIDError` naming it; a symlink ``path`` writes its target (module docstring).
    """
    if "w" not in mode:
        raise ValueError("atomic_write opens files for writing ('w' or 'wb')")
    target, fd, tmp = _open_temp(path)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        _commit(tmp, target, path)
    except BaseException:
        _discard(tmp)
        raise


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A unique temp file name beside ``path`` for writers that need a file name (ONNX, TorchScript,
    video encoders); when the body returns it is renamed over ``path`` (same policy as :func:`atomic_write`)."""
    target, fd, tmp = _open_temp(path)
    os.close(fd)
    try:
        yield Path(tmp)
        _commit(tmp, target, path)
    except BaseException:
        _discard(tmp)
        raise


def link_or_copy(src: str | os.PathLike, path: str | os.PathLike) -> bool:
    """Make ``path`` hold the bytes of the file ``src``, atomically: a hard link (one copy on disk) where the
    file system allows it, else a copy. True when linked. ``src`` written later by rename keeps ``path``."""
    with atomic_path(path) as tmp:
        os.unlink(tmp)
        try:
            os.link(src, tmp)
            return True
        except OSError:
            shutil.copyfile(src, tmp)
            return False


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb") as fh:
        fh.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path, "w") as fh:
        fh.write(text)


def json_default(obj: Any) -> Any:
    """JSON encoding of numpy scalars/arrays, tensors and paths."""
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(path: str | os.PathLike, data: Any, indent: int | None = 2) -> None:
    """Write ``data`` as JSON atomically (unique temp name: concurrent writers do not collide)."""
    text = json.dumps(data, indent=indent, default=json_default)
    with atomic_write(path, "w") as fh:
        fh.write(text)


@contextmanager
def owned_temp_dir(folder: str | os.PathLike, name: str) -> Iterator[Path]:
    """A new private folder ``<folder>/.<name>.<pid>.<random>.tmp`` for the body's work; removed with all it holds
    when the body ends (returns or raises). One killed inside leaves it: ``clean_stale_temps(folder, dirs=True)``
    removes it once the pid in its name is no longer alive."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        while True:
            work = folder / f".{name}.{os.getpid()}.{secrets.token_hex(4)}{_TEMP_SUFFIX}"
            try:
                work.mkdir()
                break
            except FileExistsError:
                continue
    except OSError as exc:
        raise ReIDError(f"cannot create a work folder in {folder}: {exc.strerror or exc}") from None
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def clean_stale_temps(folder: str | os.PathLike, min_age_s: float = 0.0, dirs: bool = False) -> list[Path]:
    """Remove temp files left by killed atomic writes in ``folder`` (``.<name>.<pid>.*.tmp``).

    A temp whose writer process is still alive is kept (it may be mid-write), as is one younger
    than ``min_age_s`` seconds. ``dirs``: work folders of :func:`owned_temp_dir` too (with what they
    hold). Returns the removed paths.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    now = time.time()
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for p in entries:
        name = p.name
        if not (name.startswith(".") and _TEMP_SUFFIX in name):
            continue
        is_dir = p.is_dir() and not p.is_symlink()
        if not (p.is_file() or (dirs and is_dir)):
            continue
        pid = _writer_pid(name)
        if pid == os.getpid() or (pid is not None and pid_alive(pid)) or (is_dir and pid is None):
            continue  # ours, or its writer may be mid-write (a folder without a pid is not one of ours)
        try:
            if now - p.stat().st_mtime < min_age_s:
                continue
            if is_dir:
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
        except OSError:
            pass
    return removed


def _writer_pid(name: str) -> int | None:
    # ".<name>.<pid>.<random>.tmp": the pid is the third part from the end (mkstemp's random part has no dot);
    # a name's own number (".metrics.2.json.<pid>...") must not be read as the pid
    parts = name.split(".")
    if len(parts) >= 4 and parts[-3].isdigit() and len(parts[-3]) <= 7:
        return int(parts[-3])
    for part in parts:
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
