"""Gallery maintenance: ``reidkit index check`` and ``index repair`` on any backend.

Each backend brings its own (:meth:`Backend.check` / :meth:`Backend.repair` of
:mod:`reidkit.retrieval.backends`): the embedded folder's check, repair and migration of an older
layout are in :mod:`reidkit.retrieval.backends.sqlite.check`; Milvus checks its collections and needs
no repair (its writes are idempotent upserts).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from reidkit.retrieval.backends import resolve

__all__ = ["check_gallery", "repair_gallery"]


def check_gallery(db: str | os.PathLike, collection: str | None = None) -> dict[str, Any]:
    """Consistency report of gallery `db`; ReIDError naming the problem when it is not consistent (reads only)."""
    return resolve(db, collection).check()


def repair_gallery(
    db: str | os.PathLike,
    weights: str | os.PathLike | None = None,
    device: str | None = None,
    batch_size: int = 64,
    progress: Callable[[str], None] | None = None,
    lock_timeout: float | None = None,
    collection: str | None = None,
) -> dict[str, Any]:
    """Convert a gallery of an older reidkit (or fix an inconsistent one) into its backend's current layout.

    The embedded folder: vectors are read back from the old flat / IVF-Flat / HNSW-Flat index where it has
    them; rows it lacks are re-extracted with the recorded model (or `weights`); what can be neither is reported.
    """
    return resolve(db, collection).repair(
        weights=weights, device=device, batch_size=batch_size, progress=progress, lock_timeout=lock_timeout
    )
