"""Published ReID weights and detectors by name: a verified download cache nobody can poison.

The catalogue itself (zoo.yaml: entries, validation, names) is reidkit.models.zoo_catalogue; the
transfers (HTTP, Google Drive) are reidkit.models.zoo_transfer; this module fetches, verifies and caches.

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
import re
import secrets
import stat
import sys
import urllib.error
from pathlib import Path
from typing import Any

from reidkit.errors import OptionError, ReIDError
from reidkit.models.zoo_catalogue import (
    _HEX64,
    DEFAULT_MAX_BYTES,
    HOME_ENV,
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
    write_all,
)
from reidkit.utils.locks import PidLock

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

_NOFOLLOW = os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER (torch's pre-zip format)


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


# ---------------------------------------------------------------------------------------------------
# the cache folder, opened once per call: every file in it is reached relative to that descriptor
# with O_NOFOLLOW, so a symlink planted at a name (or a folder swapped for a link) is never followed.


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


def _offline(entry: WeightsEntry, url: str | None, target: Path, reason: str) -> ReIDError:
    where = f"from {url} " if url else ""
    return ReIDError(
        f"weights {entry.name}: cannot download {where}({reason}); download it yourself, put the "
        f"file at {target} and pin its hash: reidkit weights get {entry.name} --sha256 HASH"
    )


def _known_formats() -> list[str]:
    from reidkit.models.interop import FORMATS

    return ["reidkit", *FORMATS.names(), "onnx"]


def _check_onnx(path: Path) -> None:
    """Refuse a file that is not a self-contained ONNX model with an input and an output (parsed as data:
    nothing runs; tensors stored outside the file are refused, so a model never reads another file)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any protobuf failure means "not an ONNX model"
        raise ReIDError(f"it does not parse as an ONNX model ({type(exc).__name__})") from None
    graph = model.graph
    if not graph.input or not graph.output:
        raise ReIDError("it is an ONNX graph without an input or an output")
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in graph.initializer):
        raise ReIDError("its weights are stored in other files (external data); the cache holds single files")


def _load_strict(path: Path) -> Any:
    """Read a checkpoint with the safe reader's allowlist only: never full unpickling, whatever the caller's
    --trust-checkpoint says (a file enters the cache only if it loads without trust); TorchScript refused."""
    import pickle
    import zipfile

    import torch

    from reidkit.models.checkpoint import allowed_globals, is_torchscript

    if is_torchscript(path):
        raise ReIDError("it is a TorchScript program (a zip of code), not a training checkpoint")
    allowed = allowed_globals()

    class Restricted(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            obj = allowed.get(f"{module}.{name}")
            if obj is None:
                raise pickle.UnpicklingError(f"it needs the global {module}.{name}, which loading could run")
            return obj

        def persistent_load(self, pid: Any) -> Any:
            raise pickle.UnpicklingError("persistent ids outside torch.save's format")

    try:
        if not zipfile.is_zipfile(path):
            with open(path, "rb") as fh:
                first = Restricted(fh, encoding="latin1").load()
            if not (type(first) is int and first == _LEGACY_MAGIC):
                return first
        with torch.serialization.safe_globals([(obj, name) for name, obj in allowed.items()]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any decoding failure means "not a safe checkpoint"
        lines = str(exc).strip().splitlines()
        raise ReIDError(
            f"it does not load with the safe reader ({type(exc).__name__}: {lines[0][:300] if lines else ''})"
        ) from None


def _check_format(path: Path, entry: WeightsEntry, origin: str) -> None:
    """Refuse a file that does not load, without trust, as the catalogue's declared format."""
    from collections.abc import Mapping

    def refuse(why: str) -> ReIDError:
        return ReIDError(
            f"weights {entry.name}: {origin} is not a {entry.fmt} checkpoint: {why}; it was not "
            "cached and its hash was not recorded"
        )

    if entry.fmt == "onnx":
        try:
            return _check_onnx(path)
        except ReIDError as exc:
            raise refuse(str(exc)) from None
    try:
        obj = _load_strict(path)
    except ReIDError as exc:
        raise refuse(str(exc)) from None
    if not isinstance(obj, Mapping):
        raise refuse(f"it holds a {type(obj).__name__}, not a checkpoint dict")
    if entry.fmt == "reidkit":
        if "model_cfg" not in obj:
            raise refuse("it has no model_cfg (not a reidkit checkpoint)")
        return
    from reidkit.models.interop import FORMATS
    from reidkit.models.interop.common import unwrap_state

    try:
        state = unwrap_state(obj, origin)
    except ReIDError as exc:
        raise refuse(str(exc)) from None
    if not FORMATS.get(entry.fmt).detect(state):
        raise refuse("its tensor names are not that layout's")


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
