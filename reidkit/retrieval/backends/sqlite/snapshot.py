"""A pinned generation of the embedded backend: one WAL read transaction plus the faiss index of that generation."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from reidkit.errors import OptionError, ReIDError
from reidkit.retrieval.ann import DEFAULT_REFINE_K, index_params, refine_exact, set_search_params
from reidkit.inference import ModelIdentity
from reidkit.retrieval.backends.protocol import SearchFilter
from reidkit.retrieval.store import ENTRY_FIELDS, KINDS
from reidkit.retrieval.backends.sqlite.schema import (
    DB_FILE,
    SCHEMA_VERSION,
    connect_read,
    model_identity,
    next_id,
    not_a_gallery,
    read_info,
    read_vectors,
    schema_version,
)
from reidkit.retrieval.backends.sqlite.generations import cache_path, index_from_store, write_cache

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
    return {
        "camids": camids,
        "cameras": cameras,
        "camera_names": names,
        "kinds": kinds,
        "t_start": t_start,
        "t_end": t_end,
        "n_images": n_img,
        "n_tracklets": n_trk,
    }


class SQLiteSnapshot:
    """One generation of a gallery: a pinned SQLite read transaction (WAL) plus the matching faiss index."""

    def __init__(
        self,
        db: Path,
        conn: sqlite3.Connection,
        info: dict[str, str],
        identity: ModelIdentity,
        index: Any,
        arrays: dict[str, Any],
    ) -> None:
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
                raise OptionError(
                    "db",
                    f"{db} was written by an older reidkit (index.faiss + meta.sqlite without "
                    f"vectors); convert it once with `reidkit index repair --db {db}`",
                )
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
            for r in self.query(
                f"SELECT {_SELECT_FIELDS} FROM entries WHERE id IN ({','.join('?' * len(part))})", part
            ):
                out[r[0]] = _row_dict(r)
        return out

    def vectors(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Stored features of the given ids."""
        with self.lock:
            return read_vectors(self.conn, ids, self.identity.feat_dim)

    def entries(
        self, kind: str | None = None, tracklet: str | None = None, camera: str | None = None
    ) -> list[dict[str, Any]]:
        """Stored entries matching all given filters, in id order."""
        where, params = [], []
        for col, v in (("kind", kind), ("tracklet", tracklet), ("camera", camera)):
            if v is not None:
                where.append(f"{col} = ?")
                params.append(v)
        sql = (
            f"SELECT {_SELECT_FIELDS} FROM entries"
            + (f" WHERE {' AND '.join(where)}" if where else "")
            + " ORDER BY id"
        )
        return [_row_dict(r) for r in self.query(sql, params)]

    def image_paths(self) -> set[str]:
        """Paths of the image entries."""
        return {p for (p,) in self.query("SELECT path FROM entries WHERE kind = 'image'")}

    # -- search --------------------------------------------------------------------------------

    def search(
        self, feats: np.ndarray, k: int, filters: Sequence[SearchFilter], nprobe: int | None = None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
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

    def _filtered(
        self, q: np.ndarray, ids: np.ndarray, scores: np.ndarray, f: SearchFilter, need: int, fetch: int
    ) -> tuple[np.ndarray, np.ndarray]:
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
            return cast(tuple[np.ndarray, np.ndarray], self.index.search(feats, k))  # faiss: (scores, ids)
        refine = int(self.info.get("refine_k", DEFAULT_REFINE_K))
        _, cand = self.index.search(feats, min(self.count, k * max(1, refine)))
        return refine_exact(feats, cand, self.vectors, k)
