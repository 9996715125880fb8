"""Generations of the embedded backend: the writer lock, the faiss cache of each generation, build folders
published by one exchange, and recovery of an interrupted publish."""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import shutil
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from reidkit.errors import OptionError, ReIDError
from reidkit.utils.locks import PidLock
from reidkit.retrieval.ann import HNSW_M, default_nlist, default_pq_m, make_faiss_index
from reidkit.inference import ModelIdentity
from reidkit.retrieval.backends.protocol import crash_point
from reidkit.utils.io import atomic_write, clean_stale_temps, pid_alive
from reidkit.retrieval.backends.sqlite.schema import (
    DB_FILE,
    LEGACY_INDEX,
    iter_vectors,
    lock_timeout,
    read_info,
    read_key,
    read_vectors,
    storage_error,
    write_transaction,
)

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

    def __init__(self, db: Path, timeout: float | None = None, on_wait: Callable[[str], None] | None = None) -> None:
        self.db = Path(db)
        super().__init__(lock_path(self.db), lock_timeout() if timeout is None else float(timeout), on_wait)

    def waiting_message(self) -> str:
        return f"waiting for the writer lock on {self.db} (held by pid {self.holder()})"

    def timeout_error(self) -> ReIDError:
        return OptionError(
            "db",
            f"{self.db} is being written by another process (pid {self.holder()}); "
            f"gave up after waiting {self.timeout:g} s for its writer lock "
            f"(set $REIDKIT_LOCK_TIMEOUT to wait longer)",
        )

    def open_error(self, exc: OSError) -> ReIDError:
        return OptionError("db", f"cannot create the writer lock {self.path}: {exc.strerror or exc}")

    @staticmethod
    def is_held(db: Path) -> bool:
        """True when some process holds the writer lock of `db` right now (probe, never blocks)."""
        return PidLock.held(lock_path(Path(db)))


# ----------------------------------------------------------------------------- faiss cache files


def cache_path(db: Path, generation: int) -> Path:
    """The faiss cache file of one generation."""
    return Path(db) / f"index.g{int(generation)}.faiss"


def write_cache(db: Path, generation: int, index: Any) -> Path:
    """Write the faiss index of `generation` atomically (unique temp + rename); returns its path."""
    import faiss

    path = cache_path(db, generation)
    with atomic_write(path, "wb") as fh:
        # PyCallbackIOWriter is in faiss's SWIG module but not in the stubs faiss ships (__init__.pyi)
        faiss.write_index(index, faiss.PyCallbackIOWriter(fh.write))  # type: ignore[attr-defined]
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
        raise OptionError(
            "db",
            f"cannot publish the new gallery at {db}: {exc.strerror or exc}; "
            f"the previous content (if any) is unchanged",
        ) from None


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


# ----------------------------------------------------------------------------- the faiss index of a snapshot


def index_from_store(conn: sqlite3.Connection, info: dict[str, str], dim: int, db: Path) -> Any:
    """Rebuild the faiss index of the snapshot `conn` reads: the trained empty index (IVF kinds) plus every vector."""
    import faiss

    kind = info.get("index_kind", "flat")
    if kind in ("ivf", "ivfpq"):
        row = conn.execute("SELECT value FROM blobs WHERE key = 'trained'").fetchone()
        if row is None:
            raise OptionError(
                "db",
                f"{db} is inconsistent: the {kind} index has no trained quantiser stored; "
                f"run `reidkit index repair --db {db}`",
            )
        index = faiss.deserialize_index(np.frombuffer(row[0], dtype=np.uint8).copy())
    else:
        index = make_faiss_index(kind, dim, hnsw_m=int(info.get("hnsw_m", HNSW_M)))
    for ids, vecs in iter_vectors(conn, dim):
        index.add_with_ids(np.ascontiguousarray(vecs), ids)
    return index


def finish_new(
    tmp: Path,
    conn: sqlite3.Connection,
    ident: ModelIdentity,
    kind: str,
    nlist: int | None,
    pq_m: int | None,
    progress: Callable[[str], None] | None,
) -> None:
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
        raise OptionError(
            "db", f"{db} already holds a gallery; use `reidkit index add` to append or --overwrite to rebuild it"
        )
    if not has_gallery:
        others = [p.name for p in db.iterdir()]
        if others:
            raise OptionError(
                "db", f"{db} is a folder with other files in it ({others[0]}, ...); give a new or empty folder"
            )
        return 0
    key = read_key(db)
    return key[1] if key else 0
