"""The Detector protocol every person detector speaks.

A detector is called with one BGR uint8 frame (H x W x 3) and its 0-based index in the video and
returns ``Detections``: boxes (x1, y1, x2, y2 in frame pixels, float32 N x 4) and scores (float32 N).
Jobs travel to Dask workers as picklable specs, ``{"kind": NAME, "options": {KEY: VALUE}}``, and
each process rebuilds its detector from one with ``cls.from_options(options, video)``
(reidkit.video.detectors.build_detector). ``per_video`` says whether a detector models one video
(the motion detector's background: built for each video from its path) or can be shared by every
video of a run (built once per process).
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from reidkit.video.detect import Detections, empty

__all__ = ["Detections", "Detector", "empty"]


@runtime_checkable
class Detector(Protocol):
    """A person detector (see the module docstring)."""

    per_video: ClassVar[bool]  # True: one per video (built with the video's path); False: shared

    @classmethod
    def from_options(cls, options: Any, video: str | None = None) -> "Detector":
        """A detector from its options dataclass (None when it declares none) and, for a per-video one, the video."""
        ...

    def __call__(self, frame: np.ndarray | None, index: int) -> Detections:
        """Boxes and scores of frame `index` (BGR uint8 H x W x 3)."""
        ...
