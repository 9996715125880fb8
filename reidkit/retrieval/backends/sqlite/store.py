"""The embedded backend's store (writes, deletes, state) and builder (a new gallery published whole)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from reidkit.errors import OptionError
from reidkit.utils.progress import to_stderr
from reidkit.inference import ModelIdentity
from reidkit.retrieval.backends.protocol import (
    FILES_INSIDE,
    BuildPlan,
    Capabilities,
    DeleteMatch,
    WriteBatch,
    crash_point,
)
from reidkit.retrieval.backends.sqlite.snapshot import SQLiteSnapshot
from reidkit.retrieval.backends.sqlite.schema import (
    DB_FILE,
    LEGACY_INDEX,
    SCHEMA_VERSION,
    bump_generation,
    connect,
    connect_read,
    create_db,
    insert_entries,
    model_identity,
    model_row,
    new_uid,
    next_id,
    not_a_gallery,
    read_info,
    read_key,
    schema_version,
    storage_error,
    write_transaction,
)
from reidkit.retrieval.backends.sqlite.generations import (
    WriterLock,
    cache_path,
    clean_for_write,
    drop_old_caches,
    existing_generation,
    finish_new,
    folder_writable,
    new_build_folder,
    publish_folder,
    recover,
)

# ----------------------------------------------------------------------------- the store


class SQLiteStore:
    """The embedded gallery backend: a folder with meta.sqlite (generations) and a faiss cache per generation."""

    # one writer at a time (the writer lock), ids from a counter, thumbnails in the folder, generations
    capabilities = Capabilities(many_writers=False, idempotent_ids=False, files=FILES_INSIDE, crash_consistent=True)

    def __init__(self, db: Path, readonly: bool = False) -> None:
        self.db = Path(db)
        self.location = str(self.db)
        self.files_dir = self.db
        self.readonly = bool(readonly)

    @classmethod
    def open(cls, db: str | os.PathLike, collection: str | None = None, readonly: bool = False) -> SQLiteStore:
        """Open gallery folder `db`; read-only (no recovery, no cache writes) when asked or when it cannot be written."""
        if collection is not None:
            raise OptionError("collection", f"applies to milvus: galleries only, not to the folder {db}")
        path = Path(db).expanduser().absolute()
        if not readonly and path.is_dir() and not folder_writable(path):
            readonly = True
        if not readonly:
            recover(path)
        return cls(path, readonly)

    @classmethod
    def exists(cls, db: str | os.PathLike, collection: str | None = None) -> bool:
        """True when folder `db` holds a gallery (of this or an older reidkit)."""
        path = Path(db).expanduser().absolute()
        return (path / DB_FILE).exists() or (path / LEGACY_INDEX).exists()

    @classmethod
    def builder(cls, location: str | os.PathLike, collection: str | None, plan: BuildPlan) -> SQLiteBuilder:
        """A new gallery built beside `location` and published whole (see SQLiteBuilder)."""
        if collection is not None:
            raise OptionError("collection", f"applies to milvus: galleries only, not to the folder {location}")
        return SQLiteBuilder(Path(location), plan)

    @staticmethod
    def describe(db: str | os.PathLike, collection: str | None = None) -> str:
        """The absolute folder."""
        return str(Path(db).expanduser().absolute())

    @staticmethod
    def check_new(db: str | os.PathLike) -> None:
        """OptionError when no new gallery can be made at `db` (a file, a folder with other files in it)."""
        existing_generation(Path(db).expanduser().absolute(), overwrite=False)

    @staticmethod
    def check_at(db: str | os.PathLike, collection: str | None = None) -> dict[str, Any]:
        """The consistency report of the folder (reidkit.retrieval.backends.sqlite.check)."""
        from reidkit.retrieval.backends.sqlite.check import check_folder

        if collection is not None:
            raise OptionError("collection", f"applies to milvus: galleries only, not to the folder {db}")
        return check_folder(db)

    @staticmethod
    def repair_at(db: str | os.PathLike, collection: str | None = None, **kwargs: Any) -> dict[str, Any]:
        """Repair or migrate the folder (reidkit.retrieval.backends.sqlite.check)."""
        from reidkit.retrieval.backends.sqlite.check import repair_folder

        if collection is not None:
            raise OptionError("collection", f"applies to milvus: galleries only, not to the folder {db}")
        return repair_folder(db, **kwargs)

    def snapshot(self, index: Any = None) -> SQLiteSnapshot:
        """Pin the newest generation."""
        return SQLiteSnapshot.load(self.db, index=index, readonly=self.readonly)

    def stored_key(self) -> tuple[str, int] | None:
        """(uid, generation) now on disk (one tiny read)."""
        return read_key(self.db)

    def settling(self, key: tuple[str, int]) -> bool:
        """A writer committed `key` but has not written its faiss cache yet (it still holds the writer lock)."""
        return not cache_path(self.db, key[1]).is_file() and WriterLock.is_held(self.db)

    def compact(self) -> bool:
        """Checkpoint the write-ahead log into the database and truncate it (True when it was). SQLite can only
        rewind its WAL when no reader holds an older view, so a long-running writer that always holds a snapshot
        (``reidkit watch``) grows it without end; the Gallery calls this with its own snapshot closed. Readers in
        other processes make it a partial checkpoint (False); it never waits for them."""
        if self.readonly:
            return False
        conn = connect(self.db / DB_FILE, timeout=0.5)
        try:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error:
            return False
        finally:
            conn.close()
        return not busy

    def check_writable(self) -> None:
        """ReIDError when the gallery was opened read-only (before any work is done)."""
        if self.readonly:
            raise OptionError("db", f"{self.db} is read-only (opened for search and check only); nothing was changed")

    def _commit(
        self,
        base: SQLiteSnapshot,
        identity: ModelIdentity,
        body: Callable[[sqlite3.Connection], tuple[Any, Callable[[Any], None] | None] | None],
        progress: Callable[[str], None] | None = None,
        lock_timeout: float | None = None,
    ) -> tuple[Any, SQLiteSnapshot | None]:
        """Run `body` in one write transaction under the writer lock, publish a new generation.

        `body(conn)` returns None (nothing to write: rolled back) or (result, update) where
        update(index) applies the change to a copy of `base`'s faiss index (None: rebuild).
        Returns (result, the new snapshot) or (None, None).
        """
        import faiss

        self.check_writable()
        db = self.db
        with WriterLock(db, timeout=lock_timeout, on_wait=progress or to_stderr):
            crash_point("add_locked")
            clean_for_write(db)
            if not (db / DB_FILE).is_file():
                raise not_a_gallery(db)
            key = read_key(db)
            if key is not None:  # caches of older generations left by a killed writer
                drop_old_caches(db, keep=key[1])
            conn = connect(db / DB_FILE)
            try:
                with write_transaction(conn, db):
                    if schema_version(conn) != SCHEMA_VERSION:
                        raise OptionError(
                            "db", f"{db} was written by an older reidkit; run `reidkit index repair --db {db}`"
                        )
                    stored = model_identity(conn, db)
                    if not stored.compatible(identity):
                        raise OptionError(
                            "db",
                            f"{db} was rebuilt with another model ({stored.label()}) since it was "
                            f"opened; nothing was written",
                        )
                    uid = read_info(conn).get("uid", "")
                    out = body(conn)
                    if out is None:
                        conn.execute("ROLLBACK")
                        return None, None
                    result, update = out
                    gen = bump_generation(conn)
                    crash_point("before_commit")
            finally:
                conn.close()
            crash_point("after_commit")
            index = None
            if update is not None and base.key == (uid, gen - 1):
                with base.lock:
                    try:
                        index = faiss.clone_index(base.index)
                        update(index)
                    except RuntimeError:  # e.g. HNSW cannot remove: rebuild from the store instead
                        index = None
            new = SQLiteSnapshot.load(db, index=index)
            drop_old_caches(db, keep=new.generation)
        return result, new

    def write(
        self, base: SQLiteSnapshot, identity: ModelIdentity, batch: WriteBatch
    ) -> tuple[list[int], SQLiteSnapshot | None]:
        """Insert rows + vectors + state (and the unreadable-image count) as one generation; (ids, new snapshot)."""
        rows, vectors, state, corrupt = batch.rows, batch.vectors, batch.state, batch.corrupt

        def body(conn: sqlite3.Connection) -> Any:
            keep = list(range(len(rows)))
            if batch.skip_existing_images:  # another writer may have added some of these since `base` was taken
                present = {p for (p,) in conn.execute("SELECT path FROM entries WHERE kind = 'image'")}
                keep = [i for i in keep if rows[i]["path"] not in present]
            if not keep and not state:
                return None
            vecs = vectors[keep]
            start = next_id(conn)
            ids = insert_entries(conn, range(start, start + len(keep)), [rows[i] for i in keep], vecs, self.db)
            for k, v in state.items():
                if v is None:
                    conn.execute("DELETE FROM state WHERE key = ?", (k,))
                else:
                    conn.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (k, v))
            if corrupt is not None:
                prev = int(read_info(conn).get("corrupt_skipped", "0"))
                conn.execute("INSERT OR REPLACE INTO info VALUES ('corrupt_skipped', ?)", (str(prev + corrupt),))

            def update(index: Any) -> None:
                if ids:
                    index.add_with_ids(np.ascontiguousarray(vecs), np.asarray(ids, dtype=np.int64))

            return ids, update

        ids, new = self._commit(base, identity, body, progress=batch.progress, lock_timeout=batch.lock_timeout)
        return ids or [], new

    def delete(
        self, base: SQLiteSnapshot, identity: ModelIdentity, match: DeleteMatch, lock_timeout: float | None = None
    ) -> tuple[int, SQLiteSnapshot | None]:
        """Delete the entries `match` selects as one generation; (count, new snapshot)."""
        where: list[str] = []
        params: list[Any] = []
        if match.ids is not None:
            where.append(f"id IN ({','.join('?' * len(match.ids))})")
            params.extend(int(i) for i in match.ids)
        for col, v in match.columns():
            where.append(f"{col} = ?")
            params.append(v)

        def body(conn: sqlite3.Connection) -> Any:
            sel = [r[0] for r in conn.execute(f"SELECT id FROM entries WHERE {' AND '.join(where)}", params)]
            if not sel:
                return None
            for s in range(0, len(sel), 500):
                part = sel[s : s + 500]
                marks = ",".join("?" * len(part))
                conn.execute(f"DELETE FROM entries WHERE id IN ({marks})", part)
                conn.execute(f"DELETE FROM vectors WHERE id IN ({marks})", part)
            return len(sel), lambda index: index.remove_ids(np.asarray(sel, dtype=np.int64))

        n, new = self._commit(base, identity, body, lock_timeout=lock_timeout)
        return n or 0, new

    def get_state(self, key: str) -> Any:
        """The JSON value stored under `key` (latest on disk, not a pinned snapshot), or None."""
        conn = connect_read(self.db / DB_FILE, readonly=self.readonly)
        try:
            row = conn.execute("SELECT value FROM state WHERE key = ?", (str(key),)).fetchone()
        except sqlite3.Error as exc:
            raise OptionError("db", f"cannot read state from {self.db / DB_FILE}: {exc}") from None
        finally:
            conn.close()
        return None if row is None else json.loads(row[0])

    def check(self) -> dict[str, Any]:
        """The consistency report of reidkit.retrieval.backends.sqlite.check.check_folder."""
        from reidkit.retrieval.backends.sqlite.check import check_folder

        return check_folder(self.db)


class SQLiteBuilder:
    """A new gallery folder filled in a temp folder beside `db` and published with one atomic exchange."""

    def __init__(self, db: Path, plan: BuildPlan) -> None:
        self.db = Path(db).expanduser().absolute()
        self.plan = plan
        self.overwrite, self.lock_timeout, self.progress = plan.overwrite, plan.lock_timeout, plan.progress
        recover(self.db)
        self.old_gen = existing_generation(self.db, plan.overwrite)
        self.tmp: Path | None = None
        self.conn: sqlite3.Connection | None = None
        self.identity: ModelIdentity | None = None
        self.count = 0

    def start(self, identity: ModelIdentity, info: dict[str, str]) -> None:
        """Create the temp folder and its database (model row, info with a new uid and the next generation)."""
        self.identity = identity
        try:
            clean_for_write(self.db)
            self.tmp = new_build_folder(self.db)
            self.conn = create_db(
                self.tmp / DB_FILE, model_row(identity), {**info, "uid": new_uid(), "generation": str(self.old_gen + 1)}
            )
        except (OSError, sqlite3.OperationalError) as exc:
            raise storage_error(self.db, exc) or exc from None

    def append(self, rows: list[dict[str, Any]], vectors: np.ndarray) -> None:
        """Insert a batch (ids continue from the previous batch)."""
        assert self.conn is not None and self.tmp is not None
        with write_transaction(self.conn, self.tmp, immediate=False):
            insert_entries(self.conn, range(self.count, self.count + len(rows)), rows, vectors, self.db)
        self.count += len(rows)

    def publish(self, corrupt: int = 0, existing_error: str = "") -> SQLiteStore:
        """Index the new database and swap it in under the writer lock; returns the store."""
        assert self.conn is not None and self.tmp is not None and self.identity is not None
        try:
            with write_transaction(self.conn, self.tmp, immediate=False):
                self.conn.execute("INSERT OR REPLACE INTO info VALUES ('corrupt_skipped', ?)", (str(corrupt),))
            crash_point("build_embedded")
            finish_new(
                self.tmp,
                self.conn,
                self.identity,
                self.plan.index_kind,
                self.plan.nlist,
                self.plan.pq_m,
                self.progress,
            )
            self.conn.close()
            crash_point("build_before_publish")
            with WriterLock(self.db, timeout=self.lock_timeout, on_wait=self.progress or to_stderr):
                if not self.overwrite and (self.db / DB_FILE).exists():
                    raise OptionError(
                        "db",
                        existing_error
                        or f"{self.db} already holds a gallery (built meanwhile "
                        f"by another process); build with overwrite to replace it",
                    )
                publish_folder(self.tmp, self.db)
        except OSError as exc:
            raise storage_error(self.db, exc) or exc from None
        return SQLiteStore(self.db)

    def abort(self) -> None:
        """Remove the temp folder (the previous gallery, if any, is untouched)."""
        if self.conn is not None:
            try:
                self.conn.close()
            except sqlite3.Error:
                pass
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
