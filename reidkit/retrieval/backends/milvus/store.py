"""The Milvus backend's snapshot, store and builder (see reidkit.retrieval.backends.milvus)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reidkit.errors import OptionError, ReIDError
from reidkit.inference import ModelIdentity
from reidkit.retrieval.backends.milvus.client import (
    _BATCH,
    _FIELDS,
    _FILES_KEY,
    _INFO_KEY,
    _MAX_TOPK,
    _META_KEY,
    _MODEL_KEY,
    _RESERVED,
    DEFAULT_COLLECTION,
    MILVUS_PREFIX,
    _Collections,
    _expr,
    _parse,
    entry_id,
    files_beside,
    is_server,
)
from reidkit.retrieval.backends.protocol import (
    FILES_OUTSIDE,
    BuildPlan,
    Capabilities,
    DeleteMatch,
    SearchFilter,
    WriteBatch,
    crash_point,
    files_folder,
)
from reidkit.retrieval.store import iter_chunks

__all__ = ["MilvusStore", "MilvusSnapshot", "MilvusBuilder"]


def _entry(d: dict[str, Any]) -> dict[str, Any]:
    return {"id": int(d["id"]), **{f: d.get(f) for f in _FIELDS}}


# SearchFilter field -> Milvus condition (an entry without the field fails a condition on it, except exclusions)
_CONDITIONS = (
    ("exclude_camid", "(camid is null or camid != {exclude_camid})", int),
    ("exclude_camera", "(camera is null or camera != {exclude_camera})", str),
    ("camera", "camera == {camera}", str),
    ("kind", "kind == {kind}", str),
    ("t_min", "t_end >= {t_min}", float),
    ("t_max", "t_start <= {t_max}", float),
)


def _filter_expr(f: SearchFilter) -> str:
    """The Milvus boolean expression of a search filter ("" for none)."""
    return " and ".join(
        _expr(tpl, {name: typ(getattr(f, name))}) for name, tpl, typ in _CONDITIONS if getattr(f, name) is not None
    )


class MilvusSnapshot:
    """Reads of a Milvus gallery at strong consistency (no pinned generation: see the module docstring)."""

    index = None

    def __init__(self, cols: _Collections) -> None:
        self.cols = cols
        self.info = cols.info()
        self.identity = cols.identity()
        self.uid = self.info.get("uid", "")
        self.generation = int(self.info.get("generation", "0"))
        self.count = cols.count()
        self.n_images = cols.count('kind == "image"')
        self.n_tracklets = self.count - self.n_images

    @property
    def key(self) -> tuple[str, int]:
        """(uid, generation) when this snapshot was taken."""
        return self.uid, self.generation

    def search(
        self, feats: np.ndarray, k: int, filters: Sequence[SearchFilter], nprobe: int | None = None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per row: (ids, scores) of its top k passing its filter (filtered inside Milvus)."""
        k = max(1, min(int(k), _MAX_TOPK))
        params: dict[str, Any] = {"metric_type": "IP"}
        if nprobe is not None:
            params["params"] = {"nprobe": int(nprobe)}
        out = []
        groups: dict[SearchFilter, list[int]] = {}
        for b, f in enumerate(filters):
            groups.setdefault(f, []).append(b)
        found: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for f, rows in groups.items():
            res = self.cols.call(
                "search",
                self.cols.client.search,
                self.cols.name,
                data=[feats[b].tolist() for b in rows],
                limit=k,
                filter=_filter_expr(f),
                search_params=params,
                output_fields=[],
                consistency_level="Strong",
            )
            for b, hits in zip(rows, res):
                found[b] = (
                    np.asarray([h["id"] for h in hits], dtype=np.int64),
                    np.asarray([h["distance"] for h in hits], dtype=np.float32),
                )
        for b in range(len(feats)):
            out.append(found[b])
        return out

    def rows(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
        """Stored fields of the given ids that exist."""
        return {int(d["id"]): _entry(d) for d in self.cols.get(ids, _FIELDS)}

    def vectors(self, ids: Sequence[int]) -> np.ndarray:
        """Stored vectors of the given ids, in that order."""
        ids = [int(i) for i in ids]
        got = {int(d["id"]): d["vector"] for d in self.cols.get(ids, ["vector"])}
        missing = [i for i in ids if i not in got]
        if missing:
            raise ReIDError(f"gallery: no entry with id {missing[0]}")
        if not ids:
            return np.zeros((0, self.identity.feat_dim), np.float32)
        return np.asarray([got[i] for i in ids], dtype=np.float32)

    def entries(
        self, kind: str | None = None, tracklet: str | None = None, camera: str | None = None
    ) -> list[dict[str, Any]]:
        """Stored entries matching all given filters, in id order."""
        parts, params = [], {}
        for col, v in (("kind", kind), ("tracklet", tracklet), ("camera", camera)):
            if v is not None:
                parts.append(f"{col} == {{{col}}}")
                params[col] = str(v)
        rows = self.cols.iterate(" and ".join(parts), params, ["id", *_FIELDS])
        return sorted((_entry(d) for d in rows), key=lambda e: e["id"])

    def image_paths(self) -> set[str]:
        """Paths of the image entries."""
        return {d["path"] for d in self.cols.iterate('kind == "image"', {}, ["path"])}

    def close(self) -> None:
        """Nothing to release (the client is shared per process)."""


class MilvusStore:
    """A gallery in a Milvus collection (see the module docstring)."""

    readonly = False
    # content-derived ids (upserts), side files in a local folder, no multi-row transaction; a server admits
    # many writer processes, a Milvus Lite file one (capabilities_for)
    capabilities = Capabilities(many_writers=False, idempotent_ids=True, files=FILES_OUTSIDE, crash_consistent=False)

    @classmethod
    def capabilities_for(cls, db: str | os.PathLike) -> Capabilities:
        """The capabilities of the gallery at `db`: many writers on a server, one process on a Lite file."""
        return dataclasses.replace(cls.capabilities, many_writers=is_server(_parse(db)))

    @staticmethod
    def describe(db: str | os.PathLike, collection: str | None = None) -> str:
        """``milvus:<uri> (collection NAME)``."""
        return f"{db} (collection {collection or DEFAULT_COLLECTION})"

    @staticmethod
    def files_beside(path: str | os.PathLike, collection: str | None = None) -> Path:
        """The default side-file folder of a gallery made from `path` (client.files_beside)."""
        return files_beside(path, collection)

    @classmethod
    def repair_at(cls, db: str | os.PathLike, collection: str | None = None, **_kwargs: Any) -> dict[str, Any]:
        """Nothing to repair (writes are idempotent upserts): the check's entry count."""
        rep = cls.open(db, collection=collection).check()
        return {
            "action": "none needed (Milvus writes are idempotent upserts)",
            "entries": rep["entries"],
            "recovered_from_index": 0,
            "reextracted": 0,
            "dropped": [],
        }

    def __init__(self, location: str, uri: str, collection: str) -> None:
        self.location = location
        self.uri = uri
        self.collection = collection
        self.cols = _Collections(location, uri, collection)
        self._files: Path | None = None  # the folder recorded in the gallery, once read
        self._files_uid: str | None = None  # ... for this build of the gallery (a rebuild records its own)

    @property
    def files_dir(self) -> Path:
        """The local folder of the gallery's side files (video thumbnails): the recorded one, else the default."""
        if self._files is None:
            recorded = self.cols.get_json(_FILES_KEY)
            if not (isinstance(recorded, str) and recorded):
                return self.default_files_dir()
            self._files = Path(recorded)
        return self._files

    def default_files_dir(self) -> Path:
        """Where side files go when the gallery records no folder (see the module docstring)."""
        if not is_server(self.uri):
            return Path(self.uri).parent / f"{Path(self.uri).name}.{self.collection}.files"
        base = os.environ.get("XDG_DATA_HOME")
        if not base:
            try:
                base = str(Path.home() / ".local" / "share")
            except RuntimeError:
                raise OptionError(
                    "files",
                    f"{self.location} (collection {self.collection}) records no folder for "
                    f"its files and there is no home folder: give one",
                ) from None
        server = re.sub(r"[^A-Za-z0-9._-]+", "_", self.uri.split("://", 1)[-1]).strip("_") or "server"
        return Path(base).absolute() / "reidkit" / "milvus" / server / f"{self.collection}.files"

    def use_files(self, files: str | os.PathLike | None = None, default: str | os.PathLike | None = None) -> Path:
        """Record the folder of the gallery's side files (once) and return it.

        `files` must be the folder already recorded, if any (thumbnails already written name it). Without
        `files`, a server gallery that records none records `default` (else default_files_dir()); a Milvus
        Lite gallery keeps its folder beside its file unrecorded, so that the two move together."""
        want = None if files is None else files_folder(files)
        recorded = self.cols.get_json(_FILES_KEY)
        if isinstance(recorded, str) and recorded:
            if want is not None and want != Path(recorded):
                raise OptionError(
                    "files",
                    f"{self.location} (collection {self.collection}) keeps its files in "
                    f"{recorded}; give that folder or leave the option out",
                    value=files,
                )
            self._files = Path(recorded)
            return self._files
        if want is None:
            if not is_server(self.uri):
                return self.default_files_dir()
            want = files_folder(default) if default is not None else self.default_files_dir()
        self.cols.put_text({_FILES_KEY: json.dumps(str(want))})
        self._files = want
        return want

    @staticmethod
    def _names(db: str | os.PathLike, collection: str | None) -> tuple[str, str, str]:
        uri = _parse(db)
        name = DEFAULT_COLLECTION if collection is None else str(collection)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,199}", name):
            raise OptionError(
                "collection",
                f"{name!r}: ASCII letters, digits and '_' only, not starting with a digit, at most 200 characters",
            )
        return MILVUS_PREFIX + uri, uri, name

    @classmethod
    def open(cls, db: str | os.PathLike, collection: str | None = None, readonly: bool = False) -> MilvusStore:
        """Open an existing Milvus gallery."""
        location, uri, name = cls._names(db, collection)
        store = cls(location, uri, name)
        if not store.cols.exists():
            raise OptionError(
                "db", f"{location} has no collection {name!r}; create one with `reidkit index build --db {location}`"
            )
        store.cols.load()
        return store

    @classmethod
    def exists(cls, db: str | os.PathLike, collection: str | None = None) -> bool:
        """True when the collection exists."""
        location, uri, name = cls._names(db, collection)
        return _Collections(location, uri, name).exists()

    @classmethod
    def builder(cls, location: str | os.PathLike, collection: str | None, plan: BuildPlan) -> MilvusBuilder:
        """A new gallery built in a temporary collection and renamed into place."""
        loc, uri, name = cls._names(location, collection)
        return MilvusBuilder(loc, uri, name, plan.overwrite, plan.index_kind)

    def snapshot(self) -> MilvusSnapshot:
        """Strong-consistency reads of the current content."""
        snap = MilvusSnapshot(self.cols)
        if snap.uid != self._files_uid:  # another build under this name: read its own files folder again
            self._files, self._files_uid = None, snap.uid
        return snap

    def stored_key(self) -> tuple[str, int] | None:
        """(uid, generation) of the info record."""
        try:
            info = self.cols.info()
        except ReIDError:
            return None
        return info.get("uid", ""), int(info.get("generation", "0"))

    def settling(self, key: tuple[str, int]) -> bool:
        """Milvus writers leave no cache to finish."""
        return False

    def check_writable(self) -> None:
        """Milvus galleries are opened for writing (the server decides)."""

    def _check_model(self, identity: ModelIdentity) -> None:
        stored = self.cols.identity()
        if not stored.compatible(identity):
            raise OptionError(
                "db",
                f"{self.location} was rebuilt with another model ({stored.label()}) since it was "
                f"opened; nothing was written",
            )

    def _bump(self, corrupt: int | None = None) -> None:
        info = self.cols.info()
        info["generation"] = str(int(info.get("generation", "0")) + 1)
        if corrupt is not None:
            info["corrupt_skipped"] = str(int(info.get("corrupt_skipped", "0")) + int(corrupt))
        self.cols.put_text({_INFO_KEY: json.dumps(info)})

    def write(self, base: Any, identity: ModelIdentity, batch: WriteBatch) -> tuple[list[int], MilvusSnapshot | None]:
        """Upsert the entries (ids from content), then the state, then bump the generation."""
        rows, vectors, state, corrupt = batch.rows, batch.vectors, batch.state, batch.corrupt
        skip_existing_images = batch.skip_existing_images
        self._check_model(identity)
        ids = [entry_id(r) for r in rows]
        keep = list(range(len(rows)))
        if skip_existing_images and ids:
            present = {int(d["id"]) for d in self.cols.get(ids, ["id"])}
            keep = [i for i in keep if ids[i] not in present]
        last = {ids[i]: i for i in keep}  # the same entry twice in one batch: the last one wins
        keep = [i for i in keep if last[ids[i]] == i]
        if not keep and not state:
            return [], None
        self.cols.upsert([ids[i] for i in keep], [rows[i] for i in keep], np.asarray(vectors)[keep])
        crash_point("before_commit")
        if state:
            self.cols.put_text(dict(state))
        self._bump(corrupt)
        return [ids[i] for i in keep], self.snapshot()

    def delete(
        self, base: Any, identity: ModelIdentity, match: DeleteMatch, lock_timeout: float | None = None
    ) -> tuple[int, MilvusSnapshot | None]:
        """Delete the entries `match` selects (by expression); (count, new snapshot)."""
        parts: list[str] = []
        params: dict[str, Any] = {}
        if match.ids is not None:
            parts.append("id in {ids}")
            params["ids"] = [int(i) for i in match.ids]
        for col, v in match.columns():
            parts.append(f"{col} == {{{col}}}")
            params[col] = v
        sel = [int(d["id"]) for d in self.cols.iterate(" and ".join(parts), params, ["id"])]
        if not sel:
            return 0, None
        for s in iter_chunks(len(sel), _BATCH):
            self.cols.call("delete", self.cols.client.delete, self.collection, ids=sel[s])
        self.cols.drop_meta([_META_KEY + str(i) for i in sel], only_if_spilled=True)
        self._bump()
        return len(sel), self.snapshot()

    def get_state(self, key: str) -> Any:
        """The JSON value stored under `key`, or None."""
        if key in _RESERVED or key.startswith(_META_KEY):
            return None
        return self.cols.get_json(key)

    def check(self) -> dict[str, Any]:
        """Counts and records of the gallery; ReIDError naming a problem."""
        snap = self.snapshot()
        problems = []
        dim = snap.identity.feat_dim
        keys = [
            r["key"]
            for r in self.cols.call(
                "query",
                self.cols.client.query,
                self.cols.state_name,
                filter="part == 0",
                output_fields=["key"],
                consistency_level="Strong",
            )
        ]
        leftovers = [
            n
            for n in self.cols.call("list_collections", self.cols.client.list_collections)
            if n.startswith(f"{self.collection}__build_")
        ]
        if leftovers and not snap.count:
            problems.append(
                f"the collection is empty and a build left {leftovers[0]} (an interrupted --overwrite: rebuild)"
            )
        report = {
            "db": self.location,
            "collection": self.collection,
            "consistent": not problems,
            "problems": problems,
            "generation": snap.generation,
            "uid": snap.uid,
            "entries": snap.count,
            "vectors": snap.count,
            "images": snap.n_images,
            "tracklets": snap.n_tracklets,
            "state_keys": sum(k not in _RESERVED and not k.startswith(_META_KEY) for k in keys),
            "index": snap.info.get("index_kind", "flat"),
            "cache": "none (Milvus indexes itself)",
            "model": snap.identity.label(),
            "feat_dim": dim,
            "leftover_files": leftovers,
        }
        if problems:
            raise OptionError(
                "db", f"{self.location} (collection {self.collection}) is inconsistent: {'; '.join(problems)}"
            )
        return report


