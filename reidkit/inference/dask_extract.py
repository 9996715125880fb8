"""`reidkit extract --workers N | --cluster ADDRESS`: a folder's features computed on a Dask cluster.

The image list is cut into shards of ``shard`` paths; each task loads the model once per worker
process (from the same weights file, which the workers must be able to read: a local cluster, or a
shared filesystem) and returns its shard's features and unreadable files; the driver puts the shards
back in order. A task is a pure function of (model spec, paths), so a worker lost mid-task makes Dask
run the shard again elsewhere with the same result.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from reidkit.utils.dask import dask_client
from reidkit.utils.validate import check_positive

DEFAULT_SHARD = 512
_EXTRACTORS: dict[tuple, Any] = {}


def _extractor(spec: dict[str, Any]) -> Any:
    """The worker's FeatureExtractor for `spec` (loaded once per worker process)."""
    key = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in spec.items()))
    if key not in _EXTRACTORS:
        from reidkit.inference import FeatureExtractor

        _EXTRACTORS[key] = FeatureExtractor.load(
            spec["source"],
            device="cpu",
            batch_size=spec["batch_size"],
            size=spec["size"],
            fmt=spec["fmt"],
            engine=spec["engine"],
            flip=spec["flip"],
            trust_checkpoint=spec["trust"],
            threads=1,
        )
    return _EXTRACTORS[key]


def extract_shard(spec: dict[str, Any], paths: list[str], camids: list[int] | None) -> tuple[np.ndarray, list[str]]:
    """One task: (features of the readable images of `paths`, in order; the unreadable ones)."""
    fx = _extractor(spec)
    skipped: list[str] = []
    cams = None if camids is None else np.asarray(camids)
    feats = fx.embed_paths(paths, camids=cams if fx.uses_camera else None, skipped=skipped)
    return np.asarray(feats, np.float32), skipped


def extract_on_cluster(
    source: str,
    paths: Sequence[str],
    *,
    workers: int | None = None,
    address: str | None = None,
    client: Any = None,
    shard: int | None = None,
    camids: np.ndarray | None = None,
    batch_size: int = 64,
    size: Sequence[int] | None = None,
    fmt: str | None = None,
    engine: str = "torch",
    flip: bool = True,
    trust_checkpoint: bool = False,
) -> tuple[np.ndarray, list[str]]:
    """(N' x D features of `paths` in order, unreadable paths) computed by the cluster's workers (CPU)."""

    shard = DEFAULT_SHARD if shard is None else shard
    check_positive("shard", int(shard))
    spec = {
        "source": str(source),
        "batch_size": int(batch_size),
        "size": list(size) if size else None,
        "fmt": fmt,
        "engine": engine,
        "flip": bool(flip),
        "trust": bool(trust_checkpoint),
    }
    paths = [str(p) for p in paths]
    parts = [(i, min(i + int(shard), len(paths))) for i in range(0, len(paths), int(shard))]
    with dask_client(workers, address, client) as c:
        futures = [
            c.submit(
                extract_shard, spec, paths[a:b], None if camids is None else [int(v) for v in camids[a:b]], pure=False
            )
            for a, b in parts
        ]
        results = c.gather(futures)
    skipped = [p for _f, s in results for p in s]
    feats = [f for f, _s in results if len(f)]
    dim = next((f.shape[1] for f in feats), 0)
    return (np.concatenate(feats) if feats else np.zeros((0, dim), np.float32)), skipped
