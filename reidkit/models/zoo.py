"""Published ReID weights by name: a catalogue (zoo.yaml) and a verified download cache.

``resolve_weights(name_or_path, sha256=None) -> str`` returns a local file:

- an existing path is returned unchanged (with `sha256` given, its hash must match);
- a catalogue name is looked up in ``$REIDKIT_HOME/weights`` (default ``~/.cache/reidkit/weights``).
  A file already there is used without any network access, after its integrity check. Otherwise it
  is downloaded into ``<file>.part`` (an interrupted download resumes from the bytes already there
  with an HTTP ``Range`` request), checked, and renamed into place; Google Drive ids go through
  ``gdown`` (``pip install "reidkit[zoo]"``).
- Integrity: the expected hash is `sha256` (a pin), else the catalogue's, else the one recorded in
  ``<file>.sha256`` when the file was first downloaded (none of the source projects publishes
  checksums, so trust is on first use and every later load is compared with it). A mismatch is a
  ReIDError naming the file, the expected and the actual hash; nothing is loaded.
- Offline or behind a firewall: one ReIDError giving the URL and the exact path to put the file at.
- A name that is neither a file nor in the catalogue: an error with the closest names.

Environment: ``REIDKIT_HOME`` (cache root), ``REIDKIT_ZOO`` (another catalogue YAML),
``REIDKIT_ZOO_URL_OVERRIDE`` (a base URL serving every catalogue file by its ``filename``: a mirror
inside a firewall, or the tests' loopback server).
"""
from __future__ import annotations

import difflib
import hashlib
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from reidkit.errors import OptionError, ReIDError

__all__ = ["WeightsEntry", "catalogue", "resolve_weights", "weights_home", "weights_path", "file_sha256"]

HOME_ENV = "REIDKIT_HOME"
ZOO_ENV = "REIDKIT_ZOO"
URL_ENV = "REIDKIT_ZOO_URL_OVERRIDE"
_CHUNK = 1 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class WeightsEntry:
    """One published checkpoint (see zoo.yaml for the meaning of each field)."""

    name: str
    source: str
    licence: str
    arch: str
    fmt: str
    train: str
    input_size: tuple[int, int]
    filename: str
    url: str | None = None
    gdrive: str | None = None
    sha256: str | None = None
    published: dict[str, dict[str, float]] = field(default_factory=dict)
    invalid_eval: tuple[str, ...] = ()
    distance: str | None = None
    notes: str | None = None

    def download_url(self) -> str | None:
        """Where the file is fetched from ($REIDKIT_ZOO_URL_OVERRIDE + filename when set)."""
        base = os.environ.get(URL_ENV)
        if base:
            return base.rstrip("/") + "/" + self.filename
        if self.url:
            return self.url
        if self.gdrive:
            return f"https://drive.google.com/uc?id={self.gdrive}"
        return None


def weights_home() -> Path:
    """The cache folder: $REIDKIT_HOME/weights, default ~/.cache/reidkit/weights."""
    root = os.environ.get(HOME_ENV)
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "reidkit") / "weights"


