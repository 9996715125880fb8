"""A test gallery backend that admits many writer processes: the embedded folder (its writers serialise on the
folder's lock, so several processes may write it) declared ``many_writers``, under the scheme ``sharedfolder:``.
It stands in for a Milvus server where none can be had, so that the paths that read ``Capabilities.many_writers``
(``reidkit watch --cluster``: the workers commit themselves) run in a test. Register it in every process that opens
such a gallery: ``register()``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from reidkit.retrieval.backends.sqlite.store import SQLiteStore

SCHEME = "sharedfolder"


def _path(db: Any) -> Path:
    text = str(db)
    return Path(text[len(SCHEME) + 1 :] if text.startswith(SCHEME + ":") else text)


class SharedFolderStore(SQLiteStore):
    capabilities = dataclasses.replace(SQLiteStore.capabilities, many_writers=True)

    @classmethod
    def open(cls, db: Any, collection: str | None = None, readonly: bool = False) -> Any:
        return SQLiteStore.open(_path(db), collection=collection, readonly=readonly)

    @classmethod
    def exists(cls, db: Any, collection: str | None = None) -> bool:
        return SQLiteStore.exists(_path(db), collection)

    @classmethod
    def builder(cls, location: Any, collection: str | None, plan: Any) -> Any:
        return SQLiteStore.builder(_path(location), collection, plan)

    @staticmethod
    def describe(db: Any, collection: str | None = None) -> str:
        return f"{SCHEME}:{SQLiteStore.describe(_path(db))}"

    @staticmethod
    def check_new(db: Any) -> None:
        SQLiteStore.check_new(_path(db))

    @staticmethod
    def check_at(db: Any, collection: str | None = None) -> dict[str, Any]:
        return SQLiteStore.check_at(_path(db), collection)


def register() -> None:
    """Register the scheme in this process (idempotent)."""
    from reidkit.retrieval.backends import register_backend

    register_backend(SCHEME, SharedFolderStore, overwrite=True)
