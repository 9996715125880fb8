"""Gallery index: features in faiss (inner product on L2-normalised features = cosine) plus SQLite metadata.

A gallery folder holds two files:

- ``index.faiss``: one row per image; the faiss row id is the image id.
- ``meta.sqlite``: ``images`` (id, path, camid, frame, width, height), ``model`` (the identity of
  the model that made the features: a SHA-256 of the weights or ``imagenet:efficientnet_lite0``,
  feature dimension, input size, mean/std, where to load it from) and ``info`` (index kind and
  search settings, counts).

``meta.sqlite`` is written last (build) or committed last (add), so a present database always
describes a complete index; ``Gallery.open`` checks the two agree.
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reidkit.errors import ReIDError

__all__ = [
    "Gallery", "FeatureExtractor", "ModelIdentity", "INDEX_KINDS", "IMAGENET_IDENTITY",
    "list_images", "parse_camera_frame", "make_faiss_index", "default_nlist",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
INDEX_KINDS = ("flat", "ivf", "hnsw")
IMAGENET_IDENTITY = "imagenet:efficientnet_lite0"
DEFAULT_SIZE = (256, 128)
INDEX_FILE = "index.faiss"
META_FILE = "meta.sqlite"
SCHEMA_VERSION = 1
HNSW_M = 32
DEFAULT_NPROBE = 32
DEFAULT_EF_SEARCH = 128
# Images decoded, embedded and added per step: bounds memory for million-image galleries.
CHUNK = 1024

# Market-1501 "0002_c1s1_000451_03.jpg" (camera 1, frame 451) and DukeMTMC "0001_c2_f0046182.jpg".
_NAME_RX = re.compile(r"(?:^|_)c(\d+)(?:s\d+_(\d+)|_f(\d+))?(?=_|$)")


def list_images(folder: str | os.PathLike) -> list[str]:
    """Absolute paths of the image files under `folder` (recursive, sorted)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ReIDError(f"--images: {root} is not a folder")
    paths = sorted(str(p.resolve()) for p in root.rglob("*")
                   if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not paths:
        raise ReIDError(f"--images: no image files ({', '.join(IMAGE_SUFFIXES)}) under {root}")
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

    @classmethod
    def load(cls, weights: str | os.PathLike | None = None, device: str | None = None,
             batch_size: int = 64, size: Sequence[int] | None = None) -> FeatureExtractor:
        """Load a checkpoint, an exported .onnx, or (weights=None) the ImageNet EfficientNet-Lite0 + GeM."""
        if weights is None or str(weights) in ("", "imagenet"):
            from reidkit.models.build import ModelConfig, build_model

            # No ReID training: ImageNet features, GeM-pooled (better than avg for retrieval),
            # no neck, so the eval output is the pooled 1280-d vector itself.
            cfg = ModelConfig(backbone="efficientnet_lite0", pretrained=True, pooling="gem", neck="none")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = build_model(cfg, num_classes=1).eval()
            hw = tuple(int(v) for v in (size or DEFAULT_SIZE))
            ident = ModelIdentity(IMAGENET_IDENTITY, "imagenet", int(model.feat_dim), hw,  # type: ignore[arg-type]
                                  tuple(model.mean), tuple(model.std))
            return cls(model, ident, device, batch_size)
        path = Path(weights).expanduser()
        if not path.is_file():
            raise ReIDError(f"--weights: {path} is not a file")
        source = str(path.resolve())
        if path.suffix.lower() == ".onnx":
            from reidkit.export import OnnxFeatureModel

            model = OnnxFeatureModel(path)
            # An export carries its checkpoint's hash, so it can query a gallery built with that checkpoint.
            digest = str(model.metadata.get("weights_sha256") or _sha256(path))
            hw = tuple(model.input_size)
        else:
            from reidkit.models.build import load_model

            model = load_model(path, device="cpu")
            digest = _sha256(path)
            hw = tuple(int(v) for v in (size or getattr(model, "input_size", DEFAULT_SIZE)))
        ident = ModelIdentity(f"sha256:{digest[:16]}", source, int(model.feat_dim), hw,  # type: ignore[arg-type]
                              tuple(float(v) for v in model.mean), tuple(float(v) for v in model.std))
        return cls(model, ident, device, batch_size)

    def embed(self, images: np.ndarray) -> np.ndarray:
        """(N, D) float32 unit-norm features of an N x H x W x 3 uint8 batch at the model's input size."""
        from reidkit.evaluation.features import extract_features

        ident = self.identity
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


def make_faiss_index(kind: str, dim: int, train: np.ndarray | None = None, nlist: int | None = None,
                     hnsw_m: int = HNSW_M, seed: int = 0) -> Any:
    """An empty inner-product faiss index of `kind` (flat | ivf | hnsw); IVF is trained on `train`."""
    import faiss

    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        return index
    if kind == "ivf":
        if train is None or len(train) == 0:
            raise ReIDError("ivf index: needs training features (the gallery is empty)")
        nlist = int(nlist or default_nlist(len(train)))
        if nlist > len(train):
            raise ReIDError(f"--nlist {nlist}: more lists than gallery images ({len(train)})")
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = int(seed)
        # faiss only warns below 39 points per centroid; small galleries are expected to be there
        index.cp.min_points_per_centroid = 1
        index.train(np.ascontiguousarray(train, dtype=np.float32))
        return index
    raise ReIDError(f"--index: expected one of {', '.join(INDEX_KINDS)}, got {kind!r}")


def _set_search_params(index: Any, nprobe: int | None, ef_search: int | None) -> None:
    import faiss

    if nprobe is not None and hasattr(index, "nprobe"):
        index.nprobe = int(min(max(1, nprobe), faiss.extract_index_ivf(index).nlist))
    if ef_search is not None and hasattr(index, "hnsw"):
        index.hnsw.efSearch = int(max(1, ef_search))


def _write_index_atomic(index: Any, path: Path) -> Path:
    """Write to a temp file beside `path` and return it; the caller renames it into place."""
    import faiss

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        faiss.write_index(index, tmp)
    except Exception as exc:  # noqa: BLE001
        os.unlink(tmp)
        raise ReIDError(f"cannot write {path}: {exc}") from exc
    return Path(tmp)


# ----------------------------------------------------------------------------- SQLite

_SCHEMA = """
CREATE TABLE images (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    camid INTEGER,
    frame INTEGER,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL
);
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
"""


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=30, check_same_thread=False)
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


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
    sizes: list[tuple[int, int]]
    corrupt: list[str]


