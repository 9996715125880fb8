"""The gallery storage seam: what :class:`reidkit.retrieval.gallery.Gallery` needs from a backend.

A backend stores entries (images or tracklets: a vector plus metadata), key -> JSON state (e.g.
video-ingestion progress) and the identity of the model that made the vectors. It offers

- writes of a batch of entries, vectors and state in one step (:meth:`GalleryStore.write`), and
  deletes by id / tracklet / camera / path (:meth:`GalleryStore.delete`);
- a snapshot for reading (:meth:`GalleryStore.snapshot`): search with filters on camera, kind and
  time, lookups of stored fields and vectors;
- a change key (:meth:`GalleryStore.stored_key`) a service can poll cheaply, and
- check / repair.

Two backends, chosen by the ``--db`` string (:func:`open_store`):

- a folder: :mod:`reidkit.retrieval.store_sqlite`, the embedded default (SQLite generations +
  faiss cache; every write is one transaction, readers see whole generations);
- ``milvus:<uri>``: :mod:`reidkit.retrieval.store_milvus` (pymilvus ``MilvusClient``: a local
  ``*.db`` file runs Milvus Lite embedded, ``http://host:19530`` a Milvus server or cluster);
  entry ids derive from content, so writes are idempotent upserts.
"""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from reidkit.errors import ReIDError
from reidkit.utils.io import json_default

if TYPE_CHECKING:
    from reidkit.inference import ModelIdentity

__all__ = [
    "ENTRY_FIELDS", "KINDS", "CRASH_ENV", "CRASH_POINTS", "crash_point", "MILVUS_PREFIX", "DEFAULT_COLLECTION", "SearchFilter", "StoreSnapshot",
    "GalleryStore", "StoreBuilder", "normalize_entries", "encode_state", "is_milvus", "describe_db",
    "store_class", "open_store", "store_exists", "FILE_STAT_KEY", "THUMB_STATS_KEY", "file_stat", "parse_file_stat",
]

# Every stored field of an entry, in the order search results list them.
ENTRY_FIELDS = ("id", "path", "camid", "camera", "kind", "tracklet", "frame_start", "frame_end",
                "t_start", "t_end", "meta")
KINDS = ("image", "tracklet")
MILVUS_PREFIX = "milvus:"
DEFAULT_COLLECTION = "reidkit"
CRASH_ENV = "REIDKIT_TEST_CRASH_AT"
CRASH_POINTS = (
    "add_embedded",          # add: features computed, writer lock not yet taken
    "add_locked",            # add: holding the writer lock, transaction not begun
    "before_commit",         # any write: rows inserted, generation bumped, not committed
    "after_commit",          # any write: committed, faiss cache of the new generation not written
    "cache_temp_written",    # the new cache is in its temp file, not renamed into place
    "build_embedded",        # build: new database filled in the temp folder, not indexed
    "build_before_publish",  # build: temp folder complete, folders not exchanged
    "build_after_publish",   # build: folders exchanged, old folder not yet removed
)
_OPTIONAL = {"camid": int, "camera": str, "tracklet": str, "frame_start": int, "frame_end": int,
             "t_start": float, "t_end": float, "width": int, "height": int}


@dataclass(frozen=True)
class SearchFilter:
    """Which entries a search may return: all conditions hold (None: no condition).

    `t_min` / `t_max` keep entries whose time span [t_start, t_end] overlaps [t_min, t_max]
    (entries without times are dropped when a time bound is given).
    """

    exclude_camid: int | None = None
    exclude_camera: str | None = None
    camera: str | None = None
    kind: str | None = None
    t_min: float | None = None
    t_max: float | None = None

    def active(self) -> bool:
        """True when some condition is set."""
        return any(v is not None for v in (self.exclude_camid, self.exclude_camera, self.camera, self.kind,
                                          self.t_min, self.t_max))

    def check(self) -> SearchFilter:
        """ReIDError naming the bad condition; returns self."""
        if self.kind is not None and self.kind not in KINDS:
            raise ReIDError(f"kind: expected one of {', '.join(KINDS)}, got {self.kind!r}")
        for name, v in (("t_min", self.t_min), ("t_max", self.t_max)):
            if v is not None and not np.isfinite(float(v)):
                raise ReIDError(f"{name}: must be a finite number of seconds, got {v!r}")
        return self


