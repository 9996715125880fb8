"""New galleries, published whole (reidkit.retrieval.gallery.Gallery.build and Gallery.create): every image
under a folder embedded into a new store, or an empty store for a model whose entries come later; and what a
new gallery records of how its features are made (`engine_info`)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reidkit.errors import OptionError, ReIDError
from reidkit.inference import FeatureExtractor
from reidkit.inference.chunks import embed_chunks
from reidkit.retrieval.backends import BuildPlan, GalleryStore, describe_db, resolve
from reidkit.retrieval.build_options import BuildOptions
from reidkit.retrieval.folder import image_rows
from reidkit.utils.io import image_paths

__all__ = ["engine_info", "publish_empty", "publish_folder"]


def engine_info(extractor: Any) -> dict[str, str]:
    """What a new gallery records of how its features are made: int8 features (queries are embedded the
    same way, Gallery.open; float engines agree within 1e-4 and record nothing), and a model that is a
    program (TorchScript, loaded with --trust-checkpoint): its kind and the sha256 of the file trusted."""
    out = {"features_engine": "int8"} if getattr(extractor, "engine", "") == "int8" else {}
    source = getattr(getattr(extractor, "identity", None), "source", "") or ""
    if source not in ("", "imagenet") and Path(source).is_file():
        from reidkit.models.checkpoint import file_sha256, is_torchscript

        if is_torchscript(source):
            out.update(
                {
                    "model_program": "torchscript",
                    "model_trust": "trust_checkpoint",
                    "model_file_sha256": file_sha256(source),
                }
            )
    return out


def publish_folder(
    images_dir: str | os.PathLike,
    db: str | os.PathLike,
    o: BuildOptions,
    progress: Callable[[str], None] | None = None,
    extractor: FeatureExtractor | None = None,
) -> tuple[GalleryStore, FeatureExtractor, dict[str, Any]]:
    """Embed every image under `images_dir` into a new store `db` built as `o` says, published whole (aborted on
    any error); returns (store, the model used, report {added, skipped_existing, corrupt, corrupt_paths, total})."""
    index, nlist, pq_m = o.index, o.nlist, o.pq_m
    paths = image_paths(images_dir)
    builder = resolve(db, o.collection).builder(
        BuildPlan(index, nlist, pq_m, overwrite=o.overwrite, lock_timeout=o.lock_timeout, progress=progress)
    )
    if nlist is not None and index in ("ivf", "ivfpq") and nlist > len(paths):
        raise OptionError("nlist", f"more lists than images under {images_dir} ({len(paths)})", value=nlist)
    if pq_m is not None and index == "ivfpq" and extractor is not None and extractor.identity.feat_dim % pq_m:
        raise OptionError("pq_m", f"must divide the feature dimension {extractor.identity.feat_dim}", value=pq_m)
    if extractor is None:
        extractor = FeatureExtractor.load(
            o.weights,
            device=o.device,
            batch_size=o.batch_size,
            size=o.size,
            engine=o.engine,
            trust_checkpoint=o.trust_checkpoint,
        )
    ident = extractor.identity
    info = {**o.index_info(), **engine_info(extractor)}
    corrupt: list[str] = []
    n = 0
    try:
        builder.start(ident, info)
        for part in embed_chunks(extractor, paths, progress=progress, strict=o.strict):
            builder.append(image_rows(part.paths), part.features)
            n += len(part.paths)
            corrupt.extend(part.corrupt)
        if n == 0:
            raise ReIDError(f"images folder {images_dir}: none of its {len(paths)} images could be read")
        store = builder.publish(corrupt=len(corrupt))
    except BaseException:
        builder.abort()
        raise
    report = {"added": n, "skipped_existing": 0, "corrupt": len(corrupt), "corrupt_paths": corrupt, "total": n}
    return store, extractor, report


def publish_empty(
    db: str | os.PathLike,
    extractor: FeatureExtractor,
    index: str,
    hnsw_m: int,
    ef_search: int | None,
    lock_timeout: float | None,
    collection: str | None,
) -> GalleryStore:
    """An empty store for `extractor`'s model (flat or hnsw), published like a build; refuses an existing one."""
    if index not in ("flat", "hnsw"):
        raise OptionError("index", f"an empty gallery can be flat or hnsw ({index} needs training features)")
    builder = resolve(db, collection).builder(BuildPlan(index, lock_timeout=lock_timeout))
    info = {**BuildOptions(index=index, hnsw_m=hnsw_m, ef_search=ef_search).index_info(), **engine_info(extractor)}
    try:
        builder.start(extractor.identity, info)
        store = builder.publish(
            existing_error=f"{describe_db(db, collection)} already holds a gallery "
            f"(created meanwhile by another process)"
        )
    except BaseException:
        builder.abort()
        raise
    return store
