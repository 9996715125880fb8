"""Folders of crops into gallery entries: camera and frame parsed from file names, sizes read from headers.

Listing the images is ``reidkit.utils.io.image_paths``; embedding them in chunks ``reidkit.inference.chunks``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any


__all__ = ["parse_camera_frame", "image_rows"]

# Market-1501 "0002_c1s1_000451_03.jpg" (camera 1, frame 451) and DukeMTMC "0001_c2_f0046182.jpg".
_NAME_RX = re.compile(r"(?:^|_)c(\d+)(?:s\d+_(\d+)|_f(\d+))?(?=_|$)")


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
