"""The weights catalogue: published ReID checkpoints and person detectors by name (zoo.yaml), validated.

Every entry names its source, licence, format (``fmt``), file name in the cache and where it is fetched
from; ReID entries (``kind: reid``, the default) give their architecture, training set and published
scores, detector entries (``kind: detector``) their ONNX family (``arch``: yolox, yolov5, yolov8,
rtdetr) and input size. reidkit.models.zoo fetches, verifies and caches them.

Environment: ``REIDKIT_HOME`` (cache root), ``REIDKIT_ZOO`` (another catalogue YAML; every entry is
validated: filename, url, gdrive, sha256, max_bytes), ``REIDKIT_ZOO_URL_OVERRIDE`` (an http(s) base URL
serving every catalogue file by its ``filename``).
"""

from __future__ import annotations

import difflib
import os
import re
import stat
import urllib.parse
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from reidkit.errors import ReIDError

__all__ = [
    "WeightsEntry",
    "catalogue",
    "weights_home",
    "weights_path",
    "is_cached",
    "detector_entry",
    "detector_names",
    "DEFAULT_MAX_BYTES",
    "KINDS",
]

HOME_ENV = "REIDKIT_HOME"
ZOO_ENV = "REIDKIT_ZOO"
URL_ENV = "REIDKIT_ZOO_URL_OVERRIDE"
DEFAULT_MAX_BYTES = 2 << 30  # 2 GiB: the largest published ReID checkpoint is ~0.4 GB
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_GDRIVE_ID = re.compile(r"^[A-Za-z0-9_-]+$")
_RESERVED_SUFFIXES = (".sha256", ".lock", ".part", ".tmp")
KINDS = ("reid", "detector")


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
    max_bytes: int | None = None
    published: dict[str, dict[str, float]] = field(default_factory=dict)
    invalid_eval: tuple[str, ...] = ()
    distance: str | None = None
    notes: str | None = None
    kind: str = "reid"  # reid | detector

    @property
    def size_cap(self) -> int:
        """The most bytes a download of this entry may have (``max_bytes``, default 2 GiB)."""
        return self.max_bytes or DEFAULT_MAX_BYTES

    def download_url(self) -> str | None:
        """Where the file is fetched from ($REIDKIT_ZOO_URL_OVERRIDE + filename when set)."""
        base = os.environ.get(URL_ENV)
        if base:
            if _url_problem(base):
                raise ReIDError(f"${URL_ENV}: {_url_problem(base)}, got {base!r}")
            return base.rstrip("/") + "/" + urllib.parse.quote(self.filename)
        if self.url:
            return self.url
        if self.gdrive:
            return f"https://drive.google.com/uc?id={self.gdrive}"
        return None


def weights_home() -> Path:
    """The cache folder: $REIDKIT_HOME/weights, default ~/.cache/reidkit/weights."""
    root = os.environ.get(HOME_ENV)
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "reidkit") / "weights"


# ---------------------------------------------------------------------------------------------------
# the catalogue


def _url_problem(url: Any) -> str | None:
    """Why `url` is not an http(s) URL, or None."""
    if not isinstance(url, str) or not url:
        return "expected an http:// or https:// URL"
    if any(ord(c) < 33 or ord(c) == 127 for c in url):
        return "the URL holds a space or a control character"
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return f"expected an http:// or https:// URL (scheme {parts.scheme or 'none'!r} is not fetched)"
    return None


