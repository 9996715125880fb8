"""The weights cache folder of reidkit.models.zoo, opened once per call: every file in it (cached weights,
their ``<file>.sha256`` records, part files, the per-entry lock) is reached relative to that descriptor with
O_NOFOLLOW, so a symlink planted at a name (or a folder swapped for a link) is never followed. Here: the
folder's descriptor, hashing and reading/writing the hash records, removing dead processes' part files, and
the entry lock."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import stat
import sys
from pathlib import Path

from reidkit.errors import ReIDError
from reidkit.models.zoo_catalogue import _HEX64, HOME_ENV, WeightsEntry
from reidkit.models.zoo_transfer import CHUNK, write_all
from reidkit.utils.locks import PidLock

_NOFOLLOW = os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def _lstat(name: str, dfd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _kind(st: os.stat_result) -> str:
    return (
        "a symbolic link"
        if stat.S_ISLNK(st.st_mode)
        else "a folder"
        if stat.S_ISDIR(st.st_mode)
        else "not a regular file"
    )


def _require_regular(st: os.stat_result, path: Path, entry: WeightsEntry) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise ReIDError(
            f"weights {entry.name}: {path} is {_kind(st)}; the cache uses only regular files that "
            f"it downloaded (or that you pinned): remove it (to use another file, pass its path)"
        )


def _open_home(home: Path, create: bool) -> int | None:
    """A descriptor of the cache folder (None when it does not exist and `create` is false)."""
    try:
        if create:
            home.mkdir(parents=True, exist_ok=True)
        st = os.lstat(home)
    except FileNotFoundError:
        if not create:
            return None
        raise ReIDError(f"${HOME_ENV}: cannot create the weights folder {home}") from None
    except (OSError, ValueError) as exc:
        raise ReIDError(
            f"${HOME_ENV}: cannot create the weights folder {home} ({getattr(exc, 'strerror', None) or exc})"
        ) from None
    if not stat.S_ISDIR(st.st_mode):
        raise ReIDError(
            f"${HOME_ENV}: the weights folder {home} is {_kind(st)}; it must be a real folder "
            f"(to keep weights elsewhere, set ${HOME_ENV} to a folder there)"
        )
    try:
        return os.open(home, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW)
    except OSError as exc:
        raise ReIDError(f"${HOME_ENV}: cannot open the weights folder {home} ({exc.strerror or exc})") from None


def _hash_fd(fd: int) -> str:
    h, off = hashlib.sha256(), 0
    while True:
        block = os.pread(fd, CHUNK, off)
        if not block:
            return h.hexdigest()
        h.update(block)
        off += len(block)


def _hash_cached(name: str, dfd: int, path: Path, entry: WeightsEntry) -> str:
    """sha256 of the regular file `name` in the cache folder (a link or special file is refused)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW, dir_fd=dfd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ReIDError(
                f"weights {entry.name}: {path} is a symbolic link; the cache uses only regular files: remove it"
            ) from None
        raise ReIDError(f"weights {entry.name}: cannot read {path} ({exc.strerror or exc})") from None
    try:
        _require_regular(os.fstat(fd), path, entry)
        return _hash_fd(fd)
    finally:
        os.close(fd)


def _read_record(dfd: int, home: Path, entry: WeightsEntry) -> str | None:
    """The hash recorded in ``<file>.sha256`` (None when there is none)."""
    name = entry.filename + ".sha256"
    path = home / name
    st = _lstat(name, dfd)
    if st is None:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise ReIDError(f"weights {entry.name}: the hash record {path} is {_kind(st)}; remove it")
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW, dir_fd=dfd)
        try:
            text = os.read(fd, 4096).decode("utf-8", "replace")
        finally:
            os.close(fd)
    except OSError as exc:
        raise ReIDError(f"weights {entry.name}: cannot read the hash record {path} ({exc.strerror or exc})") from None
    words = text.split()
    if not words or not _HEX64.match(words[0]):
        raise ReIDError(
            f"weights {entry.name}: the hash record {path} holds no sha256; it was damaged. Check "
            f"{home / entry.filename} and pin it (`reidkit weights get {entry.name} --sha256 HASH`), "
            f"or delete both to download it again"
        )
    return words[0].lower()


def _disk_error(entry: WeightsEntry, home: Path, exc: OSError) -> ReIDError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ReIDError(
            f"weights {entry.name}: no space left in {home} ({exc.strerror or exc}); the partial "
            f"download was removed. Free some space (the file is up to {entry.size_cap} bytes) or "
            f"set ${HOME_ENV} to a folder on a disk with room, then run it again"
        )
    return ReIDError(
        f"weights {entry.name}: cannot write in the weights folder {home} ({exc.strerror or exc}); "
        "the partial download was removed"
    )


def _write_record(dfd: int, home: Path, entry: WeightsEntry, digest: str) -> None:
    """Write ``<file>.sha256`` (the sha256sum format): unique temp created O_EXCL | O_NOFOLLOW, fsync, rename."""
    name = entry.filename + ".sha256"
    tmp = f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o666, dir_fd=dfd)
    except OSError as exc:
        raise _disk_error(entry, home, exc) from None
    try:
        try:
            write_all(fd, f"{digest}  {entry.filename}\n".encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except OSError as exc:
        _unlink(tmp, dfd)
        raise _disk_error(entry, home, exc) from None
    except BaseException:
        _unlink(tmp, dfd)
        raise


def _unlink(name: str, dfd: int) -> None:
    try:
        os.unlink(name, dir_fd=dfd)
    except OSError:
        pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def _clean_stale(dfd: int, entry: WeightsEntry) -> list[str]:
    """Remove the part files (and record temps) of `entry` whose process is dead; run under the entry lock."""
    f = re.escape(entry.filename)
    pattern = re.compile(rf"^(?:{f}|\.{f}\.sha256)\.(\d+)\.[0-9a-f]{{8}}\.(?:part|tmp)$")
    removed = []
    for name in os.listdir(dfd):
        m = pattern.match(name)
        legacy = name == entry.filename + ".part"  # reidkit < 0.x: one shared part name, no owner
        if legacy or (m and (int(m.group(1)) == os.getpid() or not _pid_alive(int(m.group(1))))):
            _unlink(name, dfd)
            removed.append(name)
    return removed


class _EntryLock(PidLock):
    """The project's PidLock on ``.<file>.lock`` in the cache folder, opened relative to the folder with
    O_NOFOLLOW (a link planted at the lock's name is refused, never truncated through)."""

    def __init__(self, dfd: int, home: Path, entry: WeightsEntry) -> None:
        super().__init__(
            home / f".{entry.filename}.lock",
            timeout=None,
            on_wait=lambda msg: print(
                f"weights {entry.name}: another process is fetching it; {msg}", file=sys.stderr, flush=True
            ),
        )
        self._dfd, self._name, self._entry = dfd, f".{entry.filename}.lock", entry

    def open_error(self, exc: OSError) -> ReIDError:
        if exc.errno == errno.ELOOP:
            return ReIDError(f"weights {self._entry.name}: the lock {self.path} is a symbolic link; remove it")
        return super().open_error(exc)

    def open_fd(self) -> int:
        """Relative to the cache folder's descriptor (the folder itself was checked as a real folder)."""
        return os.open(self._name, self.FLAGS, 0o666, dir_fd=self._dfd)
