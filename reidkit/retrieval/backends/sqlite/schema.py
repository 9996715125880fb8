"""The embedded backend's SQLite layer: the schema, connections, transactions, the entry and model rows."""

from __future__ import annotations

import errno
import json
import os
import secrets
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from reidkit.errors import OptionError, ReIDError
from reidkit.inference import ModelIdentity

DB_FILE = "meta.sqlite"
LEGACY_INDEX = "index.faiss"
SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE entries (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT 'image',
    camid INTEGER,
    camera TEXT,
    tracklet TEXT,
    frame_start INTEGER,
    frame_end INTEGER,
    t_start REAL,
    t_end REAL,
    width INTEGER,
    height INTEGER,
    meta TEXT
);
CREATE UNIQUE INDEX entries_image_path ON entries(path) WHERE kind = 'image';
CREATE UNIQUE INDEX entries_tracklet ON entries(tracklet) WHERE tracklet IS NOT NULL;
CREATE INDEX entries_camera ON entries(camera);
CREATE TABLE vectors (id INTEGER PRIMARY KEY, vec BLOB NOT NULL);
CREATE TABLE model (
    identity TEXT NOT NULL,
    source TEXT NOT NULL,
    feat_dim INTEGER NOT NULL,
    input_h INTEGER NOT NULL,
    input_w INTEGER NOT NULL,
    mean TEXT NOT NULL,
    std TEXT NOT NULL
);
CREATE TABLE info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE blobs (key TEXT PRIMARY KEY, value BLOB NOT NULL);
"""
_COLUMNS = (
    "id",
    "path",
    "kind",
    "camid",
    "camera",
    "tracklet",
    "frame_start",
    "frame_end",
    "t_start",
    "t_end",
    "width",
    "height",
    "meta",
)


# ----------------------------------------------------------------------------- knobs and hooks


def _env_seconds(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ReIDError(f"${name}: expected a number of seconds, got {raw!r}") from None
    if not 0 <= value < float("inf"):  # NaN fails this too
        raise ReIDError(f"${name}: must be a finite number >= 0, got {raw!r}")
    return value


def busy_timeout() -> float:
    """Seconds SQLite waits for a lock held by another connection ($REIDKIT_BUSY_TIMEOUT, default 30)."""
    return _env_seconds("REIDKIT_BUSY_TIMEOUT", 30.0)


def lock_timeout() -> float:
    """Seconds a writer waits for the gallery's writer lock ($REIDKIT_LOCK_TIMEOUT, default 120)."""
    return _env_seconds("REIDKIT_LOCK_TIMEOUT", 120.0)


# ----------------------------------------------------------------------------- SQLite


