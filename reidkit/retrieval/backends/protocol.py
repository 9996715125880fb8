"""The gallery backend protocol: what :class:`reidkit.retrieval.gallery.Gallery` needs from a backend.

A backend stores entries (images or tracklets: a vector plus metadata), key -> JSON state (e.g.
video-ingestion progress) and the identity of the model that made the vectors. It offers

- writes of a batch of entries, vectors and state in one step (:meth:`GalleryStore.write`), and
  deletes by id / tracklet / camera / path (:meth:`GalleryStore.delete`);
- a snapshot for reading (:meth:`GalleryStore.snapshot`): search with filters on camera, kind and
  time, lookups of stored fields and vectors;
- a change key (:meth:`GalleryStore.stored_key`) a service can poll cheaply, and
- check / repair;
- :class:`Capabilities`, read by callers instead of the ``--db`` string: how many writer processes it
  admits, whether entry ids derive from content, where side files live, whether a killed writer leaves
  the last whole state.

The registry of schemes (``--db`` with no scheme: the embedded folder; ``milvus:``; a user's from a
``--plugin`` file) is :mod:`reidkit.retrieval.backends`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from reidkit.errors import OptionError, ReIDError
from reidkit.retrieval.store import KINDS

if TYPE_CHECKING:
    from reidkit.inference import ModelIdentity

__all__ = [
    "Capabilities",
    "FILES_INSIDE",
    "FILES_OUTSIDE",
    "SearchFilter",
    "WriteBatch",
    "DeleteMatch",
    "BuildPlan",
    "StoreSnapshot",
    "StoreBuilder",
    "GalleryStore",
    "FilesOutsideStore",
    "CRASH_ENV",
    "CRASH_POINTS",
    "crash_point",
    "passes",
    "files_folder",
]

CRASH_ENV = "REIDKIT_TEST_CRASH_AT"
CRASH_POINTS = (
    "add_embedded",  # add: features computed, writer lock not yet taken
    "add_locked",  # add: holding the writer lock, transaction not begun
    "before_commit",  # any write: rows inserted, generation bumped, not committed
    "after_commit",  # any write: committed, faiss cache of the new generation not written
    "cache_temp_written",  # the new cache is in its temp file, not renamed into place
    "build_embedded",  # build: new database filled in the temp folder, not indexed
    "build_before_publish",  # build: temp folder complete, folders not exchanged
    "build_after_publish",  # build: folders exchanged, old folder not yet removed
)
FILES_INSIDE = "inside"  # side files (thumbnails) live in the gallery's own folder
FILES_OUTSIDE = "outside"  # side files live in a local folder the gallery records (--files)


@dataclass(frozen=True)
class Capabilities:
    """What a backend promises, read by ingestion, the cluster and the CLI (never the ``--db`` string).

    - `many_writers`: several processes may write at once (a Milvus server); else one writer process at a
      time (the folder serialises writers on a lock; Milvus Lite admits one process per file).
    - `idempotent_ids`: an entry's id derives from its content (an image's path, a tracklet's key), writes
      are upserts: writing the same entries again replaces them, so a re-run neither loses nor duplicates
      and ingestion needs no per-video lock.
    - `files`: where side files live: :data:`FILES_INSIDE` the gallery's folder (``--files`` refused) or
      :data:`FILES_OUTSIDE` a local folder the gallery records (the store has ``use_files``).
    - `crash_consistent`: a writer killed mid-write leaves the last whole state (readers never see half a
      write); else a re-run of the same write is what repairs it (with idempotent ids).
    """

    many_writers: bool = False
    idempotent_ids: bool = False
    files: str = FILES_INSIDE
    crash_consistent: bool = False

    def __post_init__(self) -> None:
        if self.files not in (FILES_INSIDE, FILES_OUTSIDE):
            raise ReIDError(f"Capabilities.files: expected {FILES_INSIDE!r} or {FILES_OUTSIDE!r}, got {self.files!r}")


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
        return any(
            v is not None
            for v in (self.exclude_camid, self.exclude_camera, self.camera, self.kind, self.t_min, self.t_max)
        )

    def check(self) -> SearchFilter:
        """ReIDError naming the bad condition; returns self."""
        if self.kind is not None and self.kind not in KINDS:
            raise ReIDError(f"kind: expected one of {', '.join(KINDS)}, got {self.kind!r}")
        for name, v in (("t_min", self.t_min), ("t_max", self.t_max)):
            if v is not None and not np.isfinite(float(v)):
                raise ReIDError(f"{name}: must be a finite number of seconds, got {v!r}")
        return self


@dataclass(frozen=True)
class WriteBatch:
    """One :meth:`GalleryStore.write`: entry rows and their vectors, state keys to set (a None value deletes the
    key), whether image paths already stored are skipped (another writer may have added them since the base
    snapshot), unreadable images to add to the gallery's count, and how to wait for another writer
    (``lock_timeout`` seconds, None: the backend's default; ``progress``, told while waiting)."""

    rows: list[dict[str, Any]]
    vectors: np.ndarray
    state: dict[str, str | None] = field(default_factory=dict)
    skip_existing_images: bool = False
    corrupt: int | None = None
    lock_timeout: float | None = None
    progress: Callable[[str], None] | None = None


@dataclass(frozen=True)
class DeleteMatch:
    """What :meth:`GalleryStore.delete` removes: the entries matching ALL the criteria given (None: any)."""

    ids: Sequence[int] | None = None
    tracklet: str | None = None
    camera: str | None = None
    path: str | None = None

    def columns(self) -> list[tuple[str, str]]:
        """(column, value) of the criteria on stored fields that are given (ids aside)."""
        return [
            (c, str(v))
            for c, v in (("tracklet", self.tracklet), ("camera", self.camera), ("path", self.path))
            if v is not None
        ]


@dataclass(frozen=True)
class BuildPlan:
    """What :meth:`GalleryStore.builder` makes: the index kind (with its IVF lists and PQ sub-quantisers; None:
    chosen from the data), whether an existing gallery is replaced, and how its writer waits for another."""

    index_kind: str = "flat"
    nlist: int | None = None
    pq_m: int | None = None
    overwrite: bool = False
    lock_timeout: float | None = None
    progress: Callable[[str], None] | None = None


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

    def search(
        self, feats: np.ndarray, k: int, filters: Sequence[SearchFilter], nprobe: int | None = None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per query row: (ids int64, scores float32), best first, at most k, all passing its filter."""

    def rows(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """Stored fields (ENTRY_FIELDS + width, height) of the given ids that exist."""

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """Stored vectors of the given ids, in that order (ReIDError for an unknown id)."""

    def entries(
        self, kind: str | None = None, tracklet: str | None = None, camera: str | None = None
    ) -> list[dict[str, Any]]:
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
class FilesOutsideStore(Protocol):
    """What a store whose side files live outside it (``Capabilities.files == FILES_OUTSIDE``) adds."""

    def use_files(self, files: str | os.PathLike | None = None, default: str | os.PathLike | None = None) -> Path:
        """Record (or check against the recorded one) the local side-file folder: ``files``, else ``default``."""
        ...


@runtime_checkable
class GalleryStore(Protocol):
    """A gallery backend (see the module docstring)."""

    location: str  # the --db string that names it
    files_dir: Path  # a local folder for side files (video thumbnails)
    readonly: bool
    capabilities: Capabilities  # or a classmethod capabilities_for(db) when they depend on the location

    @classmethod
    def open(cls, db: str | os.PathLike, collection: str | None = None, readonly: bool = False) -> GalleryStore: ...

    @classmethod
    def exists(cls, db: str | os.PathLike, collection: str | None = None) -> bool: ...

    @classmethod
    def builder(cls, location: str | os.PathLike, collection: str | None, plan: BuildPlan) -> StoreBuilder:
        """A new gallery as `plan` says; refuses an existing one unless ``plan.overwrite``."""

    def snapshot(self) -> StoreSnapshot: ...

    def stored_key(self) -> tuple[str, int] | None:
        """(uid, generation) now stored, read cheaply; None when it cannot be read now."""

    def check_writable(self) -> None:
        """ReIDError when this store was opened read-only."""

    def settling(self, key: tuple[str, int]) -> bool:
        """True while a writer that published `key` is still finishing (a follower may wait a little)."""

    def write(
        self, base: StoreSnapshot, identity: ModelIdentity, batch: WriteBatch
    ) -> tuple[list[int], StoreSnapshot | None]:
        """Write the batch in one step; (ids written, the new snapshot or None when nothing changed)."""

    def delete(
        self, base: StoreSnapshot, identity: ModelIdentity, match: DeleteMatch, lock_timeout: float | None = None
    ) -> tuple[int, StoreSnapshot | None]:
        """Delete the entries `match` selects; (count, new snapshot or None)."""

    def get_state(self, key: str) -> Any:
        """The latest stored JSON value under `key`, or None."""

    def check(self) -> dict[str, Any]:
        """Consistency report (keys db, consistent, generation, entries, images, tracklets; optionally index, cache,
        model, feat_dim, leftover_files, lock_files); ReIDError naming the problem when inconsistent."""


def passes(entry: dict[str, Any], f: SearchFilter) -> bool:
    """True when a stored entry (a dict of ENTRY_FIELDS) passes filter `f`: the semantics every backend keeps."""
    if f.exclude_camid is not None and entry.get("camid") == f.exclude_camid:
        return False
    if f.exclude_camera is not None and entry.get("camera") == f.exclude_camera:
        return False
    if f.camera is not None and entry.get("camera") != f.camera:
        return False
    if f.kind is not None and entry.get("kind") != f.kind:
        return False
    t0, t1 = entry.get("t_start"), entry.get("t_end")
    if f.t_min is not None and (t1 is None or t1 < f.t_min):
        return False
    if f.t_max is not None and (t0 is None or t0 > f.t_max):
        return False
    return True


def files_folder(files: str | os.PathLike) -> Path:
    """`files` as an absolute folder path, refused when it is a file or cannot be created or written."""
    path = Path(files).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise OptionError("files", f"{path} exists and is not a folder")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise OptionError("files", f"{path}: {existing} is not a folder this process can write in")
    return path


# ----------------------------------------------------------------------------- test hook


def crash_point(name: str) -> None:
    """Test hook: exit at once (as a SIGKILL would leave things) when $REIDKIT_TEST_CRASH_AT names this point."""
    if os.environ.get(CRASH_ENV) == name:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(137)
