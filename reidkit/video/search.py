"""Cross-camera tracklet search: a query crop, an image with a box, or a stored tracklet -> ranked
tracklets of the gallery, by cosine similarity of the query feature to the tracklet features.

A tracklet query uses its stored feature and excludes its own camera (the question is "where else
did this person appear?"); an image query excludes the camera given by ``exclude_camera``, if any.
Each hit carries camera, frame and time span, thumbnails (names served by ``GET /thumbs/{name}``)
and its gallery id.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence, cast

import numpy as np

from reidkit.errors import NotFound, OptionError, ReIDError


def parse_box(text: str | Sequence[float] | None) -> tuple[float, float, float, float] | None:
    """'x1,y1,x2,y2' (or a sequence of four numbers) -> a box with x2 > x1 and y2 > y1."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    try:
        vals = [float(v) for v in (text.split(",") if isinstance(text, str) else text)]
    except (TypeError, ValueError):
        raise OptionError("box", f"expected 'x1,y1,x2,y2' numbers, got {text!r}") from None
    if len(vals) != 4 or not all(np.isfinite(vals)) or vals[2] <= vals[0] or vals[3] <= vals[1]:
        raise OptionError("box", f"expected 'x1,y1,x2,y2' with x2 > x1 and y2 > y1, got {text!r}")
    return vals[0], vals[1], vals[2], vals[3]


def crop_rgb(image: np.ndarray, box: Sequence[float] | None) -> np.ndarray:
    """The box (clipped to the image) of an RGB image, or the whole image for no box."""
    if box is None:
        return image
    from reidkit.video.embedder import crop_boxes

    h, w = image.shape[:2]
    if box[0] >= w or box[1] >= h or box[2] <= 0 or box[3] <= 0:
        raise OptionError("box", f"{','.join(f'{v:g}' for v in box)} lies outside the {w}x{h} image")
    return crop_boxes(image, [box], bgr=False)[0]


def find_tracklet(gallery: Any, ref: str | int) -> dict[str, Any]:
    """The stored tracklet entry with gallery id `ref` (digits) or tracklet key `ref`."""
    text = str(ref).strip()
    rec = None
    # Digits past SQLite's int64 cannot be an id (SQLite would raise OverflowError): look them up as a key.
    if text.isascii() and text.isdigit() and int(text) <= 2**63 - 1:
        rec = gallery.record(int(text))
        if rec is not None and rec.get("kind") != "tracklet":
            rec = None
    if rec is None:
        rows = gallery.entries(kind="tracklet", tracklet=text)
        rec = rows[0] if rows else None
    if rec is None:
        raise NotFound(f"tracklet: no tracklet {text!r} in gallery {gallery.db}", public=f"no tracklet {text!r}")
    return cast(dict[str, Any], rec)  # a Gallery record (the gallery is duck-typed here)


def hit(rec: dict[str, Any], score: float | None = None) -> dict[str, Any]:
    """The public view of a tracklet entry: id, key, camera, spans, thumbnails (names), score."""
    meta = rec.get("meta") or {}
    out = {
        "id": int(rec["id"]),
        "tracklet": rec.get("tracklet"),
        "camera": rec.get("camera"),
        "frame_start": rec.get("frame_start"),
        "frame_end": rec.get("frame_end"),
        "t_start": rec.get("t_start"),
        "t_end": rec.get("t_end"),
        "thumbs": list(meta.get("thumbs", [])),
        "video": Path(meta["video"]).name if meta.get("video") else None,
    }
    if score is not None:
        out["score"] = float(score)
    return out


def search_tracklets(
    gallery: Any,
    image: np.ndarray | str | os.PathLike | None = None,
    box: Sequence[float] | None = None,
    tracklet: str | int | None = None,
    k: int = 10,
    exclude_camera: str | None = None,
) -> dict[str, Any]:
    """Ranked tracklets for a query image (RGB array or path; optional box) or a stored tracklet."""
    if (image is None) == (tracklet is None):
        raise ReIDError("give a query image or a tracklet, not both and not neither")
    query: dict[str, Any]
    if tracklet is not None:
        rec = find_tracklet(gallery, tracklet)
        feat = gallery.features([rec["id"]])[0]
        exclude_camera = rec.get("camera") if exclude_camera is None else exclude_camera
        query = {"tracklet": hit(rec)}
    else:
        if isinstance(image, (str, os.PathLike)):
            from reidkit.utils.images import read_image

            arr = read_image(image)
            if arr is None:
                raise OptionError("image", f"cannot read {image} (missing or not an image)")
            image = arr
        feat = gallery.embed([crop_rgb(np.asarray(image), box)])[0]
        query = {"box": list(box) if box is not None else None}
    query["excluded_camera"] = exclude_camera
    rows = gallery.search_features(
        np.asarray(feat, np.float32)[None], k=int(k), kind="tracklet", exclude_camera=exclude_camera
    )[0]
    return {"query": query, "results": [hit(r, r["score"]) for r in rows]}


def appearances(gallery: Any, ref: str | int) -> dict[str, Any]:
    """A tracklet and its appearances (frame, time, box) in time order."""
    rec = find_tracklet(gallery, ref)
    meta = rec.get("meta") or {}
    fps = float(meta.get("fps") or 0) or None
    t0 = rec.get("t_start") or 0.0
    f0 = rec.get("frame_start") or 1
    rows = []
    for b in sorted(meta.get("boxes", []), key=lambda b: b[0]):
        frame = int(b[0])
        rows.append(
            {
                "frame": frame,
                "t": None if fps is None else round(t0 + (frame - f0) / fps, 3),
                "box": [float(v) for v in b[1:5]],
                "conf": float(b[5]) if len(b) > 5 else None,
            }
        )
    thumbs = [{"name": n, "frame": f} for n, f in zip(meta.get("thumbs", []), meta.get("thumb_frames", []))]
    return {"tracklet": hit(rec), "appearances": rows, "thumbs": thumbs}