def connect(path: Path, timeout: float | None = None) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit BEGIN/COMMIT), usable from any thread."""
    conn = sqlite3.connect(
        str(path), timeout=busy_timeout() if timeout is None else timeout, check_same_thread=False, isolation_level=None
    )
    return conn


def connect_read(path: Path, readonly: bool = False) -> sqlite3.Connection:
    """A connection for reading: normal, else (read-only folder or medium, full disk) ``mode=ro``, else ``immutable=1``.

    ``immutable=1`` reads the main database file without locks and ignores a WAL left by a killed
    writer: the last checkpointed generation, whole. Used only when nothing else can open it.
    """
    tries = ([] if readonly else [str(path)]) + [f"file:{path}?mode=ro", f"file:{path}?immutable=1"]
    last: Exception | None = None
    for target in tries:
        try:
            conn = sqlite3.connect(
                target,
                timeout=busy_timeout(),
                check_same_thread=False,
                isolation_level=None,
                uri=target.startswith("file:"),
            )
        except sqlite3.Error as exc:
            last = exc
            continue
        try:
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()  # opens the WAL index now
            return conn
        except sqlite3.DatabaseError as exc:
            conn.close()
            last = exc
            if "not a database" in str(exc) or "malformed" in str(exc):
                break
    raise OptionError("db", f"{path} is not a readable reidkit gallery database ({last})")


_STORAGE_ERRNOS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EFBIG: "the file size limit was reached",
    errno.EROFS: "the storage is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EIO: "disk I/O error",
}
_SQLITE_STORAGE = (
    ("database or disk is full", "the disk is full"),
    ("disk I/O error", "disk I/O error"),
    ("readonly database", "the storage is read-only"),
    ("unable to open database file", "the database file cannot be opened for writing"),
)


def storage_error(db: Path | str, exc: BaseException) -> ReIDError | None:
    """A ReIDError for a full / read-only / failing disk met while writing `db` (nothing was changed), else None."""
    why = None
    if isinstance(exc, sqlite3.OperationalError):
        why = next((w for needle, w in _SQLITE_STORAGE if needle in str(exc)), None)
    elif isinstance(exc, OSError):
        why = _STORAGE_ERRNOS.get(exc.errno or 0)
    if why is None:
        return None
    return OptionError("db", f"cannot write {db}: {why} ({exc}); nothing was changed, the gallery is unchanged")


@contextmanager
def write_transaction(conn: sqlite3.Connection, db: Path, immediate: bool = True) -> Iterator[sqlite3.Connection]:
    """BEGIN [IMMEDIATE] ... COMMIT; ROLLBACK on any exception; a full or read-only disk -> ReIDError.

    A body that rolled back itself (nothing to write) leaves nothing to commit. IMMEDIATE takes
    SQLite's write lock at once (a lock held past the busy timeout is a clean error).
    """
    if immediate:
        begin_write(conn, db)
    else:
        conn.execute("BEGIN")
    try:
        yield conn
        if conn.in_transaction:
            conn.execute("COMMIT")
    except BaseException as exc:
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
        err = storage_error(db, exc)
        if err is not None:
            raise err from None
        raise


def create_db(path: Path, model_row: Sequence[Any], info: dict[str, str]) -> sqlite3.Connection:
    """Create a new gallery database (WAL) with its schema, model row and info; returns a connection."""
    conn = connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a commit survives a process kill
    conn.executescript(_SCHEMA)
    with write_transaction(conn, path.parent, immediate=False):
        conn.execute("INSERT INTO model VALUES (?, ?, ?, ?, ?, ?, ?)", tuple(model_row))
        conn.executemany(
            "INSERT INTO info VALUES (?, ?)", sorted({**info, "schema_version": str(SCHEMA_VERSION)}.items())
        )
    return conn


def schema_version(conn: sqlite3.Connection) -> int:
    """2 for this layout, 1 for galleries of older reidkit (an `images` table and index.faiss), 0 otherwise."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if {"entries", "vectors", "info", "model"} <= tables:
        return SCHEMA_VERSION
    if {"images", "info", "model"} <= tables:
        return 1
    return 0


def read_info(conn: sqlite3.Connection) -> dict[str, str]:
    """The info table as a dict."""
    return dict(conn.execute("SELECT key, value FROM info").fetchall())


def read_key(db: Path) -> tuple[str, int] | None:
    """(uid, generation) of the gallery in `db`, read cheaply; None when it cannot be read now."""
    try:
        conn = sqlite3.connect(f"file:{Path(db) / DB_FILE}?mode=ro", uri=True, timeout=1.0)
    except sqlite3.Error:
        return None
    try:
        rows = dict(conn.execute("SELECT key, value FROM info WHERE key IN ('uid', 'generation')").fetchall())
        return rows.get("uid", ""), int(rows.get("generation", "0"))
    except (sqlite3.Error, ValueError):
        return None
    finally:
        conn.close()


def begin_write(conn: sqlite3.Connection, db: Path) -> None:
    """BEGIN IMMEDIATE (take SQLite's write lock now); a lock held past the busy timeout is a clean error."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        err = storage_error(db, exc)
        if err is not None:
            raise err from None
        raise OptionError(
            "db",
            f"{db / DB_FILE} stayed locked by another connection for more than "
            f"{busy_timeout():g} s ({exc}); nothing was written, the gallery is unchanged",
        ) from None


def bump_generation(conn: sqlite3.Connection) -> int:
    """Increment info.generation inside the caller's transaction; returns the new generation."""
    row = conn.execute("SELECT value FROM info WHERE key = 'generation'").fetchone()
    gen = int(row[0]) + 1 if row else 1
    conn.execute("INSERT OR REPLACE INTO info VALUES ('generation', ?)", (str(gen),))
    return gen