def _filename_problem(name: Any) -> str | None:
    """Why `name` is not a plain file name the cache may hold, or None."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty file name"
    if "\0" in name:
        return "holds a NUL byte"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "holds a control character"
    if "/" in name or "\\" in name or ".." in name or name.startswith("."):
        return "must be a plain file name (no '/', '\\', '..' or leading '.')"
    if name.endswith(_RESERVED_SUFFIXES):
        return f"must not end in {', '.join(_RESERVED_SUFFIXES)} (the cache's own files)"
    if len(name.encode("utf-8", "surrogateescape")) > 200:
        return "is longer than 200 bytes"
    return None


def _validated(row: dict, where: str) -> WeightsEntry:
    """One catalogue row as a WeightsEntry; a bad value raises one ReIDError naming the entry and key."""
    name = row["name"]

    def bad(key: str, what: str) -> ReIDError:
        return ReIDError(f"weights catalogue {where}: entry {name!r}: {key}: {what}")

    if not name or "\0" in name or "/" in name or "\\" in name:
        raise bad("name", "expected a non-empty name without '/', '\\' or NUL")
    for key in ("source", "licence", "arch", "fmt", "train", "filename"):
        if key not in row:
            raise bad(key, "missing")
    why = _filename_problem(row["filename"])
    if why:
        raise bad("filename", f"{why} (got {row['filename']!r})")
    if not isinstance(row["fmt"], str) or not row["fmt"]:
        raise bad("fmt", f"expected a checkpoint format name (got {row['fmt']!r})")
    if row.get("url") is not None and _url_problem(row["url"]):
        raise bad("url", f"{_url_problem(row['url'])} (got {row['url']!r})")
    gdrive = row.get("gdrive")
    if gdrive is not None and not (isinstance(gdrive, str) and _GDRIVE_ID.match(gdrive)):
        raise bad("gdrive", f"expected a Google Drive file id (letters, digits, '-', '_'; got {gdrive!r})")
    sha = row.get("sha256")
    if sha is not None and not (isinstance(sha, str) and _HEX64.match(sha)):
        raise bad("sha256", f"expected 64 hex digits (got {sha!r})")
    if row.get("kind", "reid") not in KINDS:
        raise bad("kind", f"expected one of {', '.join(KINDS)} (got {row.get('kind')!r})")
    cap = row.get("max_bytes")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap <= 0):
        raise bad("max_bytes", f"expected a positive whole number of bytes (got {cap!r})")
    try:
        size = row["input_size"]
        return WeightsEntry(
            **{
                **row,
                "input_size": tuple(int(v) for v in size),
                "sha256": sha.lower() if sha else None,
                "invalid_eval": tuple(row.get("invalid_eval") or ()),
                "published": dict(row.get("published") or {}),
            }
        )
    except KeyError as exc:
        raise bad(str(exc.args[0]), "missing") from None
    except (TypeError, ValueError) as exc:
        raise ReIDError(f"weights catalogue {where}: entry {name!r}: {exc}") from None


def catalogue() -> dict[str, WeightsEntry]:
    """The catalogue by name: $REIDKIT_ZOO if set, else the packaged zoo.yaml (every entry validated)."""
    import yaml

    path = os.environ.get(ZOO_ENV)
    where = path or "reidkit/models/zoo.yaml"
    try:
        text = (
            Path(path).read_text(encoding="utf-8")
            if path
            else resources.files("reidkit.models").joinpath("zoo.yaml").read_text(encoding="utf-8")
        )
        data = yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ReIDError(f"{ZOO_ENV}: cannot read the weights catalogue {where} ({exc})") from None
    rows = data.get("weights") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise ReIDError(f"weights catalogue {where}: expected a top-level 'weights:' list")
    known = set(WeightsEntry.__dataclass_fields__)
    out: dict[str, WeightsEntry] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not isinstance(row.get("name"), str):
            raise ReIDError(f"weights catalogue {where}: entry {i} has no name")
        extra = set(row) - known
        if extra:
            raise ReIDError(
                f"weights catalogue {where}: entry {row['name']!r}: unknown field(s) "
                f"{', '.join(sorted(map(str, extra)))}"
            )
        if row["name"] in out:
            raise ReIDError(f"weights catalogue {where}: entry {row['name']!r}: name appears twice")
        out[row["name"]] = _validated(row, where)
    return out


def _entry(name: str) -> WeightsEntry:
    cat = catalogue()
    if name in cat:
        return cat[name]
    close = difflib.get_close_matches(name, list(cat), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
    raise ReIDError(
        f"weights {name!r} is neither a file nor a catalogue name{hint}; "
        f"`reidkit weights list` shows the {len(cat)} names"
    )


def weights_path(name: str) -> Path:
    """Where catalogue weights `name` are (or will be) cached."""
    return weights_home() / _entry(name).filename


def is_cached(entry: WeightsEntry) -> bool:
    """True when the cache holds a regular file (not a link) for `entry` (its hash is not checked here)."""
    try:
        return stat.S_ISREG(os.lstat(weights_home() / entry.filename).st_mode)
    except (OSError, ValueError):
        return False


def _is_path(text: str) -> bool:
    """A path rather than a name: it holds a path separator (``./NAME``, ``dir/x``, ``~/x``)."""
    return "/" in text or os.sep in text or bool(os.altsep and os.altsep in text)


def detector_entry(name: str) -> WeightsEntry | None:
    """The catalogue's detector entry called `name` (None: no such detector; a bad catalogue still raises)."""
    if not name or "/" in name or os.sep in name:
        return None
    entry = catalogue().get(name)
    return entry if entry is not None and entry.kind == "detector" else None


def detector_names() -> list[str]:
    """The names of the catalogue's detectors."""
    return [e.name for e in catalogue().values() if e.kind == "detector"]