class MilvusBuilder:
    """A new Milvus gallery: filled in ``NAME__build_<random>``, then renamed to NAME (the old one dropped)."""

    def __init__(self, location: str, uri: str, name: str, overwrite: bool, index_kind: str) -> None:
        self.location = location
        self.uri = uri
        self.name = name
        self.overwrite = overwrite
        self.index_kind = index_kind
        self.target = _Collections(location, uri, name)
        if self.target.exists() and not overwrite:
            raise OptionError(
                "db",
                f"{location} already holds a gallery (collection {name}); use `reidkit index add` "
                f"to append or --overwrite to rebuild it",
            )
        self.tmp = _Collections(location, uri, f"{name}__build_{secrets.token_hex(4)}")
        self.started = False

    def start(self, identity: ModelIdentity, info: dict[str, str]) -> None:
        """Create the temporary collections with the model and info records."""
        old_gen = 0
        if self.target.exists():
            try:
                old_gen = int(self.target.info().get("generation", "0"))
            except ReIDError:
                old_gen = 0
        self.started = True
        self.tmp.create(identity.feat_dim, self.index_kind)
        self.tmp.put_text(
            {
                _MODEL_KEY: json.dumps(identity.as_dict()),
                _INFO_KEY: json.dumps(
                    {**info, "uid": secrets.token_hex(8), "generation": str(old_gen + 1), "backend": "milvus"}
                ),
            }
        )

    def append(self, rows: list[dict[str, Any]], vectors: np.ndarray) -> None:
        """Upsert a batch (ids from content)."""
        self.tmp.upsert([entry_id(r) for r in rows], rows, vectors)

    def publish(self, corrupt: int = 0, existing_error: str = "") -> MilvusStore:
        """Replace the target collections with the temporary ones."""
        info = self.tmp.info()
        info["corrupt_skipped"] = str(int(corrupt))
        self.tmp.put_text({_INFO_KEY: json.dumps(info)})
        # seal the segments so Milvus builds the vector index now, not at the first searches
        self.tmp.call("flush", self.tmp.client.flush, self.tmp.name)
        crash_point("build_before_publish")
        if self.target.exists():
            if not self.overwrite:
                raise OptionError(
                    "db",
                    existing_error
                    or f"{self.location} already holds a gallery (collection "
                    f"{self.name}, built meanwhile); build with overwrite to replace it",
                )
            self.target.drop()
        client = self.tmp.client
        self.tmp.call("rename_collection", client.rename_collection, self.tmp.name, self.name)
        self.tmp.call("rename_collection", client.rename_collection, self.tmp.state_name, self.target.state_name)
        crash_point("build_after_publish")
        store = MilvusStore(self.location, self.uri, self.name)
        store.cols.load()
        return store

    def abort(self) -> None:
        """Drop the temporary collections."""
        if self.started:
            try:
                self.tmp.drop()
            except ReIDError:
                pass
