"""Published ReID weights and detectors by name: a verified download cache nobody can poison.

The catalogue itself (zoo.yaml: entries, validation, names) is reidkit.models.zoo_catalogue; the
transfers (HTTP, Google Drive) are reidkit.models.zoo_transfer; the cache folder's file operations are
reidkit.models.zoo_cache and the format check reidkit.models.zoo_verify; this module fetches, verifies and caches.

``resolve_weights(name_or_path, sha256=None) -> str`` returns a local file:

- a path (anything with a path separator: ``./NAME``, ``dir/x.pth``, ``/abs/x.pth``) is returned
  unchanged (with `sha256` given, its hash must match); so is an existing file whose name is not in
  the catalogue;
- a catalogue name resolves to the cache, ``$REIDKIT_HOME/weights`` (default ``~/.cache/reidkit/weights``),
  and only to it: a file of that name in the current folder is not used (one notice on stderr says
  to pass it as ``./NAME``). A cached file is used without network, after its hash is checked.

Integrity. The expected hash is `sha256` (a pin), else the catalogue's, else the one recorded in
``<file>.sha256`` when the file entered the cache (none of the source projects publishes checksums, so
trust is on first use and every later load is compared with it). A cached file whose record is missing
(deleted, or the file was put there by hand) is an error until the user pins it with `sha256`: a record
that disappears never means "pin whatever is there now". A mismatch is a ReIDError naming the file and
both hashes; nothing is loaded.

A download, under a per-entry lock (``.<file>.lock``, a :class:`~reidkit.utils.locks.PidLock`: a second
process waits, then finds the file), goes into ``<file>.<pid>.<random>.part`` created with
``O_CREAT | O_EXCL | O_NOFOLLOW`` relative to the cache folder opened with ``O_NOFOLLOW`` (the folder,
the cached file and its record must be a real folder and regular files: a symlink planted at any of
them is refused, its target untouched). The transfer is refused past the entry's ``max_bytes``
(default 2 GiB) and when it ends short of its Content-Length; then the file must load as the
catalogue's ``fmt`` with the safe reader (tensors and allowlisted containers only, never full
unpickling, even under ``--trust-checkpoint``; a TorchScript archive is refused; a detector's ``onnx``
must parse as a self-contained ONNX model, never run), and must match any
known hash. Only then is its hash recorded and the part renamed into place; on any failure (network,
disk full, size, format, hash) the part is removed and one ReIDError says why. Part files of dead
processes (pid in the name) are removed by the next download of that entry. Google Drive ids go
through ``gdown`` (``pip install "reidkit[zoo]"``), writing into the same part file.

Offline or behind a firewall: one ReIDError giving the URL and the exact path to put the file at.
A name that is neither a file nor in the catalogue: an error with the closest names.

Environment: ``REIDKIT_HOME`` (cache root), ``REIDKIT_ZOO`` (another catalogue YAML; every entry is
validated: filename, url, gdrive, sha256, max_bytes), ``REIDKIT_ZOO_URL_OVERRIDE`` (an http(s) base URL
serving every catalogue file by its ``filename``: a mirror inside a firewall, or the tests' loopback
server).
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import os
import secrets
import stat
import sys
import urllib.error
from pathlib import Path

from reidkit.errors import OptionError, ReIDError
from reidkit.models.zoo_catalogue import (
    _HEX64,
    DEFAULT_MAX_BYTES,
    URL_ENV,
    ZOO_ENV,
    WeightsEntry,
    _entry,
    _is_path,
    catalogue,
    detector_entry,
    detector_names,
    is_cached,
    weights_home,
    weights_path,
)
from reidkit.models.zoo_transfer import (
    CHUNK,
    PartWriter,
    Short,
    TooBig,
    WriteFailed,
    gdrive_download,
    http_download,
)
from reidkit.models.zoo_cache import (
    _NOFOLLOW,
    _clean_stale,
    _disk_error,
    _EntryLock,
    _hash_cached,
    _hash_fd,
    _kind,
    _lstat,
    _open_home,
    _read_record,
    _require_regular,
    _unlink,
    _write_record,
)
from reidkit.models.zoo_verify import _check_format, _known_formats

__all__ = [
    "WeightsEntry",
    "catalogue",
    "resolve_weights",
    "weights_home",
    "weights_path",
    "file_sha256",
    "is_cached",
    "DEFAULT_MAX_BYTES",
    "detector_entry",
    "detector_names",
]


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_pin(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    pin = sha256.strip().lower().removeprefix("sha256:")
    if not _HEX64.match(pin):
        raise OptionError("sha256", f"expected 64 hex digits, got {sha256!r}")
    return pin


def _mismatch(path: Path, expected: str, actual: str, why: str) -> ReIDError:
    return ReIDError(
        f"weights: {path} does not match its {why} sha256 (expected {expected}, got {actual}); "
        f"nothing was loaded. Delete the file to download it again, or pin the hash you trust "
        f"with --sha256"
    )


def _offline(entry: WeightsEntry, url: str | None, target: Path, reason: str) -> ReIDError:
    where = f"from {url} " if url else ""
    return ReIDError(
        f"weights {entry.name}: cannot download {where}({reason}); download it yourself, put the "
        f"file at {target} and pin its hash: reidkit weights get {entry.name} --sha256 HASH"
    )


def _expected(entry: WeightsEntry, pin: str | None, record: str | None) -> tuple[str | None, str]:
    if pin is not None:
        return pin, "pinned"
    if entry.sha256:
        return entry.sha256, "catalogue"
    if record is not None:
        return record, "recorded (first download)"
    return None, ""


def _use_cached(dfd: int, home: Path, entry: WeightsEntry, pin: str | None, locked: bool) -> bool | None:
    """Verify the cached file: True when it is good; False when there is none; None when a record must be
    written first (a file pinned by hand) and the lock is not held. Raises on a bad file."""
    target = home / entry.filename
    st = _lstat(entry.filename, dfd)
    record = _read_record(dfd, home, entry)
    if st is None:
        return False
    _require_regular(st, target, entry)
    if record is None and not entry.sha256 and pin is None:
        raise ReIDError(
            f"weights {entry.name}: {target} has no recorded sha256 ({target}.sha256 is missing): the record was "
            f"deleted, or the file was put there by hand. It is not re-pinned silently: if you trust this file, "
            f"pin it with `reidkit weights get {entry.name} --sha256 HASH` (sha256= in Python; `sha256sum` "
            f"prints HASH); otherwise delete {target} and it is downloaded again"
        )
    expected, why = _expected(entry, pin, record)
    actual = _hash_cached(entry.filename, dfd, target, entry)
    if expected is not None and actual != expected:
        raise _mismatch(target, expected, actual, why)
    if record is not None or entry.sha256:
        return True
    if not locked:
        return None
    _check_format(target, entry, str(target))  # a file pinned by hand: it must load before it is recorded
    if _hash_cached(entry.filename, dfd, target, entry) != actual:
        raise ReIDError(f"weights {entry.name}: {target} changed while it was checked; run it again")
    _write_record(dfd, home, entry, actual)
    return True


def _download(dfd: int, home: Path, entry: WeightsEntry, pin: str | None) -> None:
    """Fetch `entry` into a fresh part file, check it (size, length, format, hash), record, rename into place."""
    target = home / entry.filename
    url = entry.download_url()
    if url is None:
        raise ReIDError(
            f"weights {entry.name}: the catalogue has no public download for it; put the file at "
            f"{target} and pin its hash: reidkit weights get {entry.name} --sha256 HASH"
        )
    if entry.fmt not in _known_formats():
        raise ReIDError(
            f"weights catalogue: entry {entry.name!r}: fmt {entry.fmt!r} is not a known checkpoint "
            f"format ({', '.join(_known_formats())})"
        )
    expected, why = _expected(entry, pin, _read_record(dfd, home, entry))
    part = f"{entry.filename}.{os.getpid()}.{secrets.token_hex(4)}.part"
    try:
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o666, dir_fd=dfd)
    except FileExistsError:  # something was planted at a fresh random name: never write through it
        raise ReIDError(
            f"weights {entry.name}: {home / part} already exists; a part file is always a new file "
            "(nothing was written): remove it and run again"
        ) from None
    except OSError as exc:
        raise _disk_error(entry, home, exc) from None
    done = False
    try:
        out = PartWriter(fd, entry.size_cap)
        try:
            if entry.gdrive and not os.environ.get(URL_ENV) and not entry.url:
                gdrive_download(entry.gdrive, out)
            else:
                http_download(url, out, entry.name)
            out.check()
            os.fsync(fd)
        except TooBig as exc:
            said = "declares" if exc.declared else "sent more than"
            raise ReIDError(
                f"weights {entry.name}: {url} {said} {exc.size if exc.declared else entry.size_cap} "
                f"bytes, over the entry's max_bytes ({entry.size_cap}); refused, nothing kept. If the "
                f"file really is that large, raise max_bytes in a catalogue of your own (${ZOO_ENV})"
            ) from None
        except Short as exc:
            raise ReIDError(
                f"weights {entry.name}: the download from {url} stopped after {exc.got} of {exc.total} "
                "bytes (connection closed early); nothing kept, run it again"
            ) from None
        except WriteFailed as exc:
            raise _disk_error(entry, home, exc.exc) from None
        except urllib.error.HTTPError as exc:
            raise _offline(entry, url, target, f"HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):  # fsync
                raise _disk_error(entry, home, exc) from None
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            raise _offline(entry, url, target, str(reason)) from None
        actual = _hash_fd(fd)
        if expected is not None and actual != expected:
            if why.startswith("recorded"):
                raise ReIDError(
                    f"weights {entry.name}: the file downloaded from {url} has sha256 {actual}, not the "
                    f"{expected} recorded at its first download ({target}.sha256): the publisher "
                    f"changed it, or the download was altered; nothing kept. Delete {target}.sha256 "
                    "to accept the new file"
                )
            raise _mismatch(target, expected, actual, why)
        _check_format(home / part, entry, url)
        here = _lstat(part, dfd)
        if (
            here is None
            or (here.st_dev, here.st_ino) != (os.fstat(fd).st_dev, os.fstat(fd).st_ino)
            or _hash_fd(fd) != actual
        ):
            raise ReIDError(
                f"weights {entry.name}: the part file {home / part} was replaced or changed while it "
                "was checked; nothing kept"
            )
        now = _lstat(entry.filename, dfd)
        if now is not None:
            what = "a regular file" if stat.S_ISREG(now.st_mode) else _kind(now)
            raise ReIDError(
                f"weights {entry.name}: {target} appeared ({what}) while it was downloaded; nothing was "
                "replaced and the download was not kept: remove it and run again"
            )
        if not entry.sha256:
            _write_record(dfd, home, entry, actual)  # before the rename: a cached file always has its record
        os.replace(part, entry.filename, src_dir_fd=dfd, dst_dir_fd=dfd)
        done = True
    finally:
        os.close(fd)
        if not done:
            _unlink(part, dfd)
    try:
        os.fsync(dfd)
    except OSError:
        pass


def _cached(entry: WeightsEntry, pin: str | None) -> str:
    """The verified cached file of `entry`, downloaded first (under the entry's lock) when missing."""
    home = weights_home()
    dfd = _open_home(home, create=False)
    if dfd is not None:
        try:
            if _use_cached(dfd, home, entry, pin, locked=False):
                return str(home / entry.filename)
        finally:
            os.close(dfd)
    dfd = _open_home(home, create=True)
    assert dfd is not None  # create=True: a folder it cannot make or open is a ReIDError
    try:
        with _EntryLock(dfd, home, entry):
            if not _use_cached(dfd, home, entry, pin, locked=True):  # another process may have fetched it
                _clean_stale(dfd, entry)
                _download(dfd, home, entry, pin)
    finally:
        os.close(dfd)
    return str(home / entry.filename)


def resolve_weights(name_or_path: str | os.PathLike, sha256: str | None = None, kind: str | None = None) -> str:
    """A local file for a path or a catalogue name (downloaded and verified; see the module docstring);
    `kind` ("reid" | "detector"): a catalogue name of the other kind is refused."""
    pin = _check_pin(sha256)
    text = os.fspath(name_or_path)
    if not _is_path(text):
        entry = catalogue().get(text)
        if entry is not None and kind is not None and entry.kind != kind:
            use = "--detector" if entry.kind == "detector" else "--weights"
            raise ReIDError(
                f"{text!r} is a {entry.kind} entry of the weights catalogue, not {kind} weights; give it to {use}"
            )
        if entry is not None:
            if os.path.lexists(text):
                print(
                    f"notice: weights {text!r} is a catalogue name, so the verified cached file is used, not "
                    f"the file {text!r} in the current folder; to use that file, pass it as a path: ./{text}",
                    file=sys.stderr,
                    flush=True,
                )
            return _cached(entry, pin)
    if os.path.exists(text):
        if pin is not None and os.path.isfile(text):
            actual = file_sha256(text)
            if actual != pin:
                raise _mismatch(Path(text), pin, actual, "pinned")
        return text
    if _is_path(text) or Path(text).suffix:
        return text  # a missing file: the caller's own "not a file" error names it
    _entry(text)  # raises: not a file, not a name (with the closest names)
    raise AssertionError("unreachable")
