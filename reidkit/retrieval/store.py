"""What a gallery stores, whatever its backend: entry fields and kinds, the checks on entry dicts and state values,
and the file stats an entry records so the service serves only the files indexed.

The backends (the protocol, the scheme registry, the embedded folder, Milvus) are in
:mod:`reidkit.retrieval.backends`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

from reidkit.errors import ReIDError
from reidkit.utils.io import json_default

__all__ = [
    "ENTRY_FIELDS",
    "KINDS",
    "normalize_entries",
    "encode_state",
    "FILE_STAT_KEY",
    "THUMB_STATS_KEY",
    "file_stat",
    "parse_file_stat",
    "iter_chunks",
]

# Every stored field of an entry, in the order search results list them.
ENTRY_FIELDS = (
    "id",
    "path",
    "camid",
    "camera",
    "kind",
    "tracklet",
    "frame_start",
    "frame_end",
    "t_start",
    "t_end",
    "meta",
)
KINDS = ("image", "tracklet")
_OPTIONAL = {
    "camid": int,
    "camera": str,
    "tracklet": str,
    "frame_start": int,
    "frame_end": int,
    "t_start": float,
    "t_end": float,
    "width": int,
    "height": int,
}


# ----------------------------------------------------------------------------- entries


def normalize_entries(entries: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Check and normalise entry dicts (the docs/interfaces.md contract); ReIDError names the bad entry and key."""
    allowed = set(_OPTIONAL) | {"path", "kind", "meta", "frame"}
    out = []
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise ReIDError(f"entries[{i}]: expected a dict, got {type(e).__name__}")
        unknown = sorted(set(e) - allowed)
        if unknown:
            raise ReIDError(f"entries[{i}]: unknown key {unknown[0]!r}; expected some of {', '.join(sorted(allowed))}")
        path = e.get("path")
        if not isinstance(path, (str, os.PathLike)) or not str(path):
            raise ReIDError(f"entries[{i}].path: expected a non-empty string, got {path!r}")
        kind = e.get("kind", "image")
        if kind not in KINDS:
            raise ReIDError(f"entries[{i}].kind: expected one of {', '.join(KINDS)}, got {kind!r}")
        row: dict[str, Any] = {"path": os.fspath(path), "kind": kind}
        for key, typ in _OPTIONAL.items():
            v = e.get(key)
            if v is None:
                row[key] = None
                continue
            try:
                row[key] = typ(v) if typ is not int else int(v)
            except (TypeError, ValueError):
                raise ReIDError(f"entries[{i}].{key}: expected {typ.__name__}, got {v!r}") from None
        if e.get("frame") is not None:  # a single frame is a span of one
            row["frame_start"] = row["frame_start"] if row["frame_start"] is not None else int(e["frame"])
            row["frame_end"] = row["frame_end"] if row["frame_end"] is not None else int(e["frame"])
        meta = e.get("meta")
        try:
            row["meta"] = None if meta is None else json.dumps(meta, default=json_default)
        except (TypeError, ValueError) as exc:
            raise ReIDError(f"entries[{i}].meta: not JSON-serialisable ({exc})") from None
        out.append(row)
    return out


def encode_state(state: dict[str, Any] | None) -> dict[str, str | None]:
    """State values as JSON text (None deletes the key); ReIDError for non-string keys or non-JSON values."""
    if state is None:
        return {}
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise ReIDError("add_entries: state must be a dict with string keys")
    try:
        return {k: None if v is None else json.dumps(v, default=json_default) for k, v in state.items()}
    except (TypeError, ValueError) as exc:
        raise ReIDError(f"add_entries: state is not JSON-serialisable ({exc})") from None


# ----------------------------------------------------------------------------- recorded file stats

# An entry's meta records the size and modification time of the file(s) it was made from, so the service
# serves a file only while it is still the one indexed: "file_stat" for an image entry's own path,
# "thumb_stats" {name: stat} for a tracklet's thumbnails. mtime_ns is kept as a string (a JSON number may
# pass through a float64 in a backend, and nanoseconds since 1970 need 61 bits).
FILE_STAT_KEY = "file_stat"
THUMB_STATS_KEY = "thumb_stats"


def file_stat(path: str | os.PathLike) -> dict[str, Any] | None:
    """{"size", "mtime_ns"} of the regular file at `path` (not following a symlink); None when there is none."""
    import stat as _stat

    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not _stat.S_ISREG(st.st_mode):
        return None
    return {"size": int(st.st_size), "mtime_ns": str(st.st_mtime_ns)}


def parse_file_stat(value: Any) -> tuple[int, int]:
    """(size, mtime_ns) of a recorded stat; ValueError when it is not one (a caller refuses the file then)."""
    if not isinstance(value, dict):
        raise ValueError(f"expected {{size, mtime_ns}}, got {type(value).__name__}")
    size, mtime = value.get("size"), value.get("mtime_ns")
    if isinstance(size, bool) or not isinstance(size, int) or not isinstance(mtime, (int, str)):
        raise ValueError(f"expected an integer size and mtime_ns, got {value!r}")
    return int(size), int(mtime)


def iter_chunks(n: int, size: int) -> Iterator[slice]:
    """Slices of range(n), `size` at a time."""
    for s in range(0, n, size):
        yield slice(s, min(n, s + size))
