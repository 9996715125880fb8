"""Image files into features one chunk at a time, for galleries of millions of images.

``FeatureExtractor.embed_paths`` embeds a list of files in one go (sharded under torchrun);
``embed_chunks`` streams: it decodes a chunk the way the training cache does (``ImageCache``,
Pillow's bilinear resize, the same pixels ``FeatureExtractor.embed_images`` sees), embeds it and
yields it, so memory stays bounded by the chunk however many files there are.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from reidkit.errors import ReIDError
from reidkit.inference import FeatureExtractor

__all__ = ["CHUNK", "Embedded", "embed_chunks"]

# Images decoded, embedded and added per step: bounds memory for million-image galleries.
CHUNK = 1024


@dataclass
class Embedded:
    """One embedded chunk: the readable paths, their features, the unreadable paths."""

    paths: list[str]
    features: np.ndarray
    corrupt: list[str]


def embed_chunks(
    extractor: FeatureExtractor,
    paths: Sequence[str],
    chunk: int = CHUNK,
    progress: Callable[[str], None] | None = None,
    strict: bool = False,
) -> Iterator[Embedded]:
    """Decode (ImageCache), embed and yield one chunk at a time; unreadable images are skipped and listed.

    `strict`: the first unreadable (corrupt, zero-byte, missing) image is an error naming it.
    """
    from reidkit.data.pipeline import ImageCache

    h, w = extractor.identity.input_size
    hw = (int(h), int(w))
    done, t0 = 0, time.perf_counter()
    for s in range(0, len(paths), chunk):
        part = list(paths[s : s + chunk])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # skipped images are counted below instead
            cache = ImageCache.build(part, size=hw)
        if strict and len(cache.skipped):
            bad = cache.skipped[0]
            size = os.path.getsize(bad) if os.path.exists(bad) else None
            what = "a zero-byte file" if size == 0 else "missing" if size is None else "corrupt or not an image"
            raise ReIDError(f"image {bad} cannot be read ({what}); strict mode stops at the first unreadable image")
        ok = np.flatnonzero(cache.valid)
        good = [part[i] for i in ok]
        feats = (
            extractor.embed(np.ascontiguousarray(cache.images[ok]))
            if len(ok)
            else np.zeros((0, extractor.identity.feat_dim), np.float32)
        )
        done += len(part)
        if progress is not None:
            rate = done / max(time.perf_counter() - t0, 1e-9)
            progress(f"embedded {done}/{len(paths)} images ({rate:.0f} img/s)")
        yield Embedded(good, feats, list(cache.skipped))