def new_uid() -> str:
    """A random identifier for one built gallery (a rebuilt folder gets a new one)."""
    return secrets.token_hex(8)


# ----------------------------------------------------------------------------- entries


def insert_entries(
    conn: sqlite3.Connection,
    ids: Sequence[int],
    rows: Sequence[dict[str, Any]],
    vectors: np.ndarray,
    db: Path | None = None,
) -> list[int]:
    """Insert normalised entries with the given ids and their vectors (caller's transaction); returns the ids."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = [int(i) for i in ids]
    try:
        conn.executemany(
            f"INSERT INTO entries ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
            [(i, *(r[c] for c in _COLUMNS[1:])) for i, r in zip(ids, rows)],
        )
    except sqlite3.IntegrityError as exc:
        msg = str(exc)
        what = "a tracklet key" if "tracklet" in msg else "an image path"
        raise OptionError(
            "db", f"{db or 'gallery'}: {what} is already in the gallery ({msg}); nothing was written"
        ) from None
    conn.executemany("INSERT INTO vectors VALUES (?, ?)", [(i, v.tobytes()) for i, v in zip(ids, vectors)])
    if ids:
        conn.execute("INSERT OR REPLACE INTO info VALUES ('next_id', ?)", (str(max(ids) + 1),))
    return ids


def next_id(conn: sqlite3.Connection) -> int:
    """The next unused entry id (ids are never reused, even after a delete)."""
    row = conn.execute("SELECT value FROM info WHERE key = 'next_id'").fetchone()
    top = conn.execute("SELECT COALESCE(MAX(id) + 1, 0) FROM entries").fetchone()[0]
    return max(int(row[0]) if row else 0, int(top))


def iter_vectors(conn: sqlite3.Connection, dim: int, chunk: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(ids int64, vectors float32 n x dim) in id order, `chunk` rows at a time."""
    cur = conn.execute("SELECT id, vec FROM vectors ORDER BY id")
    while True:
        rows = cur.fetchmany(chunk)
        if not rows:
            return
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        buf = b"".join(r[1] for r in rows)
        if len(buf) != len(rows) * dim * 4:
            raise ReIDError(f"gallery vectors: expected {dim}-d float32 blobs, found blobs of other sizes")
        yield ids, np.frombuffer(buf, dtype=np.float32).reshape(len(rows), dim)


def read_vectors(conn: sqlite3.Connection, ids: Sequence[int] | np.ndarray, dim: int) -> np.ndarray:
    """Vectors of the given ids, in that order (ReIDError for an unknown id)."""
    ids = [int(i) for i in ids]
    found: dict[int, bytes] = {}
    for s in range(0, len(ids), 500):  # SQLite's bound-parameter limit
        part = ids[s : s + 500]
        q = f"SELECT id, vec FROM vectors WHERE id IN ({','.join('?' * len(part))})"
        found.update(conn.execute(q, part).fetchall())
    missing = [i for i in ids if i not in found]
    if missing:
        raise ReIDError(f"gallery: no entry with id {missing[0]}")
    return np.stack([np.frombuffer(found[i], dtype=np.float32) for i in ids]) if ids else np.zeros((0, dim), np.float32)


# ----------------------------------------------------------------------------- the model row


def model_identity(conn: sqlite3.Connection, db: Path) -> ModelIdentity:
    """The stored model identity of a gallery database."""
    row = conn.execute("SELECT identity, source, feat_dim, input_h, input_w, mean, std FROM model").fetchone()
    if row is None:
        raise OptionError("db", f"{db / DB_FILE} has no model row")
    return ModelIdentity(
        row[0], row[1], int(row[2]), (int(row[3]), int(row[4])), tuple(json.loads(row[5])), tuple(json.loads(row[6]))
    )


def model_row(ident: ModelIdentity) -> tuple:
    """The `model` table row of an identity."""
    return (
        ident.name,
        ident.source,
        ident.feat_dim,
        ident.input_size[0],
        ident.input_size[1],
        json.dumps(list(ident.mean)),
        json.dumps(list(ident.std)),
    )


def not_a_gallery(db: Path) -> ReIDError:
    """The error for a folder without a gallery database."""
    return OptionError("db", f"{db} is not a gallery (expected {DB_FILE}; create one with `reidkit index build`)")
