"""A gallery backend in this process's memory, ``--db memory:NAME``: a complete plug-in of the backend protocol
(reidkit.retrieval.backends.protocol), loaded with ``reidkit --plugin tests/data/memory_backend.py ...`` or
reidkit.plugins.load_plugin. Dict-backed, brute-force numpy search; ids from a counter; no crash-consistency
(nothing outlives the process); side files in a local folder the gallery records (--files)."""
from __future__ import annotations

import json
import secrets
from pathlib import Path

import numpy as np

import reidkit
from reidkit.errors import OptionError, ReIDError
from reidkit.retrieval.backends import FILES_OUTSIDE, Capabilities, WriteBatch
from reidkit.retrieval.backends.protocol import files_folder, passes

GALLERIES: dict[str, dict] = {}  # NAME -> {identity, info, uid, generation, rows {id: row}, vecs {id: vector}, state, files}


class MemorySnapshot:
    index = None  # no faiss index: search() is brute force

    def __init__(self, g: dict) -> None:
        self.identity, self.info, self.uid, self.generation = g["identity"], dict(g["info"]), g["uid"], g["generation"]
        self._rows, self._vecs = dict(g["rows"]), dict(g["vecs"])  # copies: a snapshot never moves
        kinds = [r["kind"] for r in self._rows.values()]
        self.count, self.n_images, self.n_tracklets = len(kinds), kinds.count("image"), kinds.count("tracklet")

    @property
    def key(self) -> tuple[str, int]:
        return self.uid, self.generation

    def search(self, feats, k, filters, nprobe=None):
        ids = np.array(sorted(self._rows), dtype=np.int64)
        mat = np.stack([self._vecs[i] for i in ids]) if len(ids) else np.zeros((0, feats.shape[1]), np.float32)
        out = []
        for q, f in zip(feats, filters):
            keep = np.array([passes(self._rows[i], f) for i in ids], dtype=bool)
            scores = mat[keep] @ q
            order = np.argsort(-scores, kind="stable")[:k]
            out.append((ids[keep][order], scores[order].astype(np.float32)))
        return out

    def rows(self, ids):
        return {int(i): dict(self._rows[int(i)]) for i in ids if int(i) in self._rows}

    def vectors(self, ids):
        missing = [int(i) for i in ids if int(i) not in self._vecs]
        if missing:
            raise ReIDError(f"no entry with id {missing[0]}")
        return np.stack([self._vecs[int(i)] for i in ids]) if len(ids) else np.zeros((0, self.identity.feat_dim))

    def entries(self, kind=None, tracklet=None, camera=None):
        want = {"kind": kind, "tracklet": tracklet, "camera": camera}
        return [dict(r) for _, r in sorted(self._rows.items())
                if all(v is None or r[key] == v for key, v in want.items())]

    def image_paths(self):
        return {r["path"] for r in self._rows.values() if r["kind"] == "image"}

    def close(self) -> None:
        pass


class MemoryStore:
    capabilities = Capabilities(many_writers=False, idempotent_ids=False, files=FILES_OUTSIDE, crash_consistent=False)
    readonly = False

    def __init__(self, db: str) -> None:
        self.location, self.name = db, db.split(":", 1)[1]
        self.g = GALLERIES[self.name]

    @classmethod
    def open(cls, db, collection=None, readonly=False):
        if not cls.exists(db):
            raise OptionError("db", f"{db}: no such gallery in this process")
        return cls(db)

    @classmethod
    def exists(cls, db, collection=None):
        return str(db).split(":", 1)[1] in GALLERIES

    @classmethod
    def builder(cls, location, collection, plan):
        if cls.exists(location) and not plan.overwrite:
            raise OptionError("db", f"{location} already holds a gallery; build with overwrite to replace it")
        return MemoryBuilder(str(location))

    @property
    def files_dir(self) -> Path:
        return Path(self.g["files"] or Path.cwd() / f"{self.name}.files")

    def use_files(self, files=None, default=None) -> Path:
        if self.g["files"] is None and (files or default) is not None:
            self.g["files"] = str(files_folder(files or default))
        return self.files_dir

    def snapshot(self):
        return MemorySnapshot(self.g)

    def stored_key(self):
        return self.g["uid"], self.g["generation"]

    def settling(self, key):
        return False

    def check_writable(self) -> None:
        pass

    def _publish(self):
        self.g["generation"] += 1
        return self.snapshot()

    def write(self, base, identity, batch):
        rows, vectors, state = batch.rows, batch.vectors, batch.state
        skip_existing_images = batch.skip_existing_images
        have = {r["path"] for r in self.g["rows"].values() if r["kind"] == "image"} if skip_existing_images else set()
        keep = [i for i, r in enumerate(rows) if not (r["kind"] == "image" and r["path"] in have)]
        if not keep and not state:
            return [], None
        key = lambda r: (r["kind"], r["tracklet"] if r["kind"] == "tracklet" else r["path"])  # stored once  # noqa: E731
        stored = {key(r) for r in self.g["rows"].values()}
        dup = [rows[i]["path"] for i in keep if key(rows[i]) in stored]
        if dup:
            raise OptionError("db", f"{self.location}: {dup[0]} is already in the gallery; nothing was written")
        start = max(self.g["rows"], default=-1) + 1
        for n, i in enumerate(keep):
            meta = rows[i]["meta"]
            self.g["rows"][start + n] = {**rows[i], "id": start + n, "meta": json.loads(meta) if meta else None}
            self.g["vecs"][start + n] = np.asarray(vectors[i], dtype=np.float32)
        for key, value in (state or {}).items():
            self.g["state"].pop(key, None) if value is None else self.g["state"].__setitem__(key, value)
        return list(range(start, start + len(keep))), self._publish()

    def delete(self, base, identity, match, lock_timeout=None):
        ids = match.ids
        sel = [i for i, r in self.g["rows"].items() if (ids is None or i in set(ids))
               and all(r[key] == v for key, v in match.columns())]
        for i in sel:
            del self.g["rows"][i], self.g["vecs"][i]
        return len(sel), (self._publish() if sel else None)

    def get_state(self, key):
        value = self.g["state"].get(key)
        return None if value is None else json.loads(value)

    def check(self):
        kinds = [r["kind"] for r in self.g["rows"].values()]
        return {"db": self.location, "consistent": True, "problems": [], "generation": self.g["generation"],
                "entries": len(kinds), "images": kinds.count("image"), "tracklets": kinds.count("tracklet")}


class MemoryBuilder:
    def __init__(self, location: str) -> None:
        self.location, self.g = location, None

    def start(self, identity, info):
        self.g = {"identity": identity, "info": dict(info), "uid": secrets.token_hex(6), "generation": 1,
                  "rows": {}, "vecs": {}, "state": {}, "files": None}

    def append(self, rows, vectors):
        MemoryStore.write(self, None, None, WriteBatch(rows, vectors))  # the same insert, on the gallery being built

    def publish(self, corrupt=0, existing_error=""):
        GALLERIES[self.location.split(":", 1)[1]] = self.g
        return MemoryStore(self.location)

    def abort(self):
        self.g = None

    def _publish(self):
        return None


reidkit.register_backend("memory", MemoryStore)
