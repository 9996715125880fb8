"""Crash-consistent gallery storage: vectors and metadata in one SQLite file; faiss is only a cache.

A gallery folder ``DB`` holds

- ``meta.sqlite`` (WAL mode): ``entries`` (one row per image or tracklet: path, kind, camera,
  frame span, time span, JSON meta), ``vectors`` (the float32 feature of each entry, as a blob),
  ``model`` (what made the features), ``info`` (index settings, ``generation``, ``uid``),
  ``state`` (key -> JSON, e.g. video-ingestion progress) and ``blobs`` (the trained, empty faiss
  index of IVF kinds, so a rebuild never re-trains);
- ``index.g<N>.faiss``: the faiss index of generation N. It is a cache: when the file for the
  current generation is missing (a writer was killed after its commit) it is rebuilt from the
  vectors in SQLite.

Consistency by construction:

- Every write (add, delete, state) is ONE SQLite transaction that also increments
  ``info.generation``. The commit publishes the generation; a crash before it leaves the old
  generation whole (SQLite rolls the journal back), a crash after it leaves the new one whole
  (its faiss cache is rebuilt on the next open). Nothing outside SQLite has to agree with it.
- ``build --overwrite`` writes a complete new gallery in a sibling temp folder and publishes it
  by exchanging the two folders in one ``renameat2(RENAME_EXCHANGE)`` call (Linux); the old
  folder stays whole until then. Processes that had the old database open keep reading the old
  files through their open descriptors. Where the exchange is not available two renames are used
  and an interrupted publish is rolled forward/back by :func:`recover` on the next open.
- One writer at a time: an exclusive ``fcntl.flock`` on ``.<name>.writer.lock`` beside the
  folder (beside, so it survives the folder exchange). A second writer waits, saying who holds
  it, up to a timeout, then fails with a :class:`ReIDError`.
- Readers take a WAL read transaction: they see one generation for as long as they hold it and
  never block writers (nor are blocked by them).

Test hook: ``REIDKIT_TEST_CRASH_AT=<point>`` makes the process ``os._exit(137)`` at that named
point (see :data:`CRASH_POINTS`), so the fault-injection tests can kill writers inside the
publish step deterministically.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import secrets
import shutil
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from reidkit.errors import OptionError, ReIDError
from reidkit.utils.locks import PidLock
from reidkit.retrieval.ann import (DEFAULT_REFINE_K, HNSW_M, default_nlist, default_pq_m,
                                   index_params, make_faiss_index, refine_exact, set_search_params)
from reidkit.inference import ModelIdentity
from reidkit.retrieval.store import CRASH_ENV, CRASH_POINTS, ENTRY_FIELDS, KINDS, SearchFilter, crash_point
from reidkit.utils.io import atomic_write, clean_stale_temps, pid_alive

__all__ = [
    "DB_FILE", "LEGACY_INDEX", "SCHEMA_VERSION", "CRASH_ENV", "CRASH_POINTS", "WriterLock", "SQLiteStore",
    "SQLiteSnapshot", "SQLiteBuilder", "crash_point", "connect", "connect_read", "write_transaction",
    "storage_error", "create_db", "schema_version", "read_info", "read_key", "cache_path", "write_cache",
    "drop_old_caches", "publish_folder", "new_build_folder", "recover", "clean_for_write", "insert_entries",
    "iter_vectors", "read_vectors", "next_id", "bump_generation", "begin_write", "busy_timeout", "lock_timeout",
    "lock_path", "model_identity", "model_row", "index_from_store", "finish_new", "existing_generation",
    "not_a_gallery", "folder_writable",
]

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
_COLUMNS = ("id", "path", "kind", "camid", "camera", "tracklet", "frame_start", "frame_end", "t_start", "t_end",
            "width", "height", "meta")


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


# ----------------------------------------------------------------------------- writer lock


def lock_path(db: Path) -> Path:
    """The writer-lock file of gallery folder `db`: beside it, so a folder exchange does not move it."""
    db = Path(db).absolute()
    return db.parent / f".{db.name}.writer.lock"


class WriterLock(PidLock):
    """Exclusive writer lock of a gallery (reidkit.utils.locks.PidLock on a file beside the folder).

    A second writer polls; after the first failed attempt it calls `on_wait` once with
    "waiting for the writer lock on DB (held by pid N)", and after `timeout` seconds raises
    ReIDError. The lock dies with its process (flock), so a killed writer never leaves it held.
    """

    def __init__(self, db: Path, timeout: float | None = None,
                 on_wait: Callable[[str], None] | None = None) -> None:
        self.db = Path(db)
        super().__init__(lock_path(self.db), lock_timeout() if timeout is None else float(timeout), on_wait)

    def waiting_message(self) -> str:
        return f"waiting for the writer lock on {self.db} (held by pid {self.holder()})"

    def timeout_error(self) -> ReIDError:
        return OptionError("db", f"{self.db} is being written by another process (pid {self.holder()}); "
                         f"gave up after waiting {self.timeout:g} s for its writer lock "
                         f"(set $REIDKIT_LOCK_TIMEOUT to wait longer)")

    def open_error(self, exc: OSError) -> ReIDError:
        return OptionError("db", f"cannot create the writer lock {self.path}: {exc.strerror or exc}")

    @staticmethod
    def is_held(db: Path) -> bool:
        """True when some process holds the writer lock of `db` right now (probe, never blocks)."""
        return PidLock.held(lock_path(Path(db)))


# ----------------------------------------------------------------------------- SQLite


def connect(path: Path, timeout: float | None = None) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit BEGIN/COMMIT), usable from any thread."""
    conn = sqlite3.connect(str(path), timeout=busy_timeout() if timeout is None else timeout,
                           check_same_thread=False, isolation_level=None)
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
            conn = sqlite3.connect(target, timeout=busy_timeout(), check_same_thread=False, isolation_level=None,
                                   uri=target.startswith("file:"))
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


