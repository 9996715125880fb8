"""Folders of crops into gallery entries: list the images, parse camera and frame from file names, embed in chunks."""

from __future__ import annotations

import os
import re
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reidkit.errors import ReIDError
from reidkit.inference import FeatureExtractor

__all__ = ["CHUNK", "list_images", "parse_camera_frame", "Embedded", "embed_paths", "image_rows"]

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
        raise ReIDError(f"images folder {root} is not a folder")
    paths = sorted({str(p.resolve()) for p in _list(root)})
    if not paths:
        raise ReIDError(f"images folder {root}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under it")
    return paths


def parse_camera_frame(path: str | os.PathLike) -> tuple[int | None, int | None]:
    """(camid 0-based, frame) from a Market/Duke-style file name; None for what the name does not give."""
    m = _NAME_RX.search(Path(path).stem)
    if m is None:
        return None, None
    cam = int(m.group(1)) - 1
    frame = m.group(2) or m.group(3)
    return (cam if cam >= 0 else None), (int(frame) if frame is not None else None)


def _image_size(path: str) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return int(im.width), int(im.height)
    except (OSError, ValueError):
        return 0, 0


@dataclass
class Embedded:
    """One embedded chunk: the readable paths, their features, the unreadable paths."""

    paths: list[str]
    features: np.ndarray
    corrupt: list[str]


def embed_paths(
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


def image_rows(paths: Sequence[str]) -> list[dict[str, Any]]:
    """Entry rows of image files: camera and frame from the name, width and height from the header, and in
    meta the file's size and mtime (``file_stat``: the service serves the file only while they match)."""
    import json

    from reidkit.retrieval.store import FILE_STAT_KEY, file_stat

    rows = []
    for p in paths:
        cam, frame = parse_camera_frame(p)
        w, h = _image_size(p)
        # None (the file went away or is no regular file any more) is recorded too: never served then
        meta = json.dumps({FILE_STAT_KEY: file_stat(p)})
        rows.append(
            {
                "path": p,
                "kind": "image",
                "camid": cam,
                "camera": None if cam is None else f"c{cam + 1}",
                "tracklet": None,
                "frame_start": frame,
                "frame_end": frame,
                "t_start": None,
                "t_end": None,
                "width": w,
                "height": h,
                "meta": meta,
            }
        )
    return rows
