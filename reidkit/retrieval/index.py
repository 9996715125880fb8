"""Gallery index: features searched with faiss (inner product on L2-normalised features = cosine).

Storage is :mod:`reidkit.retrieval.store`: one SQLite file holds every entry's metadata AND its
feature vector, and every write is one transaction that bumps a generation counter; the faiss
index (``index.g<N>.faiss``) is a cache of generation N, rebuilt from SQLite when missing. So a
gallery is always whole: the old generation or the new one, never a mix.

A :class:`Gallery` object reads one *snapshot*: a SQLite read transaction (WAL) pinned to one
generation plus the faiss index of that generation; every lookup (search results, image paths,
features) comes from that snapshot. ``refresh()`` moves to the newest generation; the service
instead opens a new Gallery object per generation and swaps it in between requests.

Entries are images (the folder workflow) or tracklets (video ingestion): each carries a path,
optional camera id / name, frame and time spans, and JSON meta; search results carry them all.

Index kinds: ``flat`` (exact), ``ivf`` (IVF-Flat), ``ivfpq`` (IVF with product-quantised codes
in memory; the top ``refine_k * k`` candidates are re-scored exactly with their vectors read from
the store, so memory holds codes only) and ``hnsw`` (HNSW-Flat). Jegou et al., "Product quantization for nearest neighbor search" (TPAMI 2011);
Malkov & Yashunin, "Efficient and robust approximate nearest neighbor search using HNSW" (2018).
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reidkit.errors import ReIDError
from reidkit.retrieval import store
from reidkit.retrieval.store import DB_FILE, ENTRY_FIELDS, LEGACY_INDEX, WriterLock, crash_point

__all__ = [
    "Gallery", "FeatureExtractor", "ModelIdentity", "INDEX_KINDS", "IMAGENET_IDENTITY",
    "list_images", "parse_camera_frame", "make_faiss_index", "default_nlist", "default_pq_m",
    "set_search_params", "refine_exact", "check_gallery", "repair_gallery",
]

INDEX_KINDS = ("flat", "ivf", "ivfpq", "hnsw")
# What `--index approx` means, chosen from benchmarks/results/million.md (1M x 256-d, 2 threads):
# IVF-PQ at nprobe 32, refine_k 8 had recall@10 0.990, p99 6.3 ms in 71 MiB; IVF-Flat needs 986 MiB
# for the same recall, HNSW 1,244 MiB and reached only 0.949 at efSearch 128.
DEFAULT_APPROX_INDEX = "ivfpq"
IMAGENET_IDENTITY = "imagenet:efficientnet_lite0"
DEFAULT_SIZE = (256, 128)
META_FILE = DB_FILE
HNSW_M = 32
DEFAULT_NPROBE = 32
DEFAULT_EF_SEARCH = 128
# IVF-PQ: candidates re-scored exactly = REFINE_K * k.
DEFAULT_REFINE_K = 8
# Images decoded, embedded and added per step: bounds memory for million-image galleries.
CHUNK = 1024

# Market-1501 "0002_c1s1_000451_03.jpg" (camera 1, frame 451) and DukeMTMC "0001_c2_f0046182.jpg".
_NAME_RX = re.compile(r"(?:^|_)c(\d+)(?:s\d+_(\d+)|_f(\d+))?(?=_|$)")


def list_images(folder: str | os.PathLike) -> list[str]:
    """Absolute paths of the image files under `folder` (recursive, sorted; reidkit.utils.io.IMAGE_EXTENSIONS)."""
    from reidkit.utils.io import IMAGE_EXTENSIONS
    from reidkit.utils.io import list_images as _list

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ReIDError(f"--images: {root} is not a folder")
    paths = sorted({str(p.resolve()) for p in _list(root)})
    if not paths:
        raise ReIDError(f"--images: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {root}")
    return paths


def parse_camera_frame(path: str | os.PathLike) -> tuple[int | None, int | None]:
    """(camid 0-based, frame) from a Market/Duke-style file name; None for what the name does not give."""
    m = _NAME_RX.search(Path(path).stem)
    if m is None:
        return None, None
    cam = int(m.group(1)) - 1
    frame = m.group(2) or m.group(3)
    return (cam if cam >= 0 else None), (int(frame) if frame is not None else None)


# ----------------------------------------------------------------------------- model identity


@dataclass(frozen=True)
class ModelIdentity:
    """What made a gallery's features: two identities with the same `name` give comparable features."""

    name: str
    source: str
    feat_dim: int
    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def label(self) -> str:
        """Short human form: the name (weights hashes shortened) and where it came from."""
        short = self.name[:19] if self.name.startswith("sha256:") else self.name
        return short if self.source in ("", "imagenet") else f"{short} ({self.source})"

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (for /health and reports)."""
        return {"name": self.name, "source": self.source, "feat_dim": self.feat_dim,
                "input_size": list(self.input_size), "mean": list(self.mean), "std": list(self.std)}

    def compatible(self, other: ModelIdentity) -> bool:
        """True when features of `other` can be searched against features of this one."""
        return (self.name == other.name and self.feat_dim == other.feat_dim
                and tuple(self.input_size) == tuple(other.input_size))


def _resize_uint8(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """PIL bilinear resize, the same call ImageCache uses, so a file and its decoded copy embed alike."""
    from PIL import Image

    if img.shape[0] == hw[0] and img.shape[1] == hw[1]:
        return img
    return np.asarray(Image.fromarray(img).resize((hw[1], hw[0]), Image.BILINEAR), dtype=np.uint8)


class FeatureExtractor:
    """A model plus its preprocessing; turns uint8 RGB images into L2-normalised features (flip TTA)."""

    def __init__(self, model: Any, identity: ModelIdentity, device: str | None = None,
                 batch_size: int = 64, flip: bool = True) -> None:
        self.model = model
        self.identity = identity
        self.device = device
        self.batch_size = int(batch_size)
        self.flip = flip
        # torch must not run concurrently on one model (several galleries / service snapshots share it)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, weights: str | os.PathLike | None = None, device: str | None = None,
             batch_size: int = 64, size: Sequence[int] | None = None, fmt: str | None = None) -> FeatureExtractor:
        """Load a checkpoint (reidkit's or another toolkit's: ``fmt`` or detected), an export, or (None) ImageNet."""
        if weights is None or str(weights) in ("", "imagenet"):
            from reidkit.models.build import ModelConfig, build_model

            # No ReID training: ImageNet features, GeM-pooled (better than avg for retrieval),
            # no neck, so the eval output is the pooled 1280-d vector itself.
            cfg = ModelConfig(backbone="efficientnet_lite0", pretrained=True, pooling="gem", neck="none")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = build_model(cfg, num_classes=1).eval()
            from reidkit.utils.validate import check_hw

            hw = check_hw(size or DEFAULT_SIZE, "--size")
            ident = ModelIdentity(IMAGENET_IDENTITY, "imagenet", int(model.feat_dim), hw,  # type: ignore[arg-type]
                                  tuple(model.mean), tuple(model.std))
            return cls(model, ident, device, batch_size)
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ReIDError(f"--weights: {path} is not a file")
        source = str(path.resolve())
        from reidkit.export import is_torchscript

        if path.suffix.lower() == ".onnx" or is_torchscript(path):
            from reidkit.export import _refuse_format_for_export, load_feature_model

            _refuse_format_for_export(path, fmt)
            model = load_feature_model(path)
            # An export carries its checkpoint's hash, so it can query a gallery built with that checkpoint.
            digest = str(model.metadata.get("weights_sha256") or _sha256(path))
            hw = tuple(model.input_size)
        else:
            from reidkit.models.build import load_model

            model = load_model(path, device="cpu", fmt=fmt)
            digest = _sha256(path)
            from reidkit.utils.validate import check_hw

            hw = check_hw(size or getattr(model, "input_size", DEFAULT_SIZE), "--size" if size else f"{path}: input_size")
        ident = ModelIdentity(f"sha256:{digest[:16]}", source, int(model.feat_dim), hw,  # type: ignore[arg-type]
                              tuple(float(v) for v in model.mean), tuple(float(v) for v in model.std))
        return cls(model, ident, device, batch_size)

    def embed(self, images: np.ndarray) -> np.ndarray:
        """(N, D) float32 unit-norm features of an N x H x W x 3 uint8 batch at the model's input size."""
        from reidkit.evaluation.features import extract_features

        ident = self.identity
        with self._lock:
            feats = extract_features(self.model, images, batch_size=self.batch_size, flip=self.flip,
                                     device=self.device, mean=ident.mean, std=ident.std,
                                     size=tuple(ident.input_size), normalize=True)
        out = feats.detach().cpu().numpy().astype(np.float32, copy=False)
        # Normalise again: faiss inner product must be cosine even if a caller disabled it upstream.
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def embed_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Features of RGB uint8 images of any size (resized here like the gallery's)."""
        hw = tuple(self.identity.input_size)
        batch = np.stack([_resize_uint8(np.ascontiguousarray(im, dtype=np.uint8), hw) for im in images])
        return self.embed(batch)


def _sha256(path: Path) -> str:
    from reidkit.export import file_sha256

    return file_sha256(path)


# ----------------------------------------------------------------------------- faiss


def default_nlist(n: int) -> int:
    """IVF list count: about 4 * sqrt(N), and at most N / 39 so every centroid gets enough training points."""
    return int(max(1, min(round(4 * np.sqrt(max(n, 1))), n // 39 if n >= 39 else 1)))


def default_pq_m(dim: int) -> int:
    """PQ sub-quantisers: the largest divisor of `dim` that is at most dim / 4 and at most 64."""
    for m in range(min(64, max(1, dim // 4)), 0, -1):
        if dim % m == 0:
            return m
    return 1


def _check_positive(name: str, value: int | None) -> None:
    if value is not None and int(value) < 1:
        raise ReIDError(f"{name}: must be >= 1, got {value}")


def make_faiss_index(kind: str, dim: int, train: np.ndarray | None = None, nlist: int | None = None,
                     hnsw_m: int = HNSW_M, pq_m: int | None = None, seed: int = 0) -> Any:
    """An empty inner-product faiss index of `kind` that takes `add_with_ids`; ivf / ivfpq are trained on `train`.

    ivfpq holds only the PQ codes (dim / pq_m times smaller than the vectors); the gallery re-scores
    its top candidates exactly with the vectors kept in the store (see `Gallery.search_features`).
    """
    import faiss

    if kind not in INDEX_KINDS:
        raise ReIDError(f"--index: expected one of {', '.join(INDEX_KINDS)}, got {kind!r}")
    _check_positive("--nlist", nlist)
    _check_positive("--pq-m", pq_m)
    if kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
    if kind == "hnsw":
        inner = faiss.IndexHNSWFlat(dim, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = 80
        return faiss.IndexIDMap2(inner)
    if train is None or len(train) == 0:
        raise ReIDError(f"{kind} index: needs training features (the gallery is empty)")
    train = np.ascontiguousarray(train, dtype=np.float32)
    nlist = int(nlist or default_nlist(len(train)))
    if nlist > len(train):
        raise ReIDError(f"--nlist {nlist}: more lists than gallery entries ({len(train)})")
    quantizer = faiss.IndexFlatIP(dim)
    if kind == "ivf":
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        m = int(pq_m or default_pq_m(dim))
        if dim % m:
            raise ReIDError(f"--pq-m {m}: must divide the feature dimension {dim}")
        # 8-bit codes need >= 256 training points per sub-quantiser; small galleries get fewer bits.
        nbits = int(max(1, min(8, np.floor(np.log2(max(2, len(train)))))))
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
        index.pq.cp.min_points_per_centroid = 1
        index.pq.cp.seed = int(seed)
    index.cp.seed = int(seed)
    # faiss only warns below 39 points per centroid; small galleries are expected to be there
    index.cp.min_points_per_centroid = 1
    index.train(train)
    return index


def set_search_params(index: Any, nprobe: int | None = None, ef_search: int | None = None) -> None:
    """Set IVF nprobe (clamped to nlist) and HNSW efSearch through the id-map wrapper."""
    import faiss

    _check_positive("--nprobe", nprobe)
    _check_positive("--ef-search", ef_search)
    if nprobe is not None:
        try:
            ivf = faiss.extract_index_ivf(index)
        except RuntimeError:
            ivf = None
        if ivf is not None:
            ivf.nprobe = int(min(int(nprobe), ivf.nlist))
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap2) else index
    if ef_search is not None and hasattr(inner, "hnsw"):
        inner.hnsw.efSearch = int(ef_search)


def refine_exact(queries: np.ndarray, candidates: np.ndarray, vectors: Callable[[np.ndarray], np.ndarray],
                 k: int) -> tuple[np.ndarray, np.ndarray]:
    """Re-score each row's candidate ids exactly (inner product with `vectors(ids)`); (scores, ids) top k, -1 padded.

    The IVF-PQ re-ranking step of Jegou et al. (2011), with the exact vectors read from the store
    instead of held in memory.
    """
    out_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    out_i = np.full((len(queries), k), -1, dtype=np.int64)
    for b in range(len(queries)):
        cand = candidates[b][candidates[b] >= 0]
        if len(cand) == 0:
            continue
        scores = vectors(cand) @ queries[b]
        top = np.argsort(-scores, kind="stable")[:k]
        out_s[b, : len(top)] = scores[top]
        out_i[b, : len(top)] = cand[top]
    return out_s, out_i


def _index_params(info: dict[str, str]) -> dict[str, Any]:
    return {"nprobe": int(info.get("nprobe", DEFAULT_NPROBE)), "ef_search": int(info.get("ef_search", DEFAULT_EF_SEARCH))}


def _index_from_store(conn: sqlite3.Connection, info: dict[str, str], dim: int, db: Path) -> Any:
    """Rebuild the faiss index of the snapshot `conn` reads: the trained empty index (IVF kinds) plus every vector."""
    import faiss

    kind = info.get("index_kind", "flat")
    if kind in ("ivf", "ivfpq"):
        row = conn.execute("SELECT value FROM blobs WHERE key = 'trained'").fetchone()
        if row is None:
            raise ReIDError(f"--db: {db} is inconsistent: the {kind} index has no trained quantiser stored; "
                            f"run `reidkit index repair --db {db}`")
        index = faiss.deserialize_index(np.frombuffer(row[0], dtype=np.uint8).copy())
    else:
        index = make_faiss_index(kind, dim, hnsw_m=int(info.get("hnsw_m", HNSW_M)))
    for ids, vecs in store.iter_vectors(conn, dim):
        index.add_with_ids(np.ascontiguousarray(vecs), ids)
    return index


# ----------------------------------------------------------------------------- embedding


def _image_size(path: str) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return int(im.width), int(im.height)
    except (OSError, ValueError):
        return 0, 0


@dataclass
class _Embedded:
    paths: list[str]
    features: np.ndarray
    corrupt: list[str]


def _embed_paths(extractor: FeatureExtractor, paths: Sequence[str], chunk: int = CHUNK,
                 progress: Callable[[str], None] | None = None, strict: bool = False) -> Iterator[_Embedded]:
    """Decode (ImageCache), embed and yield one chunk at a time; unreadable images are skipped and listed.

    `strict`: the first unreadable (corrupt, zero-byte, missing) image is an error naming it.
    """
    from reidkit.data.pipeline import ImageCache

    hw = tuple(extractor.identity.input_size)
    done, t0 = 0, time.perf_counter()
    for s in range(0, len(paths), chunk):
        part = list(paths[s : s + chunk])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # skipped images are counted below instead
            cache = ImageCache.build(part, size=hw)  # type: ignore[arg-type]
        if strict and len(cache.skipped):
            bad = cache.skipped[0]
            size = os.path.getsize(bad) if os.path.exists(bad) else None
            what = "a zero-byte file" if size == 0 else "missing" if size is None else "corrupt or not an image"
            raise ReIDError(f"--images: {bad} cannot be read ({what}); --strict stops at the first unreadable image")
        ok = np.flatnonzero(cache.valid)
        good = [part[i] for i in ok]
        feats = (extractor.embed(np.ascontiguousarray(cache.images[ok])) if len(ok)
                 else np.zeros((0, extractor.identity.feat_dim), np.float32))
        done += len(part)
        if progress is not None:
            rate = done / max(time.perf_counter() - t0, 1e-9)
            progress(f"embedded {done}/{len(paths)} images ({rate:.0f} img/s)")
        yield _Embedded(good, feats, list(cache.skipped))


def _image_rows(paths: Sequence[str]) -> list[dict[str, Any]]:
    rows = []
    for p in paths:
        cam, frame = parse_camera_frame(p)
        w, h = _image_size(p)
        rows.append({"path": p, "kind": "image", "camid": cam, "camera": None if cam is None else f"c{cam + 1}",
                     "tracklet": None, "frame_start": frame, "frame_end": frame, "t_start": None, "t_end": None,
                     "width": w, "height": h, "meta": None})
    return rows


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- snapshot

_KIND_CODE = {"image": 0, "tracklet": 1}
_SELECT_FIELDS = "id, path, camid, camera, kind, tracklet, frame_start, frame_end, t_start, t_end, meta, width, height"


def _row_dict(row: Sequence[Any]) -> dict[str, Any]:
    d = dict(zip(ENTRY_FIELDS + ("width", "height"), row))
    d["meta"] = json.loads(d["meta"]) if d["meta"] else None
    return d


def _model_identity(conn: sqlite3.Connection, db: Path) -> ModelIdentity:
    row = conn.execute("SELECT identity, source, feat_dim, input_h, input_w, mean, std FROM model").fetchone()
    if row is None:
        raise ReIDError(f"--db: {db / DB_FILE} has no model row")
    return ModelIdentity(row[0], row[1], int(row[2]), (int(row[3]), int(row[4])),
                         tuple(json.loads(row[5])), tuple(json.loads(row[6])))


def _not_a_gallery(db: Path) -> ReIDError:
    return ReIDError(f"--db: {db} is not a gallery (expected {DB_FILE}; create one with `reidkit index build`)")


class _Snapshot:
    """One generation of a gallery: a pinned SQLite read transaction plus the matching faiss index."""

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
        self.camids: np.ndarray = arrays["camids"]
        self.cameras: np.ndarray = arrays["cameras"]
        self.camera_names: dict[str, int] = arrays["camera_names"]
        self.kinds: np.ndarray = arrays["kinds"]
        self.n_images = int(arrays["n_images"])
        self.n_tracklets = int(arrays["n_tracklets"])
        # faiss search parameters and the shared SQLite connection are per-snapshot state
        self.lock = threading.RLock()

    @property
    def key(self) -> tuple[str, int]:
        """(uid, generation): changes with every write and with every rebuild."""
        return self.uid, self.generation

    @classmethod
    def load(cls, db: Path, index: Any = None, write_cache: bool = True) -> _Snapshot:
        """Pin the current generation of `db`; use `index` (already made by the writer) or the cache, else rebuild."""
        import faiss

        if not (db / DB_FILE).is_file():
            raise _not_a_gallery(db)
        conn = store.connect(db / DB_FILE)
        try:
            conn.execute("BEGIN")  # deferred: the first SELECT pins the WAL snapshot
            version = store.schema_version(conn)
            if version == 1:
                raise ReIDError(f"--db: {db} was written by an older reidkit (index.faiss + meta.sqlite without "
                                f"vectors); convert it once with `reidkit index repair --db {db}`")
            if version != store.SCHEMA_VERSION:
                raise ReIDError(f"--db: {db / DB_FILE} is not a reidkit gallery database")
            info = store.read_info(conn)
            ident = _model_identity(conn, db)
            rows = conn.execute("SELECT id, camid, camera, kind FROM entries").fetchall()
            size = store.next_id(conn)
            arrays = _arrays(rows, size)
            gen = int(info.get("generation", "0"))
            if index is not None and int(index.ntotal) != len(rows):
                index = None
            cached = store.cache_path(db, gen)
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
                index = _index_from_store(conn, info, ident.feat_dim, db)
                rewrite = True
            if write_cache and rewrite:
                try:
                    store.write_cache(db, gen, index)
                except (ReIDError, OSError):
                    pass  # a read-only folder: the cache is rebuilt in memory each time
            params = _index_params(info)
            set_search_params(index, params["nprobe"], params["ef_search"])
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise ReIDError(f"--db: {db / DB_FILE} is not a readable reidkit gallery database ({exc})") from None
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

    def rows_by_id(self, ids: Sequence[int]) -> dict[int, dict[str, Any]]:
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
            return store.read_vectors(self.conn, ids, self.identity.feat_dim)


def _arrays(rows: list[tuple], size: int) -> dict[str, Any]:
    camids = np.full(size, -1, dtype=np.int64)
    cameras = np.full(size, -1, dtype=np.int32)
    kinds = np.full(size, -1, dtype=np.int8)
    names: dict[str, int] = {}
    n_img = n_trk = 0
    for i, camid, camera, kind in rows:
        if camid is not None:
            camids[i] = camid
        if camera is not None:
            cameras[i] = names.setdefault(camera, len(names))
        kinds[i] = _KIND_CODE.get(kind, -1)
        n_img += kind == "image"
        n_trk += kind == "tracklet"
    return {"camids": camids, "cameras": cameras, "camera_names": names, "kinds": kinds,
            "n_images": n_img, "n_tracklets": n_trk}


# ----------------------------------------------------------------------------- gallery


class Gallery:
    """A searchable gallery folder (see the module docstring); reads come from one pinned generation."""

    def __init__(self, db: Path, snapshot: _Snapshot, extractor: FeatureExtractor | None = None,
                 device: str | None = None, batch_size: int = 64) -> None:
        self.db = Path(db)
        self._snap = snapshot
        self.identity = snapshot.identity
        self.device = device
        self._batch_size = int(batch_size)
        self._extractor = extractor
        self._lock = threading.RLock()
        self.last_report: dict[str, Any] = {}

    # -- snapshot views ---------------------------------------------------------------------

    @property
    def index(self) -> Any:
        """The faiss index of the pinned generation."""
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

    def __len__(self) -> int:
        return self._snap.count

    def stored_key(self) -> tuple[str, int] | None:
        """(uid, generation) now on disk (cheap); differs from (uid, generation) after another process wrote."""
        return store.read_key(self.db)

    def refresh(self) -> bool:
        """Move to the newest generation on disk; True when it changed."""
        key = self.stored_key()
        if key is None or key == self._snap.key:
            return False
        snap = _Snapshot.load(self.db)
        if not snap.identity.compatible(self.identity):
            snap.close()
            raise ReIDError(f"--db: {self.db} was rebuilt with another model ({snap.identity.label()}); open it again")
        old, self._snap = self._snap, snap
        old.close()
        return True

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def build(cls, images_dir: str | os.PathLike, db: str | os.PathLike, weights: str | os.PathLike | None = None,
              index: str = "flat", nlist: int | None = None, nprobe: int | None = None,
              ef_search: int | None = None, hnsw_m: int = HNSW_M, batch_size: int = 64,
              device: str | None = None, size: Sequence[int] | None = None, overwrite: bool = False,
              progress: Callable[[str], None] | None = None, extractor: FeatureExtractor | None = None,
              pq_m: int | None = None, refine_k: int = DEFAULT_REFINE_K, strict: bool = False,
              lock_timeout: float | None = None) -> Gallery:
        """Embed every image under `images_dir` into a new gallery `db`, published whole (`extractor` overrides `weights`).

        `index`: flat | ivf | ivfpq | hnsw, or "approx" for the measured default approximate kind.
        With `overwrite` the new gallery is built beside the old one and swapped in atomically;
        the old one stays searchable until then.
        """
        if index == "approx":
            index = DEFAULT_APPROX_INDEX
        if index not in INDEX_KINDS:
            raise ReIDError(f"--index: expected one of {', '.join(INDEX_KINDS)}, got {index!r}")
        for name, v in (("--nlist", nlist), ("--nprobe", nprobe), ("--ef-search", ef_search), ("--pq-m", pq_m),
                        ("--hnsw-m", hnsw_m), ("--refine-k", refine_k), ("--batch-size", batch_size)):
            _check_positive(name, v)
        db = Path(db).expanduser().absolute()
        store.recover(db)
        paths = list_images(images_dir)
        old_gen = _existing_generation(db, overwrite)
        if nlist is not None and index in ("ivf", "ivfpq") and nlist > len(paths):
            raise ReIDError(f"--nlist {nlist}: more lists than images under {images_dir} ({len(paths)})")
        if pq_m is not None and index == "ivfpq" and extractor is not None and extractor.identity.feat_dim % pq_m:
            raise ReIDError(f"--pq-m {pq_m}: must divide the feature dimension {extractor.identity.feat_dim}")
        if extractor is None:
            extractor = FeatureExtractor.load(weights, device=device, batch_size=batch_size, size=size)
        ident = extractor.identity
        info = {
            "index_kind": index, "nprobe": str(int(nprobe or DEFAULT_NPROBE)),
            "ef_search": str(int(ef_search or DEFAULT_EF_SEARCH)), "hnsw_m": str(int(hnsw_m)),
            "refine_k": str(int(refine_k)), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        store.clean_for_write(db)
        tmp = store.new_build_folder(db)
        try:
            conn = store.create_db(tmp / DB_FILE, _model_row(ident),
                                   {**info, "uid": store.new_uid(), "generation": str(old_gen + 1)})
            corrupt: list[str] = []
            n = 0
            with conn:
                conn.execute("BEGIN")
                for part in _embed_paths(extractor, paths, progress=progress, strict=strict):
                    rows = _image_rows(part.paths)
                    store.insert_entries(conn, range(n, n + len(rows)), rows, part.features, db)
                    n += len(rows)
                    corrupt.extend(part.corrupt)
                if n == 0:
                    raise ReIDError(f"--images: none of the {len(paths)} images under {images_dir} could be read")
                conn.execute("INSERT OR REPLACE INTO info VALUES ('corrupt_skipped', ?)", (str(len(corrupt)),))
                conn.execute("COMMIT")
            crash_point("build_embedded")
            _finish_new(tmp, conn, ident, index, nlist, pq_m, refine_k, progress)
            conn.close()
            crash_point("build_before_publish")
            with WriterLock(db, timeout=lock_timeout, on_wait=progress or _stderr):
                if not overwrite and (db / DB_FILE).exists():
                    raise ReIDError(f"--db: {db} already holds a gallery (built meanwhile by another process); "
                                    f"use --overwrite to replace it")
                store.publish_folder(tmp, db)
        except BaseException:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
            raise
        gallery = cls(db, _Snapshot.load(db), extractor, device, batch_size)
        gallery.last_report = {"added": n, "skipped_existing": 0, "corrupt": len(corrupt),
                               "corrupt_paths": corrupt, "total": n}
        return gallery

    @classmethod
    def create(cls, db: str | os.PathLike, extractor: FeatureExtractor, index: str = "flat",
               hnsw_m: int = HNSW_M, ef_search: int | None = None, lock_timeout: float | None = None) -> Gallery:
        """An empty gallery for `extractor`'s model (entries come later by add_entries); flat or hnsw only.

        Published like a build (temp folder beside `db`, one rename); refuses an existing gallery.
        """
        if index not in ("flat", "hnsw"):
            raise ReIDError(f"--index: an empty gallery can be flat or hnsw ({index} needs training features)")
        db = Path(db).expanduser().absolute()
        store.recover(db)
        _existing_generation(db, overwrite=False)
        ident = extractor.identity
        info = {"index_kind": index, "nprobe": str(DEFAULT_NPROBE), "ef_search": str(int(ef_search or DEFAULT_EF_SEARCH)),
                "hnsw_m": str(int(hnsw_m)), "refine_k": str(DEFAULT_REFINE_K),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        tmp = store.new_build_folder(db)
        try:
            conn = store.create_db(tmp / DB_FILE, _model_row(ident), {**info, "uid": store.new_uid(), "generation": "1"})
            _finish_new(tmp, conn, ident, index, None, None, DEFAULT_REFINE_K, None)
            conn.close()
            with WriterLock(db, timeout=lock_timeout):
                if (db / DB_FILE).exists():
                    raise ReIDError(f"--db: {db} already holds a gallery (created meanwhile by another process)")
                store.publish_folder(tmp, db)
        except BaseException:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls(db, _Snapshot.load(db), extractor, extractor.device, extractor.batch_size)

    @classmethod
    def open(cls, db: str | os.PathLike, weights: str | os.PathLike | None = None,
             device: str | None = None, batch_size: int = 64,
             extractor: FeatureExtractor | None = None) -> Gallery:
        """Open an existing gallery; `weights` or `extractor` (else the stored source, loaded on first use) must match its model."""
        db = Path(db).expanduser().absolute()
        store.recover(db)
        gallery = cls(db, _Snapshot.load(db), None, device, batch_size)
        if extractor is not None:
            gallery.use_extractor(extractor)
        elif weights is not None:
            gallery.use_model(weights)
        return gallery

    # -- model ---------------------------------------------------------------------------

    def use_model(self, weights: str | os.PathLike | None) -> FeatureExtractor:
        """Load `weights` (None: the stored source) as the query model, refusing one that is not the gallery's."""
        with self._lock:
            ext = FeatureExtractor.load(weights, device=self.device, batch_size=self._batch_size,
                                        size=self.identity.input_size)
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
                f"model mismatch: gallery {self.db} was built with {self.identity.label()} "
                f"({self.identity.feat_dim}-d, input {self.identity.input_size[0]}x{self.identity.input_size[1]}), "
                f"but the given model is {other.label()} ({other.feat_dim}-d, input "
                f"{other.input_size[0]}x{other.input_size[1]}); use the same model or build a new gallery")

    @property
    def extractor(self) -> FeatureExtractor:
        """The query model, loaded on first use from the stored source (a weights path or ImageNet)."""
        with self._lock:
            if self._extractor is None:
                src = self.identity.source
                if src != "imagenet" and not Path(src).is_file():
                    raise ReIDError(f"gallery {self.db} was built with {src}, which is no longer there; "
                                    f"pass --weights with that model")
                self.use_model(None if src == "imagenet" else src)
            assert self._extractor is not None
            return self._extractor

    # -- writing ---------------------------------------------------------------------------

    def _commit(self, body: Callable[[sqlite3.Connection], tuple[Any, Callable[[Any], None] | None] | None],
                progress: Callable[[str], None] | None = None, lock_timeout: float | None = None) -> Any:
        """Run `body` in one write transaction under the writer lock, publish a new generation, refresh.

        `body(conn)` returns None (nothing to write: rolled back) or (result, update) where
        update(index) applies the change to a copy of the current faiss index (None: rebuild).
        """
        import faiss

        db = self.db
        with WriterLock(db, timeout=lock_timeout, on_wait=progress or _stderr):
            crash_point("add_locked")
            store.clean_for_write(db)
            if not (db / DB_FILE).is_file():
                raise _not_a_gallery(db)
            key = store.read_key(db)
            if key is not None:  # caches of older generations left by a killed writer
                store.drop_old_caches(db, keep=key[1])
            conn = store.connect(db / DB_FILE)
            try:
                store.begin_write(conn, db)
                try:
                    if store.schema_version(conn) != store.SCHEMA_VERSION:
                        raise ReIDError(f"--db: {db} was written by an older reidkit; run `reidkit index repair --db {db}`")
                    stored = _model_identity(conn, db)
                    if not stored.compatible(self.identity):
                        raise ReIDError(f"--db: {db} was rebuilt with another model ({stored.label()}) since it was "
                                        f"opened; nothing was written")
                    uid = store.read_info(conn).get("uid", "")
                    out = body(conn)
                    if out is None:
                        conn.execute("ROLLBACK")
                        return None
                    result, update = out
                    gen = store.bump_generation(conn)
                    crash_point("before_commit")
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            finally:
                conn.close()
            crash_point("after_commit")
            index = None
            snap = self._snap
            if update is not None and snap.key == (uid, gen - 1):
                with snap.lock:
                    try:
                        index = faiss.clone_index(snap.index)
                        update(index)
                    except RuntimeError:  # e.g. HNSW cannot remove: rebuild from the store instead
                        index = None
            new = _Snapshot.load(db, index=index)
            store.drop_old_caches(db, keep=new.generation)
        old, self._snap = self._snap, new
        old.close()
        return result

    def add(self, images_dir: str | os.PathLike, weights: str | os.PathLike | None = None,
            progress: Callable[[str], None] | None = None, strict: bool = False,
            lock_timeout: float | None = None) -> dict[str, Any]:
        """Append the images under `images_dir` not yet in the gallery (one new generation); returns counts."""
        if weights is not None:
            self.use_model(weights)
        paths = list_images(images_dir)
        known = {p for (p,) in self._snap.query("SELECT path FROM entries WHERE kind = 'image'")}
        new = [p for p in paths if p not in known]
        corrupt: list[str] = []
        good: list[str] = []
        feats: list[np.ndarray] = []
        for part in _embed_paths(self.extractor, new, progress=progress, strict=strict):
            good.extend(part.paths)
            feats.append(part.features)
            corrupt.extend(part.corrupt)
        crash_point("add_embedded")
        allf = np.concatenate(feats) if feats else np.zeros((0, self.identity.feat_dim), np.float32)

        def body(conn: sqlite3.Connection) -> Any:
            # another writer may have added some of these since the snapshot was taken
            present = {p for (p,) in conn.execute("SELECT path FROM entries WHERE kind = 'image'")}
            keep = [i for i, p in enumerate(good) if p not in present]
            if not keep:
                return None
            ids = list(range(store.next_id(conn), store.next_id(conn) + len(keep)))
            vecs = allf[keep]
            store.insert_entries(conn, ids, _image_rows([good[i] for i in keep]), vecs, self.db)
            prev = int(store.read_info(conn).get("corrupt_skipped", "0"))
            conn.execute("INSERT OR REPLACE INTO info VALUES ('corrupt_skipped', ?)", (str(prev + len(corrupt)),))
            return ids, lambda index: index.add_with_ids(np.ascontiguousarray(vecs), np.asarray(ids, dtype=np.int64))

        ids = self._commit(body, progress=progress, lock_timeout=lock_timeout) or []
        report = {"added": len(ids), "skipped_existing": len(paths) - len(ids) - len(corrupt),
                  "corrupt": len(corrupt), "corrupt_paths": corrupt, "total": len(self),
                  "generation": self.generation}
        self.last_report = report
        return report

    def add_entries(self, features: Any, entries: Sequence[dict[str, Any]], state: dict[str, Any] | None = None,
                    lock_timeout: float | None = None) -> list[int]:
        """Add entries (images or tracklets) with their features and optional state, as one generation; returns ids."""
        feats = np.asarray(features.detach().cpu().numpy() if hasattr(features, "detach") else features,
                           dtype=np.float32)
        if feats.ndim == 1 and len(entries) == 1:
            feats = feats[None]
        if feats.ndim != 2 or feats.shape[0] != len(entries):
            raise ReIDError(f"add_entries: expected features of shape ({len(entries)}, {self.identity.feat_dim}), "
                            f"got {tuple(feats.shape)}")
        if len(entries) and feats.shape[1] != self.identity.feat_dim:
            raise ReIDError(f"add_entries: feature dim {feats.shape[1]} != gallery dim {self.identity.feat_dim}")
        if not np.isfinite(feats).all():
            raise ReIDError("add_entries: features contain NaN or infinity")
        feats = feats / np.maximum(np.linalg.norm(feats, axis=1, keepdims=True), 1e-12)
        rows = store.normalize_entries(entries)
        if state is not None:
            if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
                raise ReIDError("add_entries: state must be a dict with string keys")
            try:
                state_rows = [(k, None if v is None else json.dumps(v, default=store._json_default))
                              for k, v in state.items()]
            except (TypeError, ValueError) as exc:
                raise ReIDError(f"add_entries: state is not JSON-serialisable ({exc})") from None
        else:
            state_rows = []
        if not rows and not state_rows:
            return []

        def body(conn: sqlite3.Connection) -> Any:
            start = store.next_id(conn)
            ids = store.insert_entries(conn, range(start, start + len(rows)), rows, feats, self.db)
            for k, v in state_rows:
                if v is None:
                    conn.execute("DELETE FROM state WHERE key = ?", (k,))
                else:
                    conn.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (k, v))

            def update(index: Any) -> None:
                if ids:
                    index.add_with_ids(np.ascontiguousarray(feats), np.asarray(ids, dtype=np.int64))

            return ids, update

        return self._commit(body, lock_timeout=lock_timeout)

    def get_state(self, key: str) -> Any:
        """The JSON value stored under `key` by add_entries (latest on disk, not the pinned snapshot), or None."""
        conn = store.connect(self.db / DB_FILE)
        try:
            row = conn.execute("SELECT value FROM state WHERE key = ?", (str(key),)).fetchone()
        except sqlite3.Error as exc:
            raise ReIDError(f"--db: cannot read state from {self.db / DB_FILE}: {exc}") from None
        finally:
            conn.close()
        return None if row is None else json.loads(row[0])

    def delete(self, ids: Sequence[int] | None = None, tracklet: str | None = None, camera: str | None = None,
               path: str | os.PathLike | None = None, lock_timeout: float | None = None) -> int:
        """Delete the entries matching ALL given criteria (ids, tracklet key, camera name, image path); one generation."""
        where, params = [], []
        if ids is not None:
            id_list = [int(i) for i in ids]
            if not id_list:
                return 0
            where.append(f"id IN ({','.join('?' * len(id_list))})")
            params.extend(id_list)
        if tracklet is not None:
            where.append("tracklet = ?")
            params.append(str(tracklet))
        if camera is not None:
            where.append("camera = ?")
            params.append(str(camera))
        if path is not None:
            where.append("path = ?")
            params.append(str(Path(path).expanduser().resolve()) if Path(path).expanduser().exists() else str(path))
        if not where:
            raise ReIDError("delete: give ids, tracklet, camera or path (refusing to delete the whole gallery)")

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

        return self._commit(body, lock_timeout=lock_timeout) or 0

    # -- lookups --------------------------------------------------------------------------

    def entries(self, kind: str | None = None, tracklet: str | None = None, camera: str | None = None) -> list[dict[str, Any]]:
        """Stored entries of the pinned generation matching all given filters, in id order."""
        where, params = [], []
        for col, v in (("kind", kind), ("tracklet", tracklet), ("camera", camera)):
            if v is not None:
                where.append(f"{col} = ?")
                params.append(v)
        sql = f"SELECT {_SELECT_FIELDS} FROM entries" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY id"
        return [_row_dict(r) for r in self._snap.query(sql, params)]

    def record(self, image_id: int, snapshot: _Snapshot | None = None) -> dict[str, Any] | None:
        """The stored fields of one id (plus width, height and `frame` for images), or None."""
        snap = snapshot or self._snap
        rec = snap.rows_by_id([int(image_id)]).get(int(image_id))
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
                raise ReIDError(f"--image: cannot read {query} (missing or not an image)")
            camid = parse_camera_frame(query)[0]
            return self.embed([img])[0], camid
        if hasattr(query, "detach"):
            query = query.detach().cpu().numpy()
        arr = np.asarray(query)
        if arr.ndim == 3 and arr.shape[-1] == 3 and arr.dtype == np.uint8:
            return self.embed([arr])[0], None
        feat = arr.astype(np.float32).reshape(-1)
        if feat.shape[0] != self.identity.feat_dim:
            raise ReIDError(f"query: expected an image or a {self.identity.feat_dim}-d feature, "
                            f"got an array of shape {arr.shape}")
        return feat / max(float(np.linalg.norm(feat)), 1e-12), None

    def search(self, query: Any, k: int = 20, rerank: bool = False, exclude_camid: int | None = None,
               nprobe: int | None = None, rerank_topm: int = 100, exclude_camera: str | None = None,
               kind: str | None = None) -> list[dict[str, Any]]:
        """Top-k entries for an image path, RGB uint8 image or feature; each result carries every stored field."""
        feat, _ = self.query_feature(query)
        return self.search_features(feat[None], k=k, rerank=rerank, exclude_camid=[exclude_camid], nprobe=nprobe,
                                    rerank_topm=rerank_topm, exclude_camera=exclude_camera, kind=kind)[0]

    def search_features(self, feats: np.ndarray, k: int = 20, rerank: bool = False,
                        exclude_camid: Sequence[int | None] | int | None = None, nprobe: int | None = None,
                        rerank_topm: int = 100, exclude_camera: Sequence[str | None] | str | None = None,
                        kind: str | None = None) -> list[list[dict[str, Any]]]:
        """Batched search of unit-norm (B, D) features in the pinned generation; one result list per row.

        Results: {id, path, score, camid, camera, kind, tracklet, frame_start, frame_end, t_start,
        t_end, meta}; `exclude_camid` / `exclude_camera` drop entries of a camera, `kind` keeps one kind.
        """
        snap = self._snap  # one generation for the whole call, whatever refresh() does meanwhile
        feats = np.ascontiguousarray(np.atleast_2d(feats), dtype=np.float32)
        if feats.shape[1] != self.identity.feat_dim:
            raise ReIDError(f"query: feature dim {feats.shape[1]} != gallery dim {self.identity.feat_dim}")
        if int(k) < 1:
            raise ReIDError(f"k: must be >= 1, got {k}")
        _check_positive("--nprobe", nprobe)
        if kind is not None and kind not in _KIND_CODE:
            raise ReIDError(f"kind: expected one of {', '.join(_KIND_CODE)}, got {kind!r}")
        excl = list(exclude_camid) if isinstance(exclude_camid, (list, tuple)) else [exclude_camid] * len(feats)
        excl_cam = (list(exclude_camera) if isinstance(exclude_camera, (list, tuple))
                    else [exclude_camera] * len(feats))
        n = snap.count
        if n == 0:
            return [[] for _ in feats]
        k = min(int(k), n)
        need = min(max(k, int(rerank_topm)) if rerank else k, n)
        filtering = kind is not None or any(e is not None for e in excl) or any(c is not None for c in excl_cam)
        fetch = min(n, need * 2 if filtering else need)
        out = []
        with snap.lock:
            if nprobe is not None:
                set_search_params(snap.index, nprobe)
            try:
                scores, ids = self._search_index(snap, feats, fetch)
                for b in range(len(feats)):
                    out.append(self._filtered(snap, feats[b], ids[b], scores[b], excl[b], excl_cam[b], kind,
                                              need, fetch))
            finally:
                if nprobe is not None:
                    set_search_params(snap.index, _index_params(snap.info)["nprobe"])
        results = []
        for b, (cid, csc) in enumerate(out):
            dist = None
            if rerank and len(cid) > 1:
                order, dist = self._rerank(snap, feats[b], cid)
                cid, csc, dist = cid[order], csc[order], dist[order]
            cid, csc = cid[:k], csc[:k]
            recs = snap.rows_by_id(cid.tolist())
            rows = []
            for j, (i, s) in enumerate(zip(cid.tolist(), csc.tolist())):
                rec = recs.get(i)
                if rec is None:  # cannot happen within one snapshot; never serve an empty path
                    continue
                rec.pop("width", None)
                rec.pop("height", None)
                # float32 dot products of unit vectors can land a hair outside [-1, 1]
                row = {"id": int(i), "path": rec["path"], "score": float(np.clip(s, -1.0, 1.0)),
                       **{f: rec[f] for f in ENTRY_FIELDS if f not in ("id", "path")}}
                if dist is not None:
                    row["rerank_distance"] = float(dist[j])
                rows.append(row)
            results.append(rows)
        return results

    @staticmethod
    def _filtered(snap: _Snapshot, q: np.ndarray, ids: np.ndarray, scores: np.ndarray, exclude: int | None,
                  exclude_camera: str | None, kind: str | None, need: int, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        n = snap.count
        top = len(snap.camids) - 1
        cam_code = snap.camera_names.get(exclude_camera, -2) if exclude_camera is not None else None
        while True:
            keep = ids >= 0
            safe = np.clip(ids, 0, max(top, 0))
            if exclude is not None:
                keep &= snap.camids[safe] != int(exclude)
            if cam_code is not None:
                keep &= snap.cameras[safe] != cam_code
            if kind is not None:
                keep &= snap.kinds[safe] == _KIND_CODE[kind]
            if keep.sum() >= need or fetch >= n:
                return ids[keep][:need], scores[keep][:need]
            # Too many candidates were filtered out: look deeper.
            fetch = min(n, fetch * 4)
            s, i = Gallery._search_index(snap, q[None], fetch)
            ids, scores = i[0], s[0]

    @staticmethod
    def _search_index(snap: _Snapshot, feats: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """faiss search; for ivfpq the top refine_k * k PQ candidates are re-scored exactly from the store."""
        if snap.info.get("index_kind") != "ivfpq":
            return snap.index.search(feats, k)
        refine = int(snap.info.get("refine_k", DEFAULT_REFINE_K))
        _, cand = snap.index.search(feats, min(snap.count, k * max(1, refine)))
        return refine_exact(feats, cand, snap.vectors, k)

    @staticmethod
    def _rerank(snap: _Snapshot, q: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """k-reciprocal re-ranking of the query against its M candidates (section 5 defaults, clipped to M)."""
        from reidkit.evaluation.rerank import re_ranking_features

        g = snap.vectors(cand.tolist())
        m = len(cand)
        dist = re_ranking_features(q[None], g, k1=min(20, m), k2=min(6, m + 1), lambda_value=0.3, device="cpu")[0]
        return np.argsort(dist, kind="stable"), dist

    def health(self) -> dict[str, Any]:
        """Status summary of the pinned generation: sizes, generation, index kind, model identity."""
        snap = self._snap
        return {"status": "ok", "gallery_size": snap.count, "images": snap.n_images, "tracklets": snap.n_tracklets,
                "generation": snap.generation, "uid": snap.uid, "index": snap.info.get("index_kind", "flat"),
                "model": self.identity.as_dict()}


def _model_row(ident: ModelIdentity) -> tuple:
    return (ident.name, ident.source, ident.feat_dim, ident.input_size[0], ident.input_size[1],
            json.dumps(list(ident.mean)), json.dumps(list(ident.std)))


def _existing_generation(db: Path, overwrite: bool) -> int:
    """Generation of the gallery `build` replaces (0 for none); refuses to replace without `overwrite`."""
    if not db.exists():
        return 0
    if not db.is_dir():
        raise ReIDError(f"--db: {db} exists and is not a folder")
    has_gallery = (db / DB_FILE).exists() or (db / LEGACY_INDEX).exists()
    if has_gallery and not overwrite:
        raise ReIDError(f"--db: {db} already holds a gallery; use `reidkit index add` to append "
                        f"or --overwrite to rebuild it")
    if not has_gallery:
        others = [p.name for p in db.iterdir()]
        if others:
            raise ReIDError(f"--db: {db} is a folder with other files in it ({others[0]}, ...); "
                            f"give a new or empty folder")
        return 0
    key = store.read_key(db)
    return key[1] if key else 0


def _finish_new(tmp: Path, conn: sqlite3.Connection, ident: ModelIdentity, kind: str, nlist: int | None,
                pq_m: int | None, refine_k: int, progress: Callable[[str], None] | None) -> None:
    """Train (IVF kinds) on a sample of the stored vectors, store the trained index, write the faiss cache."""
    import faiss

    dim = ident.feat_dim
    conn.execute("BEGIN")
    info = store.read_info(conn)
    extra: dict[str, str] = {}
    if kind in ("ivf", "ivfpq"):
        ids = [r[0] for r in conn.execute("SELECT id FROM vectors")]
        n = len(ids)
        nl = int(nlist or default_nlist(n))
        if nl > n:
            raise ReIDError(f"--nlist {nl}: more lists than gallery images ({n})")
        m = int(pq_m or default_pq_m(dim)) if kind == "ivfpq" else None
        rng = np.random.default_rng(0)
        # 64 training points per list: stable centroids at a quarter of faiss's default k-means cost
        # (the setting benchmarks/bench_million.py measured)
        sample = np.sort(rng.choice(n, size=min(n, 64 * nl), replace=False))
        train = store.read_vectors(conn, [ids[i] for i in sample], dim)
        if progress is not None:
            progress(f"training the {kind} quantiser ({nl} lists) on {len(train)} features")
        trained = make_faiss_index(kind, dim, train=train, nlist=nl, pq_m=m)
        conn.execute("INSERT INTO blobs VALUES ('trained', ?)", (faiss.serialize_index(trained).tobytes(),))
        extra = {"nlist": str(nl)}
        if m is not None:
            extra["pq_m"] = str(m)
    for k, v in extra.items():
        conn.execute("INSERT OR REPLACE INTO info VALUES (?, ?)", (k, v))
    conn.execute("COMMIT")
    info.update(extra)
    conn.execute("BEGIN")
    index = _index_from_store(conn, info, dim, tmp)
    conn.execute("COMMIT")
    store.write_cache(tmp, int(info["generation"]), index)


# ----------------------------------------------------------------------------- check / repair


def check_gallery(db: str | os.PathLike) -> dict[str, Any]:
    """Consistency report of a gallery folder; ReIDError naming the problem when it is not consistent."""
    import faiss

    db = Path(db).expanduser().absolute()
    store.recover(db)
    if not (db / DB_FILE).is_file():
        raise _not_a_gallery(db)
    conn = store.connect(db / DB_FILE)
    try:
        conn.execute("BEGIN")
        version = store.schema_version(conn)
        if version == 1:
            n_meta = conn.execute("SELECT COUNT(*) FROM images").fetchone()[0]
            detail = ""
            try:
                n_idx = faiss.read_index(str(db / LEGACY_INDEX)).ntotal
                detail = (f"; its {LEGACY_INDEX} has {n_idx} rows and {DB_FILE} lists {n_meta} images"
                          + (" (they disagree)" if n_idx != n_meta else ""))
            except RuntimeError:
                detail = f"; its {LEGACY_INDEX} is missing or unreadable ({n_meta} images listed)"
            raise ReIDError(f"--db: {db} was written by an older reidkit (schema 1){detail}; "
                            f"run `reidkit index repair --db {db}`")
        if version != store.SCHEMA_VERSION:
            raise ReIDError(f"--db: {db / DB_FILE} is not a reidkit gallery database")
        problems = []
        qc = conn.execute("PRAGMA quick_check").fetchone()[0]
        if qc != "ok":
            problems.append(f"SQLite quick_check: {qc}")
        info = store.read_info(conn)
        ident = _model_identity(conn, db)
        n_entries = conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
        n_vectors = conn.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]
        no_vec = conn.execute("SELECT COUNT(*) FROM entries LEFT JOIN vectors USING (id) "
                              "WHERE vectors.id IS NULL").fetchone()[0]
        orphan = conn.execute("SELECT COUNT(*) FROM vectors LEFT JOIN entries USING (id) "
                              "WHERE entries.id IS NULL").fetchone()[0]
        bad_len = conn.execute("SELECT COUNT(*) FROM vectors WHERE length(vec) != ?", (ident.feat_dim * 4,)).fetchone()[0]
        if no_vec:
            problems.append(f"{no_vec} entries have no vector")
        if orphan:
            problems.append(f"{orphan} vectors belong to no entry")
        if bad_len:
            problems.append(f"{bad_len} vectors are not {ident.feat_dim}-d float32")
        kind = info.get("index_kind", "flat")
        if kind in ("ivf", "ivfpq") and conn.execute("SELECT COUNT(*) FROM blobs WHERE key = 'trained'").fetchone()[0] == 0:
            problems.append(f"the {kind} index has no trained quantiser stored")
        kinds = dict(conn.execute("SELECT kind, COUNT(*) FROM entries GROUP BY kind").fetchall())
        state_keys = conn.execute("SELECT COUNT(*) FROM state").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise ReIDError(f"--db: {db / DB_FILE} is not a readable reidkit gallery database ({exc})") from None
    finally:
        conn.close()
    gen = int(info.get("generation", "0"))
    cached = store.cache_path(db, gen)
    cache = "absent (rebuilt from the store on the next open)"
    if cached.is_file():
        try:
            nt = faiss.read_index(str(cached)).ntotal
            cache = "ok" if nt == n_entries else f"stale ({nt} rows; rebuilt on the next open)"
        except RuntimeError:
            cache = "unreadable (rebuilt on the next open)"
    leftovers = [p.name for p in db.iterdir() if p.name.startswith(".") and ".tmp" in p.name]
    leftovers += [p.name for p in db.glob("index.g*.faiss") if p != cached]
    report = {"db": str(db), "consistent": not problems, "problems": problems, "generation": gen,
              "uid": info.get("uid", ""), "entries": n_entries, "vectors": n_vectors,
              "images": int(kinds.get("image", 0)), "tracklets": int(kinds.get("tracklet", 0)),
              "state_keys": state_keys, "index": kind, "cache": cache, "model": ident.label(),
              "feat_dim": ident.feat_dim, "leftover_files": leftovers}
    if problems:
        raise ReIDError(f"--db: {db} is inconsistent: {'; '.join(problems)}; run `reidkit index repair --db {db}`")
    return report


def repair_gallery(db: str | os.PathLike, weights: str | os.PathLike | None = None, device: str | None = None,
                   batch_size: int = 64, progress: Callable[[str], None] | None = None,
                   lock_timeout: float | None = None) -> dict[str, Any]:
    """Convert a gallery of an older reidkit (or fix an inconsistent one) into the crash-consistent layout.

    Vectors are read back from the old flat / IVF-Flat / HNSW-Flat index where it has them; rows it
    lacks are re-extracted with the recorded model (or `weights`); what can be neither is reported.
    """
    import faiss

    db = Path(db).expanduser().absolute()
    store.recover(db)
    if not (db / DB_FILE).is_file():
        raise _not_a_gallery(db)
    with WriterLock(db, timeout=lock_timeout, on_wait=progress or _stderr):
        store.clean_for_write(db)
        conn = store.connect(db / DB_FILE)
        try:
            version = store.schema_version(conn)
            if version == store.SCHEMA_VERSION:
                conn.close()
                try:
                    rep = check_gallery(db)
                except ReIDError:
                    rep = None
                if rep is not None:
                    if not rep["cache"] == "ok":
                        _Snapshot.load(db).close()  # rebuilds and writes the cache
                    store.drop_old_caches(db, keep=rep["generation"])
                    return {"action": "none needed" if rep["cache"] == "ok" else "rebuilt the faiss cache",
                            "entries": rep["entries"], "recovered_from_index": 0, "reextracted": 0, "dropped": []}
                return _repair_v2(db, progress)
            if version != 1:
                raise ReIDError(f"--db: {db / DB_FILE} is not a reidkit gallery database")
            ident = _model_identity(conn, db)
            info = store.read_info(conn)
            rows = conn.execute("SELECT id, path, camid, frame, width, height FROM images ORDER BY id").fetchall()
        finally:
            conn.close()
        dim = ident.feat_dim
        vecs: dict[int, np.ndarray] = {}
        note = ""
        n_idx = 0
        try:
            old = faiss.read_index(str(db / LEGACY_INDEX))
            n_idx = int(old.ntotal)
            if old.d != dim:
                raise RuntimeError(f"dimension {old.d} != {dim}")
            try:
                faiss.extract_index_ivf(old).make_direct_map()
            except RuntimeError:
                pass
            have = [r[0] for r in rows if r[0] < n_idx]
            if have:
                got = old.reconstruct_batch(np.asarray(have, dtype=np.int64))
                vecs = {i: got[j] for j, i in enumerate(have)}
        except RuntimeError as exc:
            note = f"{LEGACY_INDEX} unreadable or without stored vectors ({str(exc).splitlines()[0][:120]})"
            vecs = {}
        missing = [r for r in rows if r[0] not in vecs]
        dropped: list[str] = []
        if missing:
            src = ident.source
            if weights is None and src != "imagenet" and not Path(src).is_file():
                raise ReIDError(
                    f"--db: {db}: {len(missing)} of {len(rows)} images have no vector in {LEGACY_INDEX}"
                    + (f" ({note})" if note else "") + f" and the model that built the gallery ({src}) is not there; "
                    f"pass --weights with that model to re-extract them")
            ext = FeatureExtractor.load(weights if weights is not None else (None if src == "imagenet" else src),
                                        device=device, batch_size=batch_size, size=ident.input_size)
            if not ident.compatible(ext.identity):
                raise ReIDError(f"--weights: {ext.identity.label()} is not the model that built {db} ({ident.label()})")
            if progress is not None:
                progress(f"re-extracting {len(missing)} images with {ident.label()}")
            paths = [r[1] for r in missing]
            done: set[str] = set()
            for part in _embed_paths(ext, paths, progress=progress):
                by_path = {r[1]: r[0] for r in missing}
                for p, f in zip(part.paths, part.features):
                    vecs[by_path[p]] = f
                    done.add(p)
            dropped = [p for p in paths if p not in done]
        extra_rows = max(0, n_idx - len(rows))
        keep = [r for r in rows if r[0] in vecs]
        new_info = {k: v for k, v in info.items() if k in ("index_kind", "nprobe", "ef_search", "hnsw_m", "nlist",
                                                          "corrupt_skipped", "created")}
        new_info.setdefault("index_kind", "flat")
        tmp = store.new_build_folder(db)
        try:
            conn = store.create_db(tmp / DB_FILE, _model_row(ident), {**new_info, "uid": store.new_uid(),
                                                                      "generation": "1"})
            conn.execute("BEGIN")
            out_rows = []
            for r in keep:
                cam, frame = r[2], r[3]
                out_rows.append({"path": r[1], "kind": "image", "camid": cam,
                                 "camera": None if cam is None else f"c{cam + 1}", "tracklet": None,
                                 "frame_start": frame, "frame_end": frame, "t_start": None, "t_end": None,
                                 "width": r[4], "height": r[5], "meta": None})
            feats = np.stack([vecs[r[0]] for r in keep]) if keep else np.zeros((0, dim), np.float32)
            store.insert_entries(conn, [r[0] for r in keep], out_rows, feats, db)
            conn.execute("COMMIT")
            kind = new_info["index_kind"]
            nl = int(new_info["nlist"]) if kind == "ivf" and new_info.get("nlist", "0") != "0" else None
            if nl is not None and nl > len(keep):
                nl = None
            _finish_new(tmp, conn, ident, kind, nl, None, DEFAULT_REFINE_K, progress)
            conn.close()
            crash_point("build_before_publish")
            store.publish_folder(tmp, db)
        except BaseException:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return {"action": "converted to the crash-consistent layout", "entries": len(keep),
            "recovered_from_index": len(keep) - (len(missing) - len(dropped)),
            "reextracted": len(missing) - len(dropped), "dropped": dropped, "index_rows_without_metadata": extra_rows,
            "note": note}


def _repair_v2(db: Path, progress: Callable[[str], None] | None) -> dict[str, Any]:
    """Drop entries without a vector / vectors without an entry / wrong-size vectors, in one generation."""
    conn = store.connect(db / DB_FILE)
    try:
        store.begin_write(conn, db)
        dim = int(conn.execute("SELECT feat_dim FROM model").fetchone()[0])
        bad = [r[0] for r in conn.execute(
            "SELECT entries.id FROM entries LEFT JOIN vectors USING (id) WHERE vectors.id IS NULL "
            "OR length(vectors.vec) != ?", (dim * 4,))]
        paths = [r[0] for r in conn.execute(
            f"SELECT path FROM entries WHERE id IN ({','.join('?' * len(bad))})", bad)] if bad else []
        for i in bad:
            conn.execute("DELETE FROM entries WHERE id = ?", (i,))
            conn.execute("DELETE FROM vectors WHERE id = ?", (i,))
        conn.execute("DELETE FROM vectors WHERE id NOT IN (SELECT id FROM entries)")
        store.bump_generation(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()
    snap = _Snapshot.load(db)
    store.drop_old_caches(db, keep=snap.generation)
    n = snap.count
    snap.close()
    if progress is not None:
        progress(f"dropped {len(paths)} entries without a usable vector")
    return {"action": "dropped entries without a usable vector", "entries": n, "recovered_from_index": 0,
            "reextracted": 0, "dropped": paths}
