"""Reading videos with OpenCV: checked opening, exact frame positions, a stable key per video.

Frames are numbered from 0 here (MOTChallenge files are 1-based; reidkit.video.detect converts).
Seeking by CAP_PROP_POS_FRAMES is not frame-exact for every codec, so ``iter_frames`` reaches a
start frame by grabbing (decoding without converting) the frames before it.

A truncated or partly corrupt file decodes fewer frames than its container announces (issue 17:
30 of 80 frames of a cut .avi, exit 0, no word). ``iter_frames`` fills a :class:`FrameStats`
(frames announced vs frames read) and logs a warning when the stream ends well short of the
announced count; the ingestion report should carry the same two numbers.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from reidkit.errors import OptionError, ReIDError

if TYPE_CHECKING:  # OpenCV is imported when a video is opened, not with the module
    import cv2

log = logging.getLogger(__name__)


@dataclass
class FrameStats:
    """What :func:`iter_frames` met: ``announced`` by the container (0 = unknown), ``read`` = frames
    decoded or skipped before the stream ended, ``ended`` once the end of the stream was reached."""

    announced: int = 0
    read: int = 0
    ended: bool = False

    @property
    def truncated(self) -> bool:
        """True when the stream ended short of the announced count (beyond an estimate's slack)."""
        # Frame counts of some containers are estimates from duration x fps: allow 1% (>= 2 frames).
        return self.ended and self.announced > 0 and self.read < self.announced - max(2, self.announced // 100)

    def warning(self, path: str | os.PathLike) -> str | None:
        """The warning line for a truncated video, None otherwise."""
        if not self.truncated:
            return None
        return (
            f"warning: video {path}: only {self.read} of the {self.announced} frames its container announces "
            f"could be decoded (truncated or corrupt file); the rest was not ingested"
        )


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video (frame_count may be an estimate, 0 when unknown)."""

    path: Path
    fps: float
    frame_count: int
    width: int
    height: int


def _open(path: Path) -> cv2.VideoCapture:
    import cv2

    if not path.is_file():
        raise ReIDError(f"video {path}: no such file")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        cap.release()
        raise ReIDError(f"video {path}: OpenCV cannot open it (not a video, or an unsupported codec)")
    return cap


def probe(path: str | os.PathLike, default_fps: float = 25.0) -> VideoInfo:
    """Open the video, read its first frame; ReIDError when it cannot be read or has no frames."""
    import cv2

    p = Path(path).expanduser()
    cap = _open(p)
    try:
        ok, frame = cap.read()
        if not ok or frame is None:
            raise ReIDError(f"video {p}: no frames could be decoded (empty or corrupt video)")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    finally:
        cap.release()
    if not np.isfinite(fps) or fps <= 0 or fps > 1000:
        fps = default_fps
    return VideoInfo(p, fps, max(n, 0), int(frame.shape[1]), int(frame.shape[0]))


def iter_frames(
    path: str | os.PathLike, start: int = 0, every: int = 1, stats: FrameStats | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """(index, BGR frame) for index = start, start + every, ... until the video ends (0-based indices).

    ``stats`` (optional) receives frames announced vs read; a stream that ends short of the
    announced count is logged as a warning either way.
    """
    import cv2

    if every < 1:
        raise OptionError("every", f"must be >= 1, got {every}")
    p = Path(path).expanduser()
    cap = _open(p)
    stats = stats if stats is not None else FrameStats()
    stats.announced = max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0), 0)
    try:
        i = 0
        while True:
            wanted = i >= start and (i - start) % every == 0
            if wanted:
                ok, frame = cap.read()
                if not ok or frame is None:
                    break
                stats.read = i + 1
                yield i, frame
            elif not cap.grab():  # skipped frames are decoded but never converted
                break
            else:
                stats.read = i + 1
            i += 1
        stats.ended = True
        message = stats.warning(p)
        if message:
            log.warning(message.removeprefix("warning: "))
    finally:
        cap.release()


def video_key(path: str | os.PathLike, camera: str) -> str:
    """A stable key of (camera, video file): names the progress state and the tracklets of this video.

    ``CAMERA-STEM-DIGEST`` (DIGEST: of the absolute path), or ``CAMERA-DIGEST`` when the file is named after
    its camera (the default camera of a video is its file's stem): ``cam2-331ecdbf``, not ``cam2-cam2-331ecdbf``.
    Galleries made before that keep the keys they were ingested with (:func:`legacy_video_keys`)."""
    p = Path(path).expanduser().resolve()
    digest = hashlib.sha1(str(p).encode()).hexdigest()[:8]
    cam, stem = safe_name(camera), safe_name(p.stem)
    return f"{cam}-{digest}" if stem == cam else f"{cam}-{stem}-{digest}"


def legacy_video_keys(path: str | os.PathLike, camera: str) -> list[str]:
    """Keys that earlier releases gave this (camera, video file), other than :func:`video_key`'s: a gallery
    ingested with one of them resumes under it (its stored state and tracklet keys), without duplicates."""
    p = Path(path).expanduser().resolve()
    old = f"{safe_name(camera)}-{safe_name(p.stem)}-{hashlib.sha1(str(p).encode()).hexdigest()[:8]}"
    return [] if old == video_key(path, camera) else [old]


def safe_name(text: str) -> str:
    """`text` reduced to [A-Za-z0-9_.-] (file and key names)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("._") or "x"
