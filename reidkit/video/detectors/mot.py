"""``mot``: detections read from a MOTChallenge file (``--detections FILE``, one per video).

The format is ``frame,id,x,y,w,h,conf,...`` with 1-based frames, as the MOT benchmark ships public
detections and as reidkit.data.scene writes ground truth. The whole file is parsed up front, so a
malformed row (named by file and line number) fails before anything is ingested.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reidkit.errors import OptionError
from reidkit.video.detectors import register_detector
from reidkit.video.detectors.base import Detections, empty

_MAX_FRAME = 2**31 - 1  # frame numbers are stored as SQLite integers and OpenCV frame indices


@dataclass
class MotOptions:
    """The detections file and the lowest confidence kept (None: every row)."""

    path: str = ""
    min_conf: float | None = None


@register_detector("mot", options=MotOptions)
class MotDetections:
    """Detections read from a MOTChallenge-format file, looked up by 0-based frame index."""

    per_video = False  # one file per video, but nothing in it depends on the frames: the parsed rows travel

    @classmethod
    def from_options(cls, options: MotOptions | None, video: str | None = None) -> "MotDetections":
        """The detections of the file `options.path`."""
        opts = options or MotOptions()
        if not opts.path:
            raise OptionError("detector.mot.path", "give the MOTChallenge detections file (--detections FILE)")
        return cls(opts.path, -np.inf if opts.min_conf is None else float(opts.min_conf))

    def __init__(self, path: str | os.PathLike, min_conf: float = -np.inf) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise OptionError("detections", f"{self.path} is not a file")
        self._by_frame: dict[int, list[tuple[float, ...]]] = {}
        # utf-8-sig: a byte-order mark (Windows editors write one) is not part of line 1's frame number.
        with open(self.path, encoding="utf-8-sig", errors="replace") as fh:
            for n, line in enumerate(fh, 1):
                text = line.strip()
                if not text or text.startswith("#"):
                    continue
                parts = [p.strip() for p in text.split(",")]
                try:
                    if len(parts) < 7:
                        raise ValueError
                    frame_f = float(parts[0])  # "12" or "12.0" (some tools write floats), never "3.5"
                    if not (np.isfinite(frame_f) and frame_f.is_integer() and 1 <= frame_f <= _MAX_FRAME):
                        raise ValueError
                    frame = int(frame_f)
                    x, y, w, h, conf = (float(v) for v in parts[2:7])
                    if not all(np.isfinite((x, y, w, h, conf))) or w < 0 or h < 0:
                        raise ValueError
                except ValueError:
                    raise OptionError(
                        "detections",
                        "expected 'frame,id,x,y,w,h,conf,...' with an integer frame >= 1 "
                        f"and finite non-negative sizes, got {text[:80]!r}",
                        value=f"{self.path}, line {n}",
                    ) from None
                if conf >= min_conf and w > 0 and h > 0:
                    self._by_frame.setdefault(frame - 1, []).append((x, y, x + w, y + h, conf))

    @property
    def frames(self) -> int:
        """Number of frames with at least one detection."""
        return len(self._by_frame)

    def __call__(self, frame: np.ndarray | None, index: int) -> Detections:
        """Boxes and scores of 0-based frame `index` (the pixels are not needed)."""
        rows = self._by_frame.get(int(index))
        if not rows:
            return empty()
        a = np.asarray(rows, dtype=np.float32)
        return a[:, :4].copy(), a[:, 4].copy()
