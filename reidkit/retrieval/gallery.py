"""A searchable gallery, written once over the backend protocol (:mod:`reidkit.retrieval.backends`).

A :class:`Gallery` reads one *snapshot* of its store: with the embedded backend a SQLite read
transaction (WAL) pinned to one generation plus the faiss index of that generation, so every
lookup (search results, image paths, features) comes from that generation; with Milvus, reads at
strong consistency. ``refresh()`` moves to the newest state; the service instead opens a new
Gallery object (``reopen``) when ``changed()`` and swaps it in between requests.

Entries are images (the folder workflow) or tracklets (video ingestion): each carries a path,
optional camera id / name, frame and time spans, and JSON meta; search results carry them all.
Search: the store's (filtered) nearest neighbours, then optional k-reciprocal re-ranking of the
top candidates with their stored vectors (Zhong et al., CVPR 2017): reidkit.retrieval.search. New
galleries (build, create) are published by reidkit.retrieval.gallery_build.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reidkit.errors import OptionError, ReIDError
from reidkit.retrieval.ann import HNSW_M
from reidkit.inference import FeatureExtractor, ModelIdentity
from reidkit.inference.chunks import embed_chunks
from reidkit.retrieval.folder import image_rows, parse_camera_frame
from reidkit.utils.io import image_paths
from reidkit.retrieval.build_options import BuildOptions
from reidkit.retrieval.gallery_build import publish_empty, publish_folder
from reidkit.retrieval.search import SearchOptions, search_snapshot, unknown_filter
from reidkit.retrieval.backends import (
    DeleteMatch,
    WriteBatch,
    Capabilities,
    GalleryStore,
    StoreSnapshot,
    crash_point,
    describe_db,
    gallery_db,
    open_store,
    resolve,
    store_exists,
)
from reidkit.retrieval.store import encode_state, normalize_entries

__all__ = ["BuildOptions", "Gallery"]


def holdings(images: int, tracklets: int) -> str:
    """What a gallery holds, in words: `12 images, 32 tracklets`, `1 tracklet`, `no entries`."""
    parts = [f"{n} {word}{'' if n == 1 else 's'}" for n, word in ((images, "image"), (tracklets, "tracklet")) if n]
    return ", ".join(parts) or "no entries"


class Gallery:
    """A searchable gallery (a folder, or a backend's ``SCHEME:<loc>``); reads come from one snapshot of its store."""

    def __init__(
        self,
        store: GalleryStore,
        snapshot: StoreSnapshot,
        extractor: FeatureExtractor | None = None,
        device: str | None = None,
        batch_size: int = 64,
        collection: str | None = None,
    ) -> None:
        self.store = store
        self.collection = collection
        # a folder Path (embedded) or the "SCHEME:<location>" string: what Gallery.open takes back
        self.db: Path | str = gallery_db(store.location)
        self.backend = resolve(self.db, collection)
        self._snap = snapshot
        self.identity = snapshot.identity
        self.device = device
        self._batch_size = int(batch_size)
        self._extractor = extractor
        self._engine = "torch"  # how a model loaded by use_model runs (Gallery.open(engine=...))
        self._trust = False  # models that run code may load (Gallery.open/build(trust_checkpoint=True))
        self._lock = threading.RLock()
        self.last_report: dict[str, Any] = {}

    # -- snapshot views ---------------------------------------------------------------------

    @property
    def index(self) -> Any:
        """The faiss index of the pinned generation (embedded backend; None for Milvus)."""
        return self._snap.index

    @property
    def info(self) -> dict[str, str]:
        """Index settings and counters of the pinned generation."""
        return self._snap.info

    @property
    def generation(self) -> int:
        """The pinned generation (every write makes a new one)."""
        return self._snap.generation

    @property
    def uid(self) -> str:
        """Identifier of this built gallery (a rebuild gets a new one)."""
        return self._snap.uid

    @property
    def capabilities(self) -> Capabilities:
        """What the backend promises (one writer or many, idempotent ids, where side files live)."""
        return self.backend.capabilities

    @property
    def files_dir(self) -> Path:
        """A local folder for the gallery's side files (video thumbnails)."""
        return self.store.files_dir

    @property
    def readonly(self) -> bool:
        """True when the gallery was opened for reading only (e.g. on read-only media)."""
        return self.store.readonly

    def __len__(self) -> int:
        return self._snap.count

    def describe(self) -> str:
        """How messages name this gallery."""
        return describe_db(self.db, self.collection)

    def stored_key(self) -> tuple[str, int] | None:
        """(uid, generation) now stored (cheap); differs from (uid, generation) after another process wrote."""
        return self.store.stored_key()

    def changed(self) -> bool:
        """True when the store holds a newer generation (or a rebuild) than the one this object reads."""
        key = self.stored_key()
        return key is not None and key != (self.uid, self.generation)

    def settling(self) -> bool:
        """True while the writer of the stored generation is still finishing it (a poller may wait a little)."""
        key = self.stored_key()
        return key is not None and self.store.settling(key)

    def refresh(self) -> bool:
        """Move to the newest generation; True when it changed."""
        if not self.changed():
            return False
        snap = self.store.snapshot()
        if not snap.identity.compatible(self.identity):
            snap.close()
            raise OptionError(
                "db", f"{self.describe()} was rebuilt with another model ({snap.identity.label()}); open it again"
            )
        self._swap(snap)
        return True

    def reopen(self, extractor: FeatureExtractor | None = None) -> Gallery:
        """A new Gallery object on the newest generation of the same store (this one keeps its own)."""
        return Gallery.open(
            self.db,
            extractor=extractor,
            device=self.device,
            batch_size=self._batch_size,
            collection=self.collection,
            readonly=self.readonly,
        )

    def compact(self) -> None:
        """Let the store reclaim space while this object reads nothing (the embedded one truncates its WAL)."""
        self._snap.close()
        getattr(self.store, "compact", lambda: None)()
        self._snap = self.store.snapshot()

    def _swap(self, snap: StoreSnapshot | None) -> None:
        if snap is not None:
            old, self._snap = self._snap, snap
            old.close()

    # -- construction ---------------------------------------------------------------------

    @staticmethod
    def exists(db: str | os.PathLike, collection: str | None = None) -> bool:
        """True when `db` (a folder or a backend's SCHEME:<location>) already holds a gallery."""
        return store_exists(db, collection)

    @classmethod
    def build(
        cls,
        images_dir: str | os.PathLike,
        db: str | os.PathLike,
        options: BuildOptions | None = None,
        *,
        progress: Callable[[str], None] | None = None,
        extractor: FeatureExtractor | None = None,
        **changes: Any,
    ) -> Gallery:
        """Embed every image under `images_dir` into a new gallery `db`, published whole.

        `options`: a BuildOptions (its docstring lists them); `changes`: any of its fields as keyword arguments
        (``Gallery.build(images, db, weights=w, index="hnsw")``), applied over `options`. `progress`: called
        with each line of progress; `extractor`: a loaded model to use instead of `weights`.
        """
        o = BuildOptions.of(options, **changes)
        store, extractor, report = publish_folder(images_dir, db, o, progress=progress, extractor=extractor)
        gallery = cls(store, store.snapshot(), extractor, o.device, o.batch_size, o.collection)
        gallery._trust = bool(o.trust_checkpoint)
        gallery.last_report = report
        return gallery

    @classmethod
    def create(
        cls,
        db: str | os.PathLike,
        extractor: FeatureExtractor,
        index: str = "flat",
        hnsw_m: int = HNSW_M,
        ef_search: int | None = None,
        lock_timeout: float | None = None,
        collection: str | None = None,
    ) -> Gallery:
        """An empty gallery for `extractor`'s model (entries come later by add_entries); flat or hnsw only.

        Published like a build; refuses an existing gallery.
        """
        store = publish_empty(db, extractor, index, hnsw_m, ef_search, lock_timeout, collection)
        return cls(store, store.snapshot(), extractor, extractor.device, extractor.batch_size, collection)

    @classmethod
    def open(
        cls,
        db: str | os.PathLike,
        weights: str | os.PathLike | None = None,
        device: str | None = None,
        batch_size: int = 64,
        extractor: FeatureExtractor | None = None,
        collection: str | None = None,
        readonly: bool = False,
        engine: str | None = None,
        trust_checkpoint: bool = False,
    ) -> Gallery:
        """Open an existing gallery; `weights` or `extractor` (else the stored source, loaded on first use) must match its model.

        A folder that cannot be written (read-only media) opens read-only: search and check work,
        writes are refused with one error. `trust_checkpoint`: models that run code may load (a
        TorchScript program: the stored one only if its file still has the hash recorded at build).
        """
        store = open_store(db, collection=collection, readonly=readonly)
        gallery = cls(store, store.snapshot(), None, device, batch_size, collection)
        gallery._trust = bool(trust_checkpoint)
        # a model loaded here runs as the gallery's features were made (int8 for footage ingested with
        # `reidkit video`'s default engine) unless an engine is named; "auto" keeps a gallery's kind of feature
        made = gallery.info.get("features_engine")
        if engine in ("auto", "auto-int8"):
            engine = "int8" if made == "int8" else "auto"
        gallery._engine = engine or made or "torch"
        if extractor is not None:
            gallery.use_extractor(extractor)
        elif weights is not None:
            gallery.use_model(weights)
        return gallery

    # -- model ---------------------------------------------------------------------------

    def use_model(self, weights: str | os.PathLike | None) -> FeatureExtractor:
        """Load `weights` (None: the stored source) as the query model, refusing one that is not the gallery's."""
        with self._lock:
            ext = FeatureExtractor.load(
                weights,
                device=self.device,
                batch_size=self._batch_size,
                size=self.identity.input_size,
                engine=self._engine,
                trust_checkpoint=self._trust,
            )
            self.check_identity(ext.identity)
            self._extractor = ext
            return ext

    def use_extractor(self, extractor: FeatureExtractor) -> None:
        """Use an already loaded model for queries and additions (e.g. one model shared by several galleries)."""
        self.check_identity(extractor.identity)
        with self._lock:
            self._extractor = extractor

    def check_identity(self, other: ModelIdentity) -> None:
        """Raise ReIDError naming both models unless `other` makes features comparable with this gallery's."""
        if not self.identity.compatible(other):
            raise ReIDError(
                f"model mismatch: gallery {self.describe()} was built with {self.identity.label()} "
                f"({self.identity.feat_dim}-d, input {self.identity.input_size[0]}x{self.identity.input_size[1]}), "
                f"but the given model is {other.label()} ({other.feat_dim}-d, input "
                f"{other.input_size[0]}x{other.input_size[1]}); use the same model or build a new gallery"
            )

    @property
    def extractor(self) -> FeatureExtractor:
        """The query model, loaded on first use from the stored source (a weights path or ImageNet)."""
        with self._lock:
            if self._extractor is None:
                src = self.identity.source
                if src != "imagenet" and not Path(src).is_file():
                    raise ReIDError(
                        f"gallery {self.describe()} was built with {src}, which is no longer there; "
                        f"pass --weights with that model"
                    )
                if src != "imagenet":
                    self._check_stored_program(Path(src))
                self.use_model(None if src == "imagenet" else src)
            assert self._extractor is not None
            return self._extractor

    def _check_stored_program(self, src: Path) -> None:
        """The stored model is loaded only as data, or as the very program that was trusted at build."""
        from reidkit.models.checkpoint import file_sha256, is_torchscript, trust_active

        recorded = self.info.get("model_file_sha256")
        if not (is_torchscript(src) or recorded):
            return
        if not (self._trust or trust_active()):
            raise ReIDError(
                f"gallery {self.describe()}: its model {src} is a TorchScript program, and loading it "
                "runs the code stored in the file; pass --trust-checkpoint (Python: trust_checkpoint=True) "
                "if you trust it, or give the model as a checkpoint or an ONNX export"
            )
        if recorded and file_sha256(src) != recorded:
            raise ReIDError(
                f"gallery {self.describe()}: its model {src} changed since the gallery was built "
                f"(sha256 {recorded[:16]}... recorded when it was trusted); refusing to run a different "
                "program: pass the model with --weights"
            )

    # -- writing ---------------------------------------------------------------------------

    def add(
        self,
        images_dir: str | os.PathLike,
        weights: str | os.PathLike | None = None,
        progress: Callable[[str], None] | None = None,
        strict: bool = False,
        lock_timeout: float | None = None,
    ) -> dict[str, Any]:
        """Append the images under `images_dir` not yet in the gallery (one new generation); returns counts."""
        self.store.check_writable()
        if weights is not None:
            self.use_model(weights)
        paths = image_paths(images_dir)
        known = self._snap.image_paths()
        new = [p for p in paths if p not in known]
        corrupt: list[str] = []
        good: list[str] = []
        feats: list[np.ndarray] = []
        for part in embed_chunks(self.extractor, new, progress=progress, strict=strict):
            good.extend(part.paths)
            feats.append(part.features)
            corrupt.extend(part.corrupt)
        crash_point("add_embedded")
        allf = np.concatenate(feats) if feats else np.zeros((0, self.identity.feat_dim), np.float32)
        batch = WriteBatch(
            image_rows(good),
            allf,
            skip_existing_images=True,
            corrupt=len(corrupt),
            lock_timeout=lock_timeout,
            progress=progress,
        )
        ids, snap = self.store.write(self._snap, self.identity, batch)
        self._swap(snap)
        report = {
            "added": len(ids),
            "skipped_existing": len(paths) - len(ids) - len(corrupt),
            "corrupt": len(corrupt),
            "corrupt_paths": corrupt,
            "total": len(self),
            "generation": self.generation,
        }
        self.last_report = report
        return report

    def add_entries(
        self,
        features: Any,
        entries: Sequence[dict[str, Any]],
        state: dict[str, Any] | None = None,
        lock_timeout: float | None = None,
    ) -> list[int]:
        """Add entries (images or tracklets) with their features and optional state, as one write; returns ids."""
        self.store.check_writable()
        feats = np.asarray(
            features.detach().cpu().numpy() if hasattr(features, "detach") else features, dtype=np.float32
        )
        if feats.ndim == 1 and len(entries) == 1:
            feats = feats[None]
        if feats.ndim != 2 or feats.shape[0] != len(entries):
            raise ReIDError(
                f"add_entries: expected features of shape ({len(entries)}, {self.identity.feat_dim}), "
                f"got {tuple(feats.shape)}"
            )
        if len(entries) and feats.shape[1] != self.identity.feat_dim:
            raise ReIDError(f"add_entries: feature dim {feats.shape[1]} != gallery dim {self.identity.feat_dim}")
        if not np.isfinite(feats).all():
            raise ReIDError("add_entries: features contain NaN or infinity")
        feats = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
        rows = normalize_entries(entries)
        state_rows = encode_state(state)
        if not rows and not state_rows:
            return []
        ids, snap = self.store.write(
            self._snap, self.identity, WriteBatch(rows, feats, state_rows, lock_timeout=lock_timeout)
        )
        self._swap(snap)
        return ids

    def get_state(self, key: str) -> Any:
        """The JSON value stored under `key` by add_entries (latest stored, not the pinned snapshot), or None."""
        return self.store.get_state(str(key))

    def delete(
        self,
        ids: Sequence[int] | None = None,
        tracklet: str | None = None,
        camera: str | None = None,
        path: str | os.PathLike | None = None,
        lock_timeout: float | None = None,
    ) -> int:
        """Delete the entries matching ALL given criteria (ids, tracklet key, camera name, image path); one write."""
        self.store.check_writable()
        id_list = None
        if ids is not None:
            id_list = [int(i) for i in ids]
            if not id_list:
                return 0
        if path is not None:
            p = Path(path).expanduser()
            path = str(p.resolve()) if p.exists() else str(path)
        if id_list is None and tracklet is None and camera is None and path is None:
            raise ReIDError("delete: give ids, tracklet, camera or path (refusing to delete the whole gallery)")
        match = DeleteMatch(id_list, tracklet, camera, path)
        n, snap = self.store.delete(self._snap, self.identity, match, lock_timeout=lock_timeout)
        if n == 0 and snap is None:
            self._check_filters({"camera": camera, "tracklet": tracklet, "path": path})
        self._swap(snap)
        return n

    def _check_filters(self, filters: dict[str, Any]) -> None:
        """OptionError naming the first filter no stored entry matches, listing the values that exist."""
        given = {k: str(v) for k, v in filters.items() if v is not None}
        if not given:
            return
        latest = self.store.snapshot() if self.changed() else self._snap  # what the delete saw
        try:
            for param, value in given.items():
                err = unknown_filter(param, value, latest)
                if err is not None:
                    raise err
        finally:
            if latest is not self._snap:
                latest.close()

    # -- lookups --------------------------------------------------------------------------

    def entries(
        self, kind: str | None = None, tracklet: str | None = None, camera: str | None = None
    ) -> list[dict[str, Any]]:
        """Stored entries of the pinned generation matching all given filters, in id order."""
        return self._snap.entries(kind=kind, tracklet=tracklet, camera=camera)

    def record(self, image_id: int, snapshot: Any = None) -> dict[str, Any] | None:
        """The stored fields of one id (plus width, height and `frame` for images), or None."""
        snap = snapshot or self._snap
        rec = snap.rows([int(image_id)]).get(int(image_id))
        if rec is not None:
            rec["frame"] = rec["frame_start"] if rec["kind"] == "image" else None
        return rec

    def features(self, ids: Sequence[int]) -> np.ndarray:
        """Stored features of the given ids (exact: read from the store)."""
        return self._snap.vectors(ids)

    # -- search ---------------------------------------------------------------------------

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(B, D) unit-norm features of RGB uint8 images of any size, in one batch."""
        return self.extractor.embed_images(images)

    def query_feature(self, query: Any) -> tuple[np.ndarray, int | None]:
        """(unit-norm feature, camid from the file name or None) of a path, an RGB image or a feature vector."""
        camid = None
        if isinstance(query, (str, os.PathLike)):
            from reidkit.utils.images import read_image

            img = read_image(query)
            if img is None:
                raise OptionError("image", f"cannot read {query} (missing or not an image)")
            camid = parse_camera_frame(query)[0]
            return self.embed([img])[0], camid
        if hasattr(query, "detach"):
            query = query.detach().cpu().numpy()
        arr = np.asarray(query)
        if arr.ndim == 3 and arr.shape[-1] == 3 and arr.dtype == np.uint8:
            return self.embed([arr])[0], None
        feat = arr.astype(np.float32).reshape(-1)
        if feat.shape[0] != self.identity.feat_dim:
            raise ReIDError(
                f"query: expected an image or a {self.identity.feat_dim}-d feature, got an array of shape {arr.shape}"
            )
        return feat / max(float(np.linalg.norm(feat)), 1e-12), None

    def search(
        self,
        query: Any,
        k: int = 20,
        rerank: bool = False,
        exclude_camid: int | None = None,
        nprobe: int | None = None,
        rerank_topm: int = 100,
        exclude_camera: str | None = None,
        kind: str | None = None,
        camera: str | None = None,
        t_min: float | None = None,
        t_max: float | None = None,
    ) -> list[dict[str, Any]]:
        """Top-k entries for an image path, RGB uint8 image or feature; each result carries every stored field."""
        feat, _ = self.query_feature(query)
        return self.search_features(
            feat[None],
            k=k,
            rerank=rerank,
            exclude_camid=[exclude_camid],
            nprobe=nprobe,
            rerank_topm=rerank_topm,
            exclude_camera=exclude_camera,
            kind=kind,
            camera=camera,
            t_min=t_min,
            t_max=t_max,
        )[0]

    def search_features(
        self,
        feats: np.ndarray,
        k: int = 20,
        rerank: bool = False,
        exclude_camid: Sequence[int | None] | int | None = None,
        nprobe: int | None = None,
        rerank_topm: int = 100,
        exclude_camera: Sequence[str | None] | str | None = None,
        kind: str | None = None,
        camera: str | None = None,
        t_min: float | None = None,
        t_max: float | None = None,
    ) -> list[list[dict[str, Any]]]:
        """Batched search of unit-norm (B, D) features in the pinned generation; one result list per row.

        Results: {id, path, score, camid, camera, kind, tracklet, frame_start, frame_end, t_start,
        t_end, meta}; `exclude_camid` / `exclude_camera` drop entries of a camera (per row or for all),
        `camera` keeps one camera, `kind` one kind, `t_min` / `t_max` entries whose time span overlaps.
        """
        # one generation for the whole call, whatever refresh() does meanwhile
        options = SearchOptions(
            k, rerank, exclude_camid, nprobe, rerank_topm, exclude_camera, kind, camera, t_min, t_max
        )
        return search_snapshot(self._snap, self.identity.feat_dim, feats, options)

    def health(self) -> dict[str, Any]:
        """Status summary of the pinned generation: sizes, generation, index kind, model identity."""
        snap = self._snap
        return {
            "status": "ok",
            "gallery_size": snap.count,
            "images": snap.n_images,
            "tracklets": snap.n_tracklets,
            "holds": holdings(snap.n_images, snap.n_tracklets),
            "generation": snap.generation,
            "uid": snap.uid,
            "index": snap.info.get("index_kind", "flat"),
            "backend": self.backend.name,
            "model": self.identity.as_dict(),
            "identities": self._identity_count(),
        }

    def _identity_count(self) -> int:
        """Global identities stored by `reidkit identities` (0 when none were assigned)."""
        state = self.get_state("identities") if self._snap.n_tracklets else None
        tracklets = state.get("tracklets") if isinstance(state, dict) else None
        return len(set(tracklets.values())) if isinstance(tracklets, dict) else 0