_STORAGE_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exhausted",
                   errno.EFBIG: "the file size limit was reached", errno.EROFS: "the storage is read-only",
                   errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.EIO: "disk I/O error"}
_SQLITE_STORAGE = (("database or disk is full", "the disk is full"), ("disk I/O error", "disk I/O error"),
                   ("readonly database", "the storage is read-only"),
                   ("unable to open database file", "the database file cannot be opened for writing"))


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
        conn.executemany("INSERT INTO info VALUES (?, ?)",
                         sorted({**info, "schema_version": str(SCHEMA_VERSION)}.items()))
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
        raise OptionError("db", f"{db / DB_FILE} stayed locked by another connection for more than "
                        f"{busy_timeout():g} s ({exc}); nothing was written, the gallery is unchanged") from None


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


def insert_entries(conn: sqlite3.Connection, ids: Sequence[int], rows: Sequence[dict[str, Any]],
                   vectors: np.ndarray, db: Path | None = None) -> list[int]:
    """Insert normalised entries with the given ids and their vectors (caller's transaction); returns the ids."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = [int(i) for i in ids]
    try:
        conn.executemany(f"INSERT INTO entries ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                         [(i, *(r[c] for c in _COLUMNS[1:])) for i, r in zip(ids, rows)])
    except sqlite3.IntegrityError as exc:
        msg = str(exc)
        what = "a tracklet key" if "tracklet" in msg else "an image path"
        raise OptionError("db", f"{db or 'gallery'}: {what} is already in the gallery ({msg}); nothing was written") from None
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


def read_vectors(conn: sqlite3.Connection, ids: Sequence[int], dim: int) -> np.ndarray:
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


# ----------------------------------------------------------------------------- faiss cache files


def cache_path(db: Path, generation: int) -> Path:
    """The faiss cache file of one generation."""
    return Path(db) / f"index.g{int(generation)}.faiss"


def write_cache(db: Path, generation: int, index: Any) -> Path:
    """Write the faiss index of `generation` atomically (unique temp + rename); returns its path."""
    import faiss

    path = cache_path(db, generation)
    with atomic_write(path, "wb") as fh:
        faiss.write_index(index, faiss.PyCallbackIOWriter(fh.write))
        fh.flush()
        crash_point("cache_temp_written")
    return path


def drop_old_caches(db: Path, keep: int) -> None:
    """Remove the cache files of other generations (and a legacy index.faiss)."""
    for p in Path(db).glob("index.g*.faiss"):
        if p.name != cache_path(db, keep).name:
            try:
                p.unlink()
            except OSError:
                pass


# ----------------------------------------------------------------------------- folders


def new_build_folder(db: Path) -> Path:
    """A fresh temp folder beside `db` for a new gallery (`.<name>.build.<pid>.<random>.tmp`)."""
    db = Path(db).absolute()
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        tmp = db.parent / f".{db.name}.build.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        tmp.mkdir()
    except OSError as exc:
        raise OptionError("db", f"cannot create a folder beside {db}: {exc.strerror or exc}") from None
    return tmp


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False when the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OptionError("db", f"cannot publish the new gallery at {b}: {os.strerror(err)}")


def publish_folder(tmp: Path, db: Path) -> None:
    """Make the complete gallery in `tmp` appear as `db` in one step; the old folder is removed after."""
    try:
        _publish(Path(tmp), Path(db).absolute())
    except OSError as exc:
        raise OptionError("db", f"cannot publish the new gallery at {db}: {exc.strerror or exc}; "
                        f"the previous content (if any) is unchanged") from None


def _publish(tmp: Path, db: Path) -> None:
    if db.exists():
        if _exchange(tmp, db):
            crash_point("build_after_publish")
            shutil.rmtree(tmp, ignore_errors=True)
            return
        # Fallback: two renames; recover() finishes an interrupted pair on the next open.
        old = db.parent / f".{db.name}.old.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        os.rename(db, old)
        try:
            os.rename(tmp, db)
        except OSError:
            os.rename(old, db)  # put the old gallery back
            raise
        crash_point("build_after_publish")
        shutil.rmtree(old, ignore_errors=True)
        return
    os.rename(tmp, db)
    crash_point("build_after_publish")


def recover(db: Path) -> None:
    """Finish a publish interrupted between its two renames (fallback path): put a whole gallery back at `db`."""
    db = Path(db).absolute()
    if (db / DB_FILE).exists() or not db.parent.is_dir():
        return
    # Roll back: the old folder is whole (the new one may be too, but its command did not finish).
    for cand in sorted(db.parent.glob(f".{db.name}.old.*.tmp"), key=lambda p: p.stat().st_mtime, reverse=True):
        pid = _pid_of(cand.name)
        if pid is not None and pid != os.getpid() and pid_alive(pid):
            continue
        if (cand / DB_FILE).is_file():
            if db.exists() and not any(db.iterdir()):
                db.rmdir()
            if not db.exists():
                os.rename(cand, db)
                return


def _pid_of(name: str) -> int | None:
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part in ("build", "old") and i + 1 < len(parts) and parts[i + 1].isdigit():
            return int(parts[i + 1])
    return None


def clean_for_write(db: Path) -> list[Path]:
    """Remove what killed writers left: temp build folders beside `db`, temp files inside it. Returns them."""
    db = Path(db).absolute()
    removed: list[Path] = []
    if db.parent.is_dir():
        for pattern in (f".{db.name}.build.*.tmp", f".{db.name}.old.*.tmp"):
            for cand in db.parent.glob(pattern):
                pid = _pid_of(cand.name)
                if pid is not None and (pid == os.getpid() or pid_alive(pid)):
                    continue
                shutil.rmtree(cand, ignore_errors=True)
                removed.append(cand)
    if db.is_dir():
        removed.extend(clean_stale_temps(db))
    return removed


def folder_writable(db: Path) -> bool:
    """True when new files can be made in gallery folder `db` and its database written."""
    db = Path(db)
    return os.access(db, os.W_OK | os.X_OK) and (not (db / DB_FILE).exists() or os.access(db / DB_FILE, os.W_OK))


# ----------------------------------------------------------------------------- the model row


def model_identity(conn: sqlite3.Connection, db: Path) -> ModelIdentity:
    """The stored model identity of a gallery database."""
    row = conn.execute("SELECT identity, source, feat_dim, input_h, input_w, mean, std FROM model").fetchone()
    if row is None:
        raise OptionError("db", f"{db / DB_FILE} has no model row")
    return ModelIdentity(row[0], row[1], int(row[2]), (int(row[3]), int(row[4])),
                         tuple(json.loads(row[5])), tuple(json.loads(row[6])))


def model_row(ident: ModelIdentity) -> tuple:
    """The `model` table row of an identity."""
    return (ident.name, ident.source, ident.feat_dim, ident.input_size[0], ident.input_size[1],
            json.dumps(list(ident.mean)), json.dumps(list(ident.std)))


def not_a_gallery(db: Path) -> ReIDError:
    """The error for a folder without a gallery database."""
    return OptionError("db", f"{db} is not a gallery (expected {DB_FILE}; create one with `reidkit index build`)")


# ----------------------------------------------------------------------------- the faiss index of a snapshot


def index_from_store(conn: sqlite3.Connection, info: dict[str, str], dim: int, db: Path) -> Any:
    """Rebuild the faiss index of the snapshot `conn` reads: the trained empty index (IVF kinds) plus every vector."""
    import faiss

    kind = info.get("index_kind", "flat")
    if kind in ("ivf", "ivfpq"):
        row = conn.execute("SELECT value FROM blobs WHERE key = 'trained'").fetchone()
        if row is None:
            raise OptionError("db", f"{db} is inconsistent: the {kind} index has no trained quantiser stored; "
                            f"run `reidkit index repair --db {db}`")
        index = faiss.deserialize_index(np.frombuffer(row[0], dtype=np.uint8).copy())
    else:
        index = make_faiss_index(kind, dim, hnsw_m=int(info.get("hnsw_m", HNSW_M)))
    for ids, vecs in iter_vectors(conn, dim):
        index.add_with_ids(np.ascontiguousarray(vecs), ids)
    return index


def finish_new(tmp: Path, conn: sqlite3.Connection, ident: ModelIdentity, kind: str, nlist: int | None,
               pq_m: int | None, progress: Callable[[str], None] | None) -> None:
    """Train (IVF kinds) on a sample of the stored vectors, store the trained index, write the faiss cache."""
    import faiss

    dim = ident.feat_dim
    with write_transaction(conn, tmp, immediate=False):
        info = read_info(conn)
        extra: dict[str, str] = {}
        if kind in ("ivf", "ivfpq"):
            ids = [r[0] for r in conn.execute("SELECT id FROM vectors")]
            n = len(ids)
            nl = int(nlist or default_nlist(n))
            if nl > n:
                raise OptionError("nlist", f"more lists than gallery images ({n})", value=nl)
            m = int(pq_m or default_pq_m(dim)) if kind == "ivfpq" else None
            rng = np.random.default_rng(0)
            # 64 training points per list: stable centroids at a quarter of faiss's default k-means cost
            # (the setting benchmarks/bench_million.py measured)
            sample = np.sort(rng.choice(n, size=min(n, 64 * nl), replace=False))
            train = read_vectors(conn, [ids[i] for i in sample], dim)
            if progress is not None:
                progress(f"training the {kind} quantiser ({nl} lists) on {len(train)} features")
            trained = make_faiss_index(kind, dim, train=train, nlist=nl, pq_m=m)
            conn.execute("INSERT INTO blobs VALUES ('trained', ?)", (faiss.serialize_index(trained).tobytes(),))
            extra = {"nlist": str(nl)}
            if m is not None:
                extra["pq_m"] = str(m)
        for k, v in extra.items():
            conn.execute("INSERT OR REPLACE INTO info VALUES (?, ?)", (k, v))
    info.update(extra)
    with write_transaction(conn, tmp, immediate=False):
        index = index_from_store(conn, info, dim, tmp)
    try:
        write_cache(tmp, int(info["generation"]), index)
    except OSError as exc:
        raise storage_error(tmp, exc) or exc from None


def existing_generation(db: Path, overwrite: bool) -> int:
    """Generation of the gallery `build` replaces (0 for none); refuses to replace without `overwrite`."""
    if not db.exists():
        return 0
    if not db.is_dir():
        raise OptionError("db", f"{db} exists and is not a folder")
    has_gallery = (db / DB_FILE).exists() or (db / LEGACY_INDEX).exists()
    if has_gallery and not overwrite:
        raise OptionError("db", f"{db} already holds a gallery; use `reidkit index add` to append "
                        f"or --overwrite to rebuild it")
    if not has_gallery:
        others = [p.name for p in db.iterdir()]
        if others:
            raise OptionError("db", f"{db} is a folder with other files in it ({others[0]}, ...); "
                            f"give a new or empty folder")
        return 0
    key = read_key(db)
    return key[1] if key else 0


# ----------------------------------------------------------------------------- snapshots

_KIND_CODE = {k: i for i, k in enumerate(KINDS)}
_SELECT_FIELDS = "id, path, camid, camera, kind, tracklet, frame_start, frame_end, t_start, t_end, meta, width, height"


def _row_dict(row: Sequence[Any]) -> dict[str, Any]:
    d = dict(zip(ENTRY_FIELDS + ("width", "height"), row))
    d["meta"] = json.loads(d["meta"]) if d["meta"] else None
    return d


def _arrays(rows: list[tuple], size: int) -> dict[str, Any]:
    camids = np.full(size, -1, dtype=np.int64)
    cameras = np.full(size, -1, dtype=np.int32)
    kinds = np.full(size, -1, dtype=np.int8)
    t_start = np.full(size, np.nan, dtype=np.float64)
    t_end = np.full(size, np.nan, dtype=np.float64)
    names: dict[str, int] = {}
    n_img = n_trk = 0
    for i, camid, camera, kind, ts, te in rows:
        if camid is not None:
            camids[i] = camid
        if camera is not None:
            cameras[i] = names.setdefault(camera, len(names))
        kinds[i] = _KIND_CODE.get(kind, -1)
        if ts is not None:
            t_start[i] = ts
        if te is not None:
            t_end[i] = te
        n_img += kind == "image"
        n_trk += kind == "tracklet"
    return {"camids": camids, "cameras": cameras, "camera_names": names, "kinds": kinds, "t_start": t_start,
            "t_end": t_end, "n_images": n_img, "n_tracklets": n_trk}


class SQLiteSnapshot:
    """One generation of a gallery: a pinned SQLite read transaction (WAL) plus the matching faiss index."""

    def __init__(self, db: Path, conn: sqlite3.Connection, info: dict[str, str], identity: ModelIdentity,
                 index: Any, arrays: dict[str, Any]) -> None:
        self.db = db
        self.conn = conn
        self.info = info
        self.identity = identity
        self.index = index
        self.uid = info.get("uid", "")
        self.generation = int(info.get("generation", "0"))
        self.count = int(index.ntotal)
        self.arrays = arrays
        self.n_images = int(arrays["n_images"])
        self.n_tracklets = int(arrays["n_tracklets"])
        # faiss search parameters and the shared SQLite connection are per-snapshot state
        self.lock = threading.RLock()

    @property
    def key(self) -> tuple[str, int]:
        """(uid, generation): changes with every write and with every rebuild."""
        return self.uid, self.generation

    @classmethod
    def load(cls, db: Path, index: Any = None, save_cache: bool = True, readonly: bool = False) -> SQLiteSnapshot:
        """Pin the current generation of `db`; use `index` (already made by the writer) or the cache, else rebuild."""
        import faiss

        if not (db / DB_FILE).is_file():
            raise not_a_gallery(db)
        conn = connect_read(db / DB_FILE, readonly=readonly)
        try:
            conn.execute("BEGIN")  # deferred, held open: the first SELECT pins the WAL snapshot
            version = schema_version(conn)
            if version == 1:
                raise OptionError("db", f"{db} was written by an older reidkit (index.faiss + meta.sqlite without "
                                f"vectors); convert it once with `reidkit index repair --db {db}`")
            if version != SCHEMA_VERSION:
                raise OptionError("db", f"{db / DB_FILE} is not a reidkit gallery database")
            info = read_info(conn)
            ident = model_identity(conn, db)
            rows = conn.execute("SELECT id, camid, camera, kind, t_start, t_end FROM entries").fetchall()
            size = next_id(conn)
            arrays = _arrays(rows, size)
            gen = int(info.get("generation", "0"))
            if index is not None and int(index.ntotal) != len(rows):
                index = None
            cached = cache_path(db, gen)
            # the writer's fresh index is written as this generation's cache; a cache read back is not
            rewrite = index is not None
            if index is None and cached.is_file():
                try:
                    index = faiss.read_index(str(cached))
                except RuntimeError:
                    index = None
                if index is not None and (int(index.ntotal) != len(rows) or index.d != ident.feat_dim):
                    index = None  # a damaged cache: rebuilt below and written again
            if index is None:
                index = index_from_store(conn, info, ident.feat_dim, db)
                rewrite = True
            if save_cache and rewrite and not readonly:
                try:
                    write_cache(db, gen, index)
                except (ReIDError, OSError):
                    pass  # a read-only or full folder: the cache is rebuilt in memory each time
            params = index_params(info)
            set_search_params(index, params["nprobe"], params["ef_search"])
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise OptionError("db", f"{db / DB_FILE} is not a readable reidkit gallery database ({exc})") from None
        except BaseException:
            conn.close()
            raise
        return cls(db, conn, info, ident, index, arrays)

    def close(self) -> None:
        """End the read transaction (the WAL can then be checkpointed past it)."""
        try:
            self.conn.close()
        except sqlite3.Error:
            pass

    def __del__(self) -> None:
        self.close()

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        """Run a read query inside this snapshot's transaction."""
        with self.lock:
            return self.conn.execute(sql, params).fetchall()

    def rows(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """Stored fields of the given ids."""
        out: dict[int, dict[str, Any]] = {}
        ids = [int(i) for i in ids]
        for s in range(0, len(ids), 500):  # SQLite's bound-parameter limit
            part = ids[s : s + 500]
            for r in self.query(f"SELECT {_SELECT_FIELDS} FROM entries WHERE id IN ({','.join('?' * len(part))})", part):
                out[r[0]] = _row_dict(r)
        return out

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """Stored features of the given ids."""
        with self.lock:
            return read_vectors(self.conn, ids, self.identity.feat_dim)

    def entries(self, kind: str | None = None, tracklet: str | None = None,
                camera: str | None = None) -> list[dict[str, Any]]:
        """Stored entries matching all given filters, in id order."""
        where, params = [], []
        for col, v in (("kind", kind), ("tracklet", tracklet), ("camera", camera)):
            if v is not None:
                where.append(f"{col} = ?")
                params.append(v)
        sql = f"SELECT {_SELECT_FIELDS} FROM entries" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY id"
        return [_row_dict(r) for r in self.query(sql, params)]

    def image_paths(self) -> set[str]:
        """Paths of the image entries."""
        return {p for (p,) in self.query("SELECT path FROM entries WHERE kind = 'image'")}

    # -- search --------------------------------------------------------------------------------

    def search(self, feats: np.ndarray, k: int, filters: Sequence[SearchFilter],
               nprobe: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per row: (ids, scores) of its top k passing its filter; the faiss search deepens until enough pass."""
        n = self.count
        if n == 0:
            return [(np.zeros(0, np.int64), np.zeros(0, np.float32)) for _ in feats]
        k = min(int(k), n)
        filtering = any(f.active() for f in filters)
        fetch = min(n, k * 2 if filtering else k)
        out = []
        with self.lock:
            if nprobe is not None:
                set_search_params(self.index, nprobe)
            try:
                scores, ids = self._search_index(feats, fetch)
                for b in range(len(feats)):
                    out.append(self._filtered(feats[b], ids[b], scores[b], filters[b], k, fetch))
            finally:
                if nprobe is not None:
                    set_search_params(self.index, index_params(self.info)["nprobe"])
        return out

    def _keep(self, ids: np.ndarray, f: SearchFilter) -> np.ndarray:
        a = self.arrays
        keep = ids >= 0
        safe = np.clip(ids, 0, max(len(a["camids"]) - 1, 0))
        if f.exclude_camid is not None:
            keep &= a["camids"][safe] != int(f.exclude_camid)
        if f.exclude_camera is not None:
            keep &= a["cameras"][safe] != a["camera_names"].get(f.exclude_camera, -2)
        if f.camera is not None:
            keep &= a["cameras"][safe] == a["camera_names"].get(f.camera, -2)
        if f.kind is not None:
            keep &= a["kinds"][safe] == _KIND_CODE[f.kind]
        with np.errstate(invalid="ignore"):  # NaN (no time) compares False: dropped under a time bound
            if f.t_min is not None:
                keep &= a["t_end"][safe] >= float(f.t_min)
            if f.t_max is not None:
                keep &= a["t_start"][safe] <= float(f.t_max)
        return keep

    def _filtered(self, q: np.ndarray, ids: np.ndarray, scores: np.ndarray, f: SearchFilter, need: int,
                  fetch: int) -> tuple[np.ndarray, np.ndarray]:
        n = self.count
        while True:
            keep = self._keep(ids, f)
            if keep.sum() >= need or fetch >= n:
                return ids[keep][:need], scores[keep][:need]
            # Too many candidates were filtered out: look deeper.
            fetch = min(n, fetch * 4)
            s, i = self._search_index(q[None], fetch)
            ids, scores = i[0], s[0]

    def _search_index(self, feats: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """faiss search; for ivfpq the top refine_k * k PQ candidates are re-scored exactly from the store."""
        if self.info.get("index_kind") != "ivfpq":
            return self.index.search(feats, k)
        refine = int(self.info.get("refine_k", DEFAULT_REFINE_K))
        _, cand = self.index.search(feats, min(self.count, k * max(1, refine)))
        return refine_exact(feats, cand, self.vectors, k)


# ----------------------------------------------------------------------------- the store


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class SQLiteStore:
    """The embedded gallery backend: a folder with meta.sqlite (generations) and a faiss cache per generation."""

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
    def builder(cls, location: str | os.PathLike, collection: str | None = None, overwrite: bool = False,
                settings: dict[str, Any] | None = None, lock_timeout: float | None = None,
                progress: Callable[[str], None] | None = None) -> SQLiteBuilder:
        """A new gallery built beside `location` and published whole (see SQLiteBuilder)."""
        if collection is not None:
            raise OptionError("collection", f"applies to milvus: galleries only, not to the folder {location}")
        return SQLiteBuilder(Path(location), overwrite, settings or {}, lock_timeout, progress)

    def snapshot(self, index: Any = None) -> SQLiteSnapshot:
        """Pin the newest generation."""
        return SQLiteSnapshot.load(self.db, index=index, readonly=self.readonly)

    def stored_key(self) -> tuple[str, int] | None:
        """(uid, generation) now on disk (one tiny read)."""
        return read_key(self.db)

    def settling(self, key: tuple[str, int]) -> bool:
        """A writer committed `key` but has not written its faiss cache yet (it still holds the writer lock)."""
        return not cache_path(self.db, key[1]).is_file() and WriterLock.is_held(self.db)

    def check_writable(self) -> None:
        """ReIDError when the gallery was opened read-only (before any work is done)."""
        if self.readonly:
            raise OptionError("db", f"{self.db} is read-only (opened for search and check only); "
                            f"nothing was changed")

    def _commit(self, base: SQLiteSnapshot, identity: ModelIdentity,
                body: Callable[[sqlite3.Connection], tuple[Any, Callable[[Any], None] | None] | None],
                progress: Callable[[str], None] | None = None,
                lock_timeout: float | None = None) -> tuple[Any, SQLiteSnapshot | None]:
        """Run `body` in one write transaction under the writer lock, publish a new generation.

        `body(conn)` returns None (nothing to write: rolled back) or (result, update) where
        update(index) applies the change to a copy of `base`'s faiss index (None: rebuild).
        Returns (result, the new snapshot) or (None, None).
        """
        import faiss

        self.check_writable()
        db = self.db
        with WriterLock(db, timeout=lock_timeout, on_wait=progress or _stderr):
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
                        raise OptionError("db", f"{db} was written by an older reidkit; run `reidkit index repair --db {db}`")
                    stored = model_identity(conn, db)
                    if not stored.compatible(identity):
                        raise OptionError("db", f"{db} was rebuilt with another model ({stored.label()}) since it was "
                                        f"opened; nothing was written")
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

    def write(self, base: SQLiteSnapshot, identity: ModelIdentity, rows: list[dict[str, Any]], vectors: np.ndarray,
              state: dict[str, str | None] | None = None, skip_existing_images: bool = False,
              corrupt: int | None = None, lock_timeout: float | None = None,
              progress: Callable[[str], None] | None = None) -> tuple[list[int], SQLiteSnapshot | None]:
        """Insert rows + vectors + state (and the unreadable-image count) as one generation; (ids, new snapshot)."""
        state = state or {}

        def body(conn: sqlite3.Connection) -> Any:
            keep = list(range(len(rows)))
            if skip_existing_images:  # another writer may have added some of these since `base` was taken
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

        ids, new = self._commit(base, identity, body, progress=progress, lock_timeout=lock_timeout)
        return ids or [], new

    def delete(self, base: SQLiteSnapshot, identity: ModelIdentity, ids: Sequence[int] | None = None,
               tracklet: str | None = None, camera: str | None = None, path: str | None = None,
               lock_timeout: float | None = None) -> tuple[int, SQLiteSnapshot | None]:
        """Delete the entries matching ALL given criteria as one generation; (count, new snapshot)."""
        where, params = [], []
        if ids is not None:
            where.append(f"id IN ({','.join('?' * len(ids))})")
            params.extend(int(i) for i in ids)
        for col, v in (("tracklet", tracklet), ("camera", camera), ("path", path)):
            if v is not None:
                where.append(f"{col} = ?")
                params.append(str(v))

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
        """The consistency report of reidkit.retrieval.maintenance.check_gallery."""
        from reidkit.retrieval.maintenance import check_gallery

        return check_gallery(self.db)


class SQLiteBuilder:
    """A new gallery folder filled in a temp folder beside `db` and published with one atomic exchange."""

    def __init__(self, db: Path, overwrite: bool, settings: dict[str, Any], lock_timeout: float | None,
                 progress: Callable[[str], None] | None) -> None:
        self.db = Path(db).expanduser().absolute()
        self.overwrite = overwrite
        self.settings = settings
        self.lock_timeout = lock_timeout
        self.progress = progress
        recover(self.db)
        self.old_gen = existing_generation(self.db, overwrite)
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
            self.conn = create_db(self.tmp / DB_FILE, model_row(identity),
                                  {**info, "uid": new_uid(), "generation": str(self.old_gen + 1)})
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
        s = self.settings
        try:
            with write_transaction(self.conn, self.tmp, immediate=False):
                self.conn.execute("INSERT OR REPLACE INTO info VALUES ('corrupt_skipped', ?)", (str(corrupt),))
            crash_point("build_embedded")
            finish_new(self.tmp, self.conn, self.identity, s.get("index_kind", "flat"), s.get("nlist"),
                       s.get("pq_m"), self.progress)
            self.conn.close()
            crash_point("build_before_publish")
            with WriterLock(self.db, timeout=self.lock_timeout, on_wait=self.progress or _stderr):
                if not self.overwrite and (self.db / DB_FILE).exists():
                    raise OptionError("db", existing_error or f"{self.db} already holds a gallery (built meanwhile "
                                                            f"by another process); build with overwrite to replace it")
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