def _embed_paths(extractor: FeatureExtractor, paths: Sequence[str], chunk: int = CHUNK,
                 progress: Callable[[str], None] | None = None) -> Iterator[_Embedded]:
    """Decode (ImageCache), embed and yield one chunk at a time; unreadable images are reported, not fatal."""
    from reidkit.data.pipeline import ImageCache

    hw = tuple(extractor.identity.input_size)
    done, t0 = 0, time.perf_counter()
    for s in range(0, len(paths), chunk):
        part = list(paths[s : s + chunk])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # skipped images are counted below instead
            cache = ImageCache.build(part, size=hw)  # type: ignore[arg-type]
        ok = np.flatnonzero(cache.valid)
        good = [part[i] for i in ok]
        feats = (extractor.embed(np.ascontiguousarray(cache.images[ok])) if len(ok)
                 else np.zeros((0, extractor.identity.feat_dim), np.float32))
        done += len(part)
        if progress is not None:
            rate = done / max(time.perf_counter() - t0, 1e-9)
            progress(f"embedded {done}/{len(paths)} images ({rate:.0f} img/s)")
        yield _Embedded(good, feats, [_image_size(p) for p in good], list(cache.skipped))


# ----------------------------------------------------------------------------- gallery


class Gallery:
    """A searchable gallery folder (``index.faiss`` + ``meta.sqlite``); see the module docstring."""

    def __init__(self, db: Path, index: Any, identity: ModelIdentity, info: dict[str, str],
                 extractor: FeatureExtractor | None = None, device: str | None = None) -> None:
        self.db = db
        self.index = index
        self.identity = identity
        self.info = info
        self.device = device
        self._extractor = extractor
        # One lock for the model and the index: torch must not run concurrently on one model,
        # and faiss search parameters / appends are shared state.
        self._lock = threading.RLock()
        self._camids = self._load_camids()
        self._direct_map = False
        self.last_report: dict[str, Any] = {}

    # -- construction ---------------------------------------------------------------------

    @classmethod
    def build(cls, images_dir: str | os.PathLike, db: str | os.PathLike, weights: str | os.PathLike | None = None,
              index: str = "flat", nlist: int | None = None, nprobe: int | None = None,
              ef_search: int | None = None, hnsw_m: int = HNSW_M, batch_size: int = 64,
              device: str | None = None, size: Sequence[int] | None = None, overwrite: bool = False,
              progress: Callable[[str], None] | None = None,
              extractor: FeatureExtractor | None = None) -> Gallery:
        """Embed every image under `images_dir` and write a new gallery folder `db` (`extractor` overrides `weights`)."""
        if index not in INDEX_KINDS:
            raise ReIDError(f"--index: expected one of {', '.join(INDEX_KINDS)}, got {index!r}")
        db = Path(db).expanduser()
        paths = list_images(images_dir)
        if (db / META_FILE).exists() and not overwrite:
            raise ReIDError(f"--db: {db} already holds a gallery; use `reidkit index add` to append "
                            f"or --overwrite to rebuild it")
        try:
            db.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ReIDError(f"--db: cannot create {db}: {exc}") from exc
        if extractor is None:
            extractor = FeatureExtractor.load(weights, device=device, batch_size=batch_size, size=size)
        ident = extractor.identity
        dim = ident.feat_dim

        rows: list[tuple[int, str, int | None, int | None, int, int]] = []
        corrupt: list[str] = []
        faiss_index: Any = None
        scratch: Path | None = None
        try:
            if index == "ivf":
                # IVF must be trained before anything is added: keep all features in a scratch
                # memmap (never in RAM at million scale), train on them, then add in chunks.
                scratch = db / f".features.{os.getpid()}.tmp.npy"
                buf = np.lib.format.open_memmap(scratch, mode="w+", dtype=np.float32, shape=(len(paths), dim))
                n = 0
                for part in _embed_paths(extractor, paths, progress=progress):
                    buf[n : n + len(part.paths)] = part.features
                    rows.extend(_rows(len(rows), part))
                    corrupt.extend(part.corrupt)
                    n += len(part.paths)
                if n == 0:
                    raise ReIDError(f"--images: none of the {len(paths)} images under {images_dir} could be read")
                rng = np.random.default_rng(0)
                sample = np.sort(rng.choice(n, size=min(n, 256 * default_nlist(n) if nlist is None
                                                        else 256 * int(nlist)), replace=False))
                faiss_index = make_faiss_index("ivf", dim, np.asarray(buf[sample]), nlist=nlist)
                for s in range(0, n, 65536):
                    faiss_index.add(np.ascontiguousarray(buf[s : min(n, s + 65536)]))
                del buf
            else:
                faiss_index = make_faiss_index(index, dim, hnsw_m=hnsw_m)
                for part in _embed_paths(extractor, paths, progress=progress):
                    if len(part.paths):
                        faiss_index.add(part.features)
                    rows.extend(_rows(len(rows), part))
                    corrupt.extend(part.corrupt)
                if not rows:
                    raise ReIDError(f"--images: none of the {len(paths)} images under {images_dir} could be read")
        finally:
            if scratch is not None and scratch.exists():
                scratch.unlink()

        info = {
            "schema_version": str(SCHEMA_VERSION), "index_kind": index,
            "nprobe": str(int(nprobe or DEFAULT_NPROBE)), "ef_search": str(int(ef_search or DEFAULT_EF_SEARCH)),
            "hnsw_m": str(int(hnsw_m)), "nlist": str(getattr(faiss_index, "nlist", 0)),
            "corrupt_skipped": str(len(corrupt)), "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        _set_search_params(faiss_index, int(info["nprobe"]), int(info["ef_search"]))
        cls._write_new(db, faiss_index, ident, info, rows)
        gallery = cls(db, faiss_index, ident, info, extractor, device)
        gallery.last_report = {"added": len(rows), "skipped_existing": 0, "corrupt": len(corrupt),
                               "corrupt_paths": corrupt, "total": len(rows)}
        return gallery

    @staticmethod
    def _write_new(db: Path, faiss_index: Any, ident: ModelIdentity, info: dict[str, str],
                   rows: list[tuple[int, str, int | None, int | None, int, int]]) -> None:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{META_FILE}.", suffix=".tmp", dir=db)
        os.close(fd)
        tmp_db = Path(tmp_name)
        tmp_index: Path | None = None
        try:
            with closing(_connect(tmp_db)) as conn:
                conn.executescript(_SCHEMA)
                conn.execute("INSERT INTO model VALUES (?, ?, ?, ?, ?, ?, ?)", (
                    ident.name, ident.source, ident.feat_dim, ident.input_size[0], ident.input_size[1],
                    json.dumps(list(ident.mean)), json.dumps(list(ident.std))))
                conn.executemany("INSERT INTO info VALUES (?, ?)", sorted(info.items()))
                conn.executemany("INSERT INTO images VALUES (?, ?, ?, ?, ?, ?)", rows)
                conn.commit()
            tmp_index = _write_index_atomic(faiss_index, db / INDEX_FILE)
            # Index first, database last: meta.sqlite only ever appears beside its complete index.
            if (db / META_FILE).exists():
                (db / META_FILE).unlink()
            os.replace(tmp_index, db / INDEX_FILE)
            os.replace(tmp_db, db / META_FILE)
        finally:
            for p in (tmp_db, tmp_index):
                if p is not None and p.exists():
                    p.unlink()

    @classmethod
    def open(cls, db: str | os.PathLike, weights: str | os.PathLike | None = None,
             device: str | None = None, batch_size: int = 64,
             extractor: FeatureExtractor | None = None) -> Gallery:
        """Open an existing gallery; `weights` or `extractor` (else the stored source, loaded on first use) must match its model."""
        import faiss

        db = Path(db).expanduser()
        meta, idx_path = db / META_FILE, db / INDEX_FILE
        if not meta.is_file() or not idx_path.is_file():
            raise ReIDError(f"--db: {db} is not a gallery (expected {META_FILE} and {INDEX_FILE}; "
                            f"create one with `reidkit index build`)")
        try:
            with closing(_connect(meta)) as conn:
                row = conn.execute("SELECT identity, source, feat_dim, input_h, input_w, mean, std FROM model").fetchone()
                info = dict(conn.execute("SELECT key, value FROM info").fetchall())
                count = conn.execute("SELECT COUNT(*) FROM images").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise ReIDError(f"--db: {meta} is not a reidkit gallery database ({exc})") from exc
        if row is None:
            raise ReIDError(f"--db: {meta} has no model row")
        ident = ModelIdentity(row[0], row[1], int(row[2]), (int(row[3]), int(row[4])),
                              tuple(json.loads(row[5])), tuple(json.loads(row[6])))
        try:
            index = faiss.read_index(str(idx_path))
        except Exception as exc:  # noqa: BLE001
            raise ReIDError(f"--db: cannot read {idx_path}: {exc}") from exc
        if index.ntotal != count or index.d != ident.feat_dim:
            raise ReIDError(f"--db: {db} is inconsistent ({INDEX_FILE} has {index.ntotal} rows of dim {index.d}, "
                            f"{META_FILE} lists {count} images of dim {ident.feat_dim}); rebuild it")
        _set_search_params(index, int(info.get("nprobe", DEFAULT_NPROBE)),
                           int(info.get("ef_search", DEFAULT_EF_SEARCH)))
        gallery = cls(db, index, ident, info, None, device)
        gallery._batch_size = batch_size
        if extractor is not None:
            gallery.use_extractor(extractor)
        elif weights is not None:
            gallery.use_model(weights)
        return gallery

    # -- model ---------------------------------------------------------------------------

    _batch_size = 64

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
        if self._extractor is None:
            src = self.identity.source
            if src != "imagenet" and not Path(src).is_file():
                raise ReIDError(f"gallery {self.db} was built with {src}, which is no longer there; "
                                f"pass --weights with that model")
            self.use_model(None if src == "imagenet" else src)
        assert self._extractor is not None
        return self._extractor

    # -- appending ----------------------------------------------------------------------

    def add(self, images_dir: str | os.PathLike, weights: str | os.PathLike | None = None,
            progress: Callable[[str], None] | None = None) -> dict[str, Any]:
        """Append the images under `images_dir` not yet in the gallery (no rebuild); returns counts."""
        if weights is not None:
            self.use_model(weights)
        paths = list_images(images_dir)
        with self._lock, closing(_connect(self.db / META_FILE)) as conn:
            known = {p for (p,) in conn.execute("SELECT path FROM images")}
            new = [p for p in paths if p not in known]
            report: dict[str, Any] = {"added": 0, "skipped_existing": len(paths) - len(new), "corrupt": 0,
                                      "corrupt_paths": []}
            start = int(self.index.ntotal)
            rows: list[tuple[int, str, int | None, int | None, int, int]] = []
            feats: list[np.ndarray] = []
            for part in _embed_paths(self.extractor, new, progress=progress):
                rows.extend(_rows(start + len(rows), part))
                feats.append(part.features)
                report["corrupt_paths"].extend(part.corrupt)
            report["corrupt"] = len(report["corrupt_paths"])
            if rows:
                self._append(conn, rows, np.concatenate(feats), report["corrupt"])
            report["added"] = len(rows)
            report["total"] = int(self.index.ntotal)
        self.last_report = report
        return report

    def _append(self, conn: sqlite3.Connection, rows: list, feats: np.ndarray, corrupt: int) -> None:
        import faiss

        before = int(self.index.ntotal)
        tmp: Path | None = None
        try:
            self.index.add(np.ascontiguousarray(feats, dtype=np.float32))
            tmp = _write_index_atomic(self.index, self.db / INDEX_FILE)
            conn.executemany("INSERT INTO images VALUES (?, ?, ?, ?, ?, ?)", rows)
            prev = int(self.info.get("corrupt_skipped", "0"))
            conn.execute("INSERT OR REPLACE INTO info VALUES ('corrupt_skipped', ?)", (str(prev + corrupt),))
            # Rename the index, then commit: a crash in between leaves counts that disagree,
            # which open() detects, never a database pointing at rows that do not exist.
            os.replace(tmp, self.db / INDEX_FILE)
            conn.commit()
            self.info["corrupt_skipped"] = str(prev + corrupt)
        except BaseException:
            conn.rollback()
            if tmp is not None and tmp.exists():
                tmp.unlink()
            # The in-memory index already has the rows: reload the one on disk.
            self.index = faiss.read_index(str(self.db / INDEX_FILE))
            _set_search_params(self.index, int(self.info.get("nprobe", DEFAULT_NPROBE)),
                               int(self.info.get("ef_search", DEFAULT_EF_SEARCH)))
            raise
        finally:
            self._direct_map = False
        assert self.index.ntotal == before + len(rows)
        self._camids = np.concatenate([self._camids, np.array([-1 if r[2] is None else r[2] for r in rows],
                                                              dtype=np.int64)])

    # -- lookups --------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def _load_camids(self) -> np.ndarray:
        with closing(_connect(self.db / META_FILE)) as conn:
            rows = conn.execute("SELECT id, camid FROM images ORDER BY id").fetchall()
        cams = np.full(len(rows), -1, dtype=np.int64)
        for i, c in rows:
            if c is not None and i < len(cams):
                cams[i] = c
        return cams

    def record(self, image_id: int) -> dict[str, Any] | None:
        """The stored row of one image id (id, path, camid, frame, width, height), or None."""
        with closing(_connect(self.db / META_FILE)) as conn:
            row = conn.execute("SELECT id, path, camid, frame, width, height FROM images WHERE id = ?",
                               (int(image_id),)).fetchone()
        if row is None:
            return None
        return dict(zip(("id", "path", "camid", "frame", "width", "height"), row))

    def _records(self, ids: Sequence[int]) -> dict[int, tuple[str, int | None]]:
        out: dict[int, tuple[str, int | None]] = {}
        with closing(_connect(self.db / META_FILE)) as conn:
            for s in range(0, len(ids), 500):  # SQLite's bound-parameter limit
                part = [int(i) for i in ids[s : s + 500]]
                q = f"SELECT id, path, camid FROM images WHERE id IN ({','.join('?' * len(part))})"
                out.update({r[0]: (r[1], r[2]) for r in conn.execute(q, part)})
        return out

    def features(self, ids: Sequence[int]) -> np.ndarray:
        """Stored features of the given ids (reconstructed from the index)."""
        import faiss

        with self._lock:
            if not self._direct_map and hasattr(self.index, "nprobe"):
                faiss.extract_index_ivf(self.index).make_direct_map()
                self._direct_map = True
            return self.index.reconstruct_batch(np.asarray(ids, dtype=np.int64))

    # -- search ---------------------------------------------------------------------------

    def embed(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """(B, D) unit-norm features of RGB uint8 images of any size, in one batch."""
        with self._lock:
            return self.extractor.embed_images(images)

    def query_feature(self, query: Any) -> tuple[np.ndarray, int | None]:
        """(unit-norm feature, camid from the file name or None) of a path, an RGB image or a feature vector."""
        camid = None
        if isinstance(query, (str, os.PathLike)):
            from reidkit.data.pipeline import read_image

            img = read_image(query)
            if img is None:
                raise ReIDError(f"--image: cannot read {query} (missing or not an image)")
            camid = parse_camera_frame(query)[0]
            return self.embed([img])[0], camid
        if isinstance(query, torch.Tensor):
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
               nprobe: int | None = None, rerank_topm: int = 100) -> list[dict[str, Any]]:
        """Top-k gallery entries for an image path, RGB uint8 image or feature: [{id, path, score, camid}]."""
        feat, _ = self.query_feature(query)
        return self.search_features(feat[None], k=k, rerank=rerank, exclude_camid=[exclude_camid],
                                    nprobe=nprobe, rerank_topm=rerank_topm)[0]

    def search_features(self, feats: np.ndarray, k: int = 20, rerank: bool = False,
                        exclude_camid: Sequence[int | None] | int | None = None, nprobe: int | None = None,
                        rerank_topm: int = 100) -> list[list[dict[str, Any]]]:
        """Batched search of unit-norm (B, D) features; one result list per row."""
        feats = np.ascontiguousarray(np.atleast_2d(feats), dtype=np.float32)
        if feats.shape[1] != self.identity.feat_dim:
            raise ReIDError(f"query: feature dim {feats.shape[1]} != gallery dim {self.identity.feat_dim}")
        if int(k) < 1:
            raise ReIDError(f"k: must be >= 1, got {k}")
        excl = list(exclude_camid) if isinstance(exclude_camid, (list, tuple)) else [exclude_camid] * len(feats)
        n = len(self)
        if n == 0:
            return [[] for _ in feats]
        k = min(int(k), n)
        need = max(k, int(rerank_topm)) if rerank else k
        need = min(need, n)
        fetch = min(n, need * 2 if any(e is not None for e in excl) else need)
        with self._lock:
            if nprobe is not None:
                _set_search_params(self.index, nprobe, None)
            try:
                scores, ids = self.index.search(feats, fetch)
                out = []
                for b in range(len(feats)):
                    cand_ids, cand_scores = self._filtered(feats[b], ids[b], scores[b], excl[b], need, fetch)
                    out.append((cand_ids, cand_scores))
            finally:
                if nprobe is not None:
                    _set_search_params(self.index, int(self.info.get("nprobe", DEFAULT_NPROBE)), None)
        results = []
        for b, (cid, csc) in enumerate(out):
            dist = None
            if rerank and len(cid) > 1:
                order, dist = self._rerank(feats[b], cid)
                cid, csc, dist = cid[order], csc[order], dist[order]
            cid, csc = cid[:k], csc[:k]
            recs = self._records(cid.tolist())
            rows = []
            for j, (i, s) in enumerate(zip(cid.tolist(), csc.tolist())):
                path, cam = recs.get(i, ("", None))
                # float32 dot products of unit vectors can land a hair outside [-1, 1]
                row: dict[str, Any] = {"id": int(i), "path": path, "score": float(np.clip(s, -1.0, 1.0)),
                                       "camid": cam}
                if dist is not None:
                    row["rerank_distance"] = float(dist[j])
                rows.append(row)
            results.append(rows)
        return results

    def _filtered(self, q: np.ndarray, ids: np.ndarray, scores: np.ndarray, exclude: int | None,
                  need: int, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(self)
        while True:
            keep = ids >= 0
            if exclude is not None:
                keep &= self._camids[np.clip(ids, 0, n - 1)] != int(exclude)
            if keep.sum() >= need or fetch >= n:
                return ids[keep][:need], scores[keep][:need]
            # Too many candidates were from the excluded camera: look deeper.
            fetch = min(n, fetch * 4)
            s, i = self.index.search(q[None], fetch)
            ids, scores = i[0], s[0]

    def _rerank(self, q: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """k-reciprocal re-ranking of the query against its M candidates (section 5 defaults, clipped to M)."""
        from reidkit.evaluation.rerank import re_ranking_features

        g = self.features(cand)
        m = len(cand)
        dist = re_ranking_features(q[None], g, k1=min(20, m), k2=min(6, m + 1), lambda_value=0.3, device="cpu")[0]
        return np.argsort(dist, kind="stable"), dist

    def health(self) -> dict[str, Any]:
        """Status summary: gallery size, index kind, model identity."""
        return {"status": "ok", "gallery_size": len(self), "index": self.info.get("index_kind", "flat"),
                "model": self.identity.as_dict()}


def _rows(start: int, part: _Embedded) -> list[tuple[int, str, int | None, int | None, int, int]]:
    rows = []
    for j, (p, (w, h)) in enumerate(zip(part.paths, part.sizes)):
        cam, frame = parse_camera_frame(p)
        rows.append((start + j, p, cam, frame, w, h))
    return rows
