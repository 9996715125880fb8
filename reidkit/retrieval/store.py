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
import fcntl
import json
import os
import secrets
import shutil
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reidkit.errors import ReIDError
from reidkit.utils.io import pid_alive
from reidkit.utils.io import atomic_write, clean_stale_temps

__all__ = [
    "DB_FILE", "LEGACY_INDEX", "SCHEMA_VERSION", "CRASH_ENV", "CRASH_POINTS", "ENTRY_FIELDS", "WriterLock",
    "crash_point", "connect", "create_db", "schema_version", "read_info", "read_key", "cache_path",
    "write_cache", "drop_old_caches", "publish_folder", "new_build_folder", "recover", "clean_for_write",
    "normalize_entries", "insert_entries", "iter_vectors", "read_vectors", "bump_generation", "begin_write",
    "busy_timeout", "lock_timeout", "lock_path",
]

DB_FILE = "meta.sqlite"
LEGACY_INDEX = "index.faiss"
SCHEMA_VERSION = 2
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
# Every stored field of an entry, in the order search results list them.
ENTRY_FIELDS = ("id", "path", "camid", "camera", "kind", "tracklet", "frame_start", "frame_end",
                "t_start", "t_end", "meta")
KINDS = ("image", "tracklet")
_OPTIONAL = {"camid": int, "camera": str, "tracklet": str, "frame_start": int, "frame_end": int,
             "t_start": float, "t_end": float, "width": int, "height": int}

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


def crash_point(name: str) -> None:
    """Test hook: exit at once (as a SIGKILL would leave things) when $REIDKIT_TEST_CRASH_AT names this point."""
    if os.environ.get(CRASH_ENV) == name:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(137)


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


class WriterLock:
    """Exclusive writer lock of a gallery (fcntl.flock on a file beside the folder); a context manager.

    A second writer polls; after the first failed attempt it calls `on_wait` once with
    "waiting for the writer lock on DB (held by pid N)", and after `timeout` seconds raises
    ReIDError. The lock dies with its process (flock), so a killed writer never leaves it held.
    """

    def __init__(self, db: Path, timeout: float | None = None,
                 on_wait: Callable[[str], None] | None = None) -> None:
        self.db = Path(db)
        self.path = lock_path(self.db)
        self.timeout = lock_timeout() if timeout is None else float(timeout)
        self.on_wait = on_wait
        self._fh: Any = None

    def holder(self) -> str:
        """The pid written by the current holder, or '?'."""
        try:
            text = self.path.read_text().strip()
        except OSError:
            return "?"
        return text or "?"

    def __enter__(self) -> WriterLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(self.path, "a+")  # noqa: SIM115 - held until __exit__
        except OSError as exc:
            raise ReIDError(f"--db: cannot create the writer lock {self.path}: {exc.strerror or exc}") from None
        deadline = time.monotonic() + self.timeout
        told = False
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told and self.on_wait is not None:
                    self.on_wait(f"waiting for the writer lock on {self.db} (held by pid {self.holder()})")
                    told = True
                if time.monotonic() >= deadline:
                    fh.close()
                    raise ReIDError(
                        f"--db: {self.db} is being written by another process (pid {self.holder()}); "
                        f"gave up after waiting {self.timeout:g} s for its writer lock "
                        f"(set $REIDKIT_LOCK_TIMEOUT to wait longer)") from None
                time.sleep(0.05)
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fh is not None:
            try:
                self._fh.seek(0)
                self._fh.truncate()
            except OSError:
                pass
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    @staticmethod
    def is_held(db: Path) -> bool:
        """True when some process holds the writer lock of `db` right now (probe, never blocks)."""
        path = lock_path(Path(db))
        try:
            with open(path, "r") as fh:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    return True
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        except OSError:
            return False
        return False


# ----------------------------------------------------------------------------- SQLite


def connect(path: Path, timeout: float | None = None) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit BEGIN/COMMIT), usable from any thread."""
    conn = sqlite3.connect(str(path), timeout=busy_timeout() if timeout is None else timeout,
                           check_same_thread=False, isolation_level=None)
    return conn


def create_db(path: Path, model_row: Sequence[Any], info: dict[str, str]) -> sqlite3.Connection:
    """Create a new gallery database (WAL) with its schema, model row and info; returns a connection."""
    conn = connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a commit survives a process kill
    conn.executescript(_SCHEMA)
    conn.execute("BEGIN")
    conn.execute("INSERT INTO model VALUES (?, ?, ?, ?, ?, ?, ?)", tuple(model_row))
    conn.executemany("INSERT INTO info VALUES (?, ?)", sorted({**info, "schema_version": str(SCHEMA_VERSION)}.items()))
    conn.execute("COMMIT")
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
        raise ReIDError(f"--db: {db / DB_FILE} stayed locked by another connection for more than "
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
            row["meta"] = None if meta is None else json.dumps(meta, default=_json_default)
        except (TypeError, ValueError) as exc:
            raise ReIDError(f"entries[{i}].meta: not JSON-serialisable ({exc})") from None
        out.append(row)
    return out


def _json_default(obj: Any) -> Any:
    from reidkit.utils.io import json_default

    return json_default(obj)


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
        raise ReIDError(f"--db: {db or 'gallery'}: {what} is already in the gallery ({msg}); nothing was written") from None
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
        raise ReIDError(f"--db: cannot create a folder beside {db}: {exc.strerror or exc}") from None
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
    raise ReIDError(f"--db: cannot publish the new gallery at {b}: {os.strerror(err)}")


def publish_folder(tmp: Path, db: Path) -> None:
    """Make the complete gallery in `tmp` appear as `db` in one step; the old folder is removed after."""
    try:
        _publish(Path(tmp), Path(db).absolute())
    except OSError as exc:
        raise ReIDError(f"--db: cannot publish the new gallery at {db}: {exc.strerror or exc}; "
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
