"""Gallery backends as parts: a scheme registry over the :mod:`~reidkit.retrieval.backends.protocol`.

The ``--db`` string's scheme picks the backend once, as LanceDB's ``connect(uri)`` picks its connection
class; callers then read the backend's :class:`Capabilities` and never look at the string again:

- no scheme (a folder path): ``embedded`` (:mod:`reidkit.retrieval.backends.sqlite`, SQLite generations +
  a faiss cache; crash-consistent, one writer at a time, side files inside the folder), the default;
- ``milvus:<uri>``: ``milvus`` (:mod:`reidkit.retrieval.backends.milvus`; content-derived ids, side files
  in a ``--files`` folder; a server admits many writers, a Milvus Lite file one process);
- a user's scheme: ``reidkit.register_backend("name", StoreClass)`` in a ``--plugin`` file, then
  ``--db name:...``. The class follows :class:`~reidkit.retrieval.backends.protocol.GalleryStore`
  (tests/data/memory_backend.py is a complete one, ~100 lines).

:func:`resolve` turns a ``--db`` value and a collection into a :class:`Backend`; everything else here
(``open_store``, ``store_exists``, ``describe_db``) goes through it.
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from reidkit.errors import OptionError, ReIDError
from reidkit.registry import Registry
from reidkit.retrieval.backends.protocol import (
    FILES_INSIDE,
    FILES_OUTSIDE,
    BuildPlan,
    Capabilities,
    DeleteMatch,
    FilesOutsideStore,
    GalleryStore,
    SearchFilter,
    StoreBuilder,
    StoreSnapshot,
    WriteBatch,
    crash_point,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKEND",
    "Backend",
    "BuildPlan",
    "Capabilities",
    "DeleteMatch",
    "FILES_INSIDE",
    "FILES_OUTSIDE",
    "FilesOutsideStore",
    "GalleryStore",
    "SearchFilter",
    "StoreBuilder",
    "StoreSnapshot",
    "WriteBatch",
    "register_backend",
    "resolve",
    "open_store",
    "store_exists",
    "describe_db",
    "gallery_db",
    "crash_point",
    "scheme",
]

BACKENDS: Registry[Any] = Registry("gallery backend", "--db")
DEFAULT_BACKEND = "embedded"
# a scheme: a letter, then at least one more of [A-Za-z0-9_+.-], then ":" (one letter is a Windows drive)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9_+.-]+):")


def register_backend(name: str, cls: Any = None, *, overwrite: bool = False) -> Any:
    """Register a gallery backend class for ``--db NAME:...`` (decorator or call). `cls` may also be a
    ``"module:Class"`` string, imported when a gallery of that scheme is first opened."""
    if not _SCHEME.match(f"{name}:") and name != DEFAULT_BACKEND:
        raise ReIDError(
            f"register_backend: {name!r} is not a scheme (a letter, then letters, digits or _+.-; "
            f"at least two characters)"
        )

    return BACKENDS.register(name, cls, overwrite=overwrite)


def _load(entry: Any) -> Any:
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        return getattr(importlib.import_module(module), attr)
    return entry


@dataclass(frozen=True)
class Backend:
    """A ``--db`` value resolved: the backend's registered name, its class, the value as the class takes it
    (a folder Path for the embedded backend, else the string), the collection and the capabilities."""

    name: str
    cls: Any
    db: Path | str
    collection: str | None
    capabilities: Capabilities

    def open(self, readonly: bool = False) -> GalleryStore:
        """Open the existing gallery."""
        return cast(GalleryStore, self.cls.open(self.db, collection=self.collection, readonly=readonly))

    def exists(self) -> bool:
        """True when the location already holds a gallery (of this or an older reidkit)."""
        return bool(self.cls.exists(self.db, collection=self.collection))

    def builder(self, plan: BuildPlan) -> StoreBuilder:
        """A new gallery at the location, as `plan` says (GalleryStore.builder)."""
        return cast(StoreBuilder, self.cls.builder(self.db, self.collection, plan))

    def describe(self) -> str:
        """How messages name the gallery."""
        fn = getattr(self.cls, "describe", None)
        if fn is not None:
            return str(fn(self.db, self.collection))
        return str(self.db) + (f" (collection {self.collection})" if self.collection else "")

    def check_new(self) -> None:
        """OptionError when a new gallery cannot be made at the location (before any model is loaded)."""
        fn = getattr(self.cls, "check_new", None)
        if fn is not None:
            fn(self.db)

    def check(self) -> dict[str, Any]:
        """The consistency report (reidkit index check); ReIDError naming the problem when inconsistent."""
        fn = getattr(self.cls, "check_at", None)
        if fn is not None:
            return cast(dict[str, Any], fn(self.db, self.collection))
        return self.open().check()

    def repair(self, **kwargs: Any) -> dict[str, Any]:
        """Repair the gallery (reidkit index repair); a backend without a repair of its own is only checked."""
        fn = getattr(self.cls, "repair_at", None)
        if fn is not None:
            return cast(dict[str, Any], fn(self.db, self.collection, **kwargs))
        rep = self.check()
        return {
            "action": "none needed",
            "entries": rep.get("entries", 0),
            "recovered_from_index": 0,
            "reextracted": 0,
            "dropped": [],
        }

    def refuse_files(self) -> None:
        """OptionError when ``files`` is given for a backend that keeps its side files inside the gallery."""
        if self.capabilities.files != FILES_OUTSIDE:
            outside = [
                n
                for n in BACKENDS.names()
                if n != DEFAULT_BACKEND
                and getattr(_load(BACKENDS.get(n)), "capabilities", None) is not None
                and _load(BACKENDS.get(n)).capabilities.files == FILES_OUTSIDE
            ]
            raise OptionError(
                "files",
                f"applies to {', '.join(f'{n}:' for n in outside) or 'other'} galleries only; "
                f"{self.describe()} keeps its files inside its folder",
            )

    def default_files(self, near: str | os.PathLike) -> Path | None:
        """The side-file folder a new gallery records when the user gives none (None: files live inside)."""
        if self.capabilities.files != FILES_OUTSIDE:
            return None
        fn = getattr(self.cls, "files_beside", None)
        if fn is not None:
            return Path(fn(near, self.collection))
        return Path(near).expanduser().absolute().parent / f"{self.collection or self.name}.files"


def scheme(db: str | os.PathLike) -> str | None:
    """The scheme of a ``--db`` value (``milvus`` of ``milvus:./g.db``), None for a folder path."""
    if isinstance(db, os.PathLike):
        return None
    m = _SCHEME.match(str(db))
    return m.group(1) if m else None


def resolve(db: str | os.PathLike, collection: str | None = None) -> Backend:
    """The backend of a ``--db`` value: its scheme's registered class, or the embedded folder for a path.

    An unknown scheme is one OptionError naming ``db`` (``--db`` on the CLI), the nearest scheme and every one
    registered."""
    name = scheme(db)
    value: Path | str  # a folder Path for the embedded backend, else the string (Backend.db)
    if name is None:
        name, value = DEFAULT_BACKEND, Path(db).expanduser().absolute()
    elif name not in BACKENDS or name == DEFAULT_BACKEND:
        import difflib

        known = [n for n in BACKENDS.names() if n != DEFAULT_BACKEND]
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]}:?)" if close else ""
        raise OptionError(
            "db",
            f"{db}: unknown gallery backend {name + ':'!r}{hint}; the schemes: "
            f"{', '.join(n + ':' for n in known)} (a --plugin file may register more with "
            f"reidkit.register_backend), or a folder path without one "
            f"(./{db} for a folder whose name has a colon)",
        )
    else:
        value = str(db)
    cls = _load(BACKENDS.get(name))
    caps_for = getattr(cls, "capabilities_for", None)
    caps = caps_for(value) if caps_for is not None else getattr(cls, "capabilities", None)
    if not isinstance(caps, Capabilities):
        raise ReIDError(
            f"gallery backend {name!r}: {getattr(cls, '__name__', cls)} declares no capabilities "
            f"(a reidkit.retrieval.backends.protocol.Capabilities)"
        )
    return Backend(name, cls, value, collection, caps)


def open_store(db: str | os.PathLike, collection: str | None = None, readonly: bool = False) -> GalleryStore:
    """Open the gallery `db` names (a folder, or a registered scheme's location with `collection`)."""
    return resolve(db, collection).open(readonly=readonly)


def store_exists(db: str | os.PathLike, collection: str | None = None) -> bool:
    """True when `db` already holds a gallery (of this or an older reidkit)."""
    return resolve(db, collection).exists()


def describe_db(db: str | os.PathLike, collection: str | None = None) -> str:
    """How messages name the gallery: the folder, or ``milvus:<uri> (collection NAME)``."""
    return resolve(db, collection).describe()


def gallery_db(location: str) -> Path | str:
    """What ``Gallery.db`` holds for a store's location: a folder Path (embedded), else the ``--db`` string."""
    return Path(location) if scheme(location) is None else location


# The built-in backends, one line each (imported when a gallery of theirs is opened: pymilvus only for Milvus).
register_backend(DEFAULT_BACKEND, "reidkit.retrieval.backends.sqlite.store:SQLiteStore")
register_backend("milvus", "reidkit.retrieval.backends.milvus.store:MilvusStore")