def catalogue() -> dict[str, WeightsEntry]:
    """The catalogue by name: $REIDKIT_ZOO if set, else the packaged zoo.yaml."""
    import yaml

    path = os.environ.get(ZOO_ENV)
    where = path or "reidkit/models/zoo.yaml"
    try:
        text = Path(path).read_text(encoding="utf-8") if path else \
            resources.files("reidkit.models").joinpath("zoo.yaml").read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except (OSError, yaml.YAMLError) as exc:
        raise ReIDError(f"{ZOO_ENV}: cannot read the weights catalogue {where} ({exc})") from None
    rows = data.get("weights") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise ReIDError(f"weights catalogue {where}: expected a top-level 'weights:' list")
    known = {f for f in WeightsEntry.__dataclass_fields__}
    out: dict[str, WeightsEntry] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("name"), str):
            raise ReIDError(f"weights catalogue {where}: entry {i} has no name")
        extra = set(row) - known
        if extra:
            raise ReIDError(f"weights catalogue {where}: {row['name']}: unknown field(s) {', '.join(sorted(extra))}")
        try:
            entry = WeightsEntry(**{**row, "input_size": tuple(int(v) for v in row["input_size"]),
                                    "invalid_eval": tuple(row.get("invalid_eval") or ()),
                                    "published": dict(row.get("published") or {})})
        except (KeyError, TypeError, ValueError) as exc:
            raise ReIDError(f"weights catalogue {where}: {row['name']}: {exc}") from None
        if "/" in entry.filename or entry.filename.startswith("."):
            raise ReIDError(f"weights catalogue {where}: {entry.name}: filename must be a plain file name")
        if entry.sha256 is not None and not _HEX64.match(entry.sha256):
            raise ReIDError(f"weights catalogue {where}: {entry.name}: sha256 must be 64 lowercase hex digits")
        out[entry.name] = entry
    return out


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _entry(name: str) -> WeightsEntry:
    cat = catalogue()
    if name in cat:
        return cat[name]
    close = difflib.get_close_matches(name, list(cat), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    raise ReIDError(f"weights {name!r} is neither a file nor a catalogue name{hint}; "
                    f"`reidkit weights list` shows the {len(cat)} names")


def weights_path(name: str) -> Path:
    """Where catalogue weights `name` are (or will be) cached."""
    return weights_home() / _entry(name).filename


def _looks_like_path(text: str) -> bool:
    return os.sep in text or "/" in text or bool(Path(text).suffix)


def _check_pin(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    pin = sha256.strip().lower().removeprefix("sha256:")
    if not _HEX64.match(pin):
        raise OptionError("sha256", f"expected 64 hex digits, got {sha256!r}")
    return pin


def _mismatch(path: Path, expected: str, actual: str, why: str) -> ReIDError:
    return ReIDError(f"weights: {path} does not match its {why} sha256 (expected {expected}, got {actual}); "
                     f"nothing was loaded. Delete the file to download it again, or pin the hash you trust "
                     f"with --sha256")


def _verify(path: Path, entry: WeightsEntry, pin: str | None) -> None:
    """Compare `path` with the pinned, catalogue or recorded hash; record it when none is known yet."""
    record = path.with_name(path.name + ".sha256")
    expected, why = pin, "pinned"
    if expected is None and entry.sha256:
        expected, why = entry.sha256, "catalogue"
    if expected is None and record.is_file():
        expected, why = record.read_text(encoding="utf-8").split()[0].strip().lower(), "recorded (first download)"
    actual = file_sha256(path)
    if expected is not None and actual != expected:
        raise _mismatch(path, expected, actual, why)
    if not record.is_file() and not entry.sha256:
        _record(path, actual)


def _record(path: Path, digest: str) -> None:
    """Write `<file>.sha256` (the sha256sum format) beside `path`."""
    from reidkit.utils.io import atomic_write

    with atomic_write(path.with_name(path.name + ".sha256"), "w") as f:
        f.write(f"{digest}  {path.name}\n")


def _offline(entry: WeightsEntry, url: str | None, target: Path, reason: str) -> ReIDError:
    where = f"from {url} " if url else ""
    return ReIDError(f"weights {entry.name}: cannot download {where}({reason}); download it yourself "
                     f"and put the file at {target}")


def _http_download(url: str, part: Path, name: str) -> None:
    """Fetch `url` into `part`, resuming from the bytes already there (HTTP Range), with a progress bar."""
    from tqdm import tqdm

    have = part.stat().st_size if part.is_file() else 0
    req = urllib.request.Request(url, headers={"User-Agent": "reidkit", **({"Range": f"bytes={have}-"} if have else {})})
    try:
        resp = urllib.request.urlopen(req, timeout=30)  # noqa: S310 - catalogue or user-set URL
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the part already holds the whole file
            return
        raise
    with resp:
        if have and resp.status != 206:  # the server ignored the Range: start again
            have = 0
        total = resp.headers.get("Content-Length")
        total = (int(total) + have) if total and total.isdigit() else None
        with open(part, "ab" if have else "wb") as f, \
                tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=name, leave=False,
                     disable=None) as bar:
            for chunk in iter(lambda: resp.read1(_CHUNK), b""):  # what has arrived: progress, and a part that grows
                f.write(chunk)
                bar.update(len(chunk))
            f.flush()
            os.fsync(f.fileno())
    if total is not None and part.stat().st_size != total:
        raise OSError(f"connection closed after {part.stat().st_size} of {total} bytes")


def _gdrive_download(file_id: str, part: Path) -> None:
    try:
        import gdown
    except ImportError:
        raise ReIDError('weights on Google Drive need gdown: pip install "reidkit[zoo]" (or pip install gdown)') from None
    out = gdown.download(id=file_id, output=str(part), quiet=False, resume=True)
    if not out or not part.is_file():
        raise OSError("gdown could not fetch the file (quota, permission, or no network)")


def resolve_weights(name_or_path: str | os.PathLike, sha256: str | None = None) -> str:
    """A local file for a path or a catalogue name (downloaded and verified; see the module docstring)."""
    pin = _check_pin(sha256)
    text = os.fspath(name_or_path)
    if Path(text).exists():
        if pin is not None and Path(text).is_file():
            actual = file_sha256(text)
            if actual != pin:
                raise _mismatch(Path(text), pin, actual, "pinned")
        return text
    if _looks_like_path(text) and text not in catalogue():
        return text  # a missing file: the caller's own "not a file" error names it
    entry = _entry(text)
    home = weights_home()
    target = home / entry.filename
    if target.is_file():
        _verify(target, entry, pin)
        return str(target)
    url = entry.download_url()
    if url is None:
        raise ReIDError(f"weights {entry.name}: the catalogue has no public download for it; "
                        f"put the file at {target}")
    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReIDError(f"${HOME_ENV}: cannot create the weights folder {home} ({exc.strerror or exc})") from None
    part = target.with_name(target.name + ".part")
    try:
        if entry.gdrive and not os.environ.get(URL_ENV) and not entry.url:
            _gdrive_download(entry.gdrive, part)
        else:
            _http_download(url, part, entry.name)
    except urllib.error.HTTPError as exc:
        raise _offline(entry, url, target, f"HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
        raise _offline(entry, url, target, str(reason)) from None
    actual = file_sha256(part)
    expected = pin or entry.sha256
    if expected is not None and actual != expected:
        part.unlink(missing_ok=True)  # a wrong download is never kept, resumed or renamed into place
        raise _mismatch(target, expected, actual, "pinned" if pin else "catalogue")
    os.replace(part, target)
    if not entry.sha256:
        _record(target, actual)
    return str(target)