@runtime_checkable
class StoreSnapshot(Protocol):
    """One consistent view of a gallery for reading (see each backend for what "consistent" means)."""

    identity: ModelIdentity
    info: dict[str, str]
    uid: str
    generation: int
    count: int
    n_images: int
    n_tracklets: int
    index: Any

    @property
    def key(self) -> tuple[str, int]: ...

    def search(self, feats: np.ndarray, k: int, filters: Sequence[SearchFilter],
               nprobe: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query row: (ids int64, scores float32), best first, at most k, all passing its filter."""

    def rows(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """Stored fields (ENTRY_FIELDS + width, height) of the given ids that exist."""

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """Stored vectors of the given ids, in that order (ReIDError for an unknown id)."""

    def entries(self, kind: str | None = None, tracklet: str | None = None,
                camera: str | None = None) -> list[dict[str, Any]]:
        """Stored entries matching all the given filters, in id order."""

    def image_paths(self) -> set[str]:
        """Paths of the image entries (what `Gallery.add` skips)."""

    def close(self) -> None: ...


@runtime_checkable
class StoreBuilder(Protocol):
    """A new gallery being filled: `start`, `append` batches, then `publish` (or `abort`)."""

    def start(self, identity: ModelIdentity, info: dict[str, str]) -> None: ...

    def append(self, rows: list[dict[str, Any]], vectors: np.ndarray) -> None: ...

    def publish(self, corrupt: int = 0, existing_error: str = "") -> GalleryStore:
        """Make the new gallery visible (replacing the old one under `overwrite`); returns its store."""

    def abort(self) -> None: ...


@runtime_checkable
class GalleryStore(Protocol):
    """A gallery backend (see the module docstring)."""

    location: str  # the --db string that names it
    files_dir: Path  # a local folder for side files (video thumbnails)
    readonly: bool

    @classmethod
    def open(cls, db: str | os.PathLike, collection: str | None = None, readonly: bool = False) -> GalleryStore: ...

    @classmethod
    def exists(cls, db: str | os.PathLike, collection: str | None = None) -> bool: ...

    @classmethod
    def builder(cls, location: str | os.PathLike, collection: str | None = None, overwrite: bool = False,
                settings: dict[str, Any] | None = None, lock_timeout: float | None = None,
                progress: Callable[[str], None] | None = None) -> StoreBuilder:
        """A new gallery (settings: index_kind, nlist, pq_m); refuses an existing one unless `overwrite`."""

    def snapshot(self) -> StoreSnapshot: ...

    def stored_key(self) -> tuple[str, int] | None:
        """(uid, generation) now stored, read cheaply; None when it cannot be read now."""

    def check_writable(self) -> None:
        """ReIDError when this store was opened read-only."""

    def settling(self, key: tuple[str, int]) -> bool:
        """True while a writer that published `key` is still finishing (a follower may wait a little)."""

    def write(self, base: StoreSnapshot, identity: ModelIdentity, rows: list[dict[str, Any]], vectors: np.ndarray,
              state: dict[str, str | None] | None = None, skip_existing_images: bool = False, corrupt: int = 0,
              lock_timeout: float | None = None, progress: Callable[[str], None] | None = None
              ) -> tuple[list[int], StoreSnapshot | None]:
        """Write rows + vectors + state in one step; (ids written, the new snapshot or None when nothing changed)."""

    def delete(self, base: StoreSnapshot, identity: ModelIdentity, ids: Sequence[int] | None = None,
               tracklet: str | None = None, camera: str | None = None, path: str | None = None,
               lock_timeout: float | None = None) -> tuple[int, StoreSnapshot | None]:
        """Delete the entries matching ALL given criteria; (count, new snapshot or None)."""

    def get_state(self, key: str) -> Any:
        """The latest stored JSON value under `key`, or None."""

    def check(self) -> dict[str, Any]:
        """Consistency report; ReIDError naming the problem when inconsistent."""


# ----------------------------------------------------------------------------- test hook


def crash_point(name: str) -> None:
    """Test hook: exit at once (as a SIGKILL would leave things) when $REIDKIT_TEST_CRASH_AT names this point."""
    if os.environ.get(CRASH_ENV) == name:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(137)


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


# ----------------------------------------------------------------------------- choosing a backend


def is_milvus(db: str | os.PathLike) -> bool:
    """True when `db` names a Milvus gallery (``milvus:<uri>``)."""
    return isinstance(db, str) and db.startswith(MILVUS_PREFIX)


def describe_db(db: str | os.PathLike, collection: str | None = None) -> str:
    """How messages name the gallery: the folder, or ``milvus:<uri> (collection NAME)``."""
    if is_milvus(db):
        return f"{db} (collection {collection or DEFAULT_COLLECTION})"
    return str(Path(db).expanduser().absolute())


def store_class(db: str | os.PathLike) -> Any:
    """The backend class for `db` (imports pymilvus only for a Milvus gallery)."""
    if is_milvus(db):
        from reidkit.retrieval.store_milvus import MilvusStore

        return MilvusStore
    from reidkit.retrieval.store_sqlite import SQLiteStore

    return SQLiteStore


def open_store(db: str | os.PathLike, collection: str | None = None, readonly: bool = False) -> GalleryStore:
    """Open the gallery `db` names: ``milvus:<uri>`` (with `collection`, default "reidkit") or a folder."""
    cls = store_class(db)
    return cls.open(db, collection=collection, readonly=readonly)


def store_exists(db: str | os.PathLike, collection: str | None = None) -> bool:
    """True when `db` already holds a gallery (of this or an older reidkit)."""
    return bool(store_class(db).exists(db, collection=collection))
