"""``hog``: OpenCV's HOG + linear SVM people detector (Dalal & Triggs, CVPR 2005), offline and built in.

Its window is 64 x 128, so small frames are upscaled first (``min_height``) to let people shorter than
128 pixels be found; the window holds the person with a margin, so boxes are shrunk to their central
``shrink`` = (0.6 w, 0.8 h); scores are the SVM margins. ``detect_scale`` (< 1) runs it on a downscaled
frame: its cost falls with the pixel count, people shorter than about 100 / detect_scale pixels are
missed (measured in benchmarks/bench_video.py). Works on moving cameras, where ``motion`` cannot.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from reidkit.errors import OptionError, ReIDError
from reidkit.video.detect import nms
from reidkit.video.detectors import register_detector
from reidkit.video.detectors.base import Detections, empty


@dataclass
class HogOptions:
    """The HOG detector's options (``--detector-option KEY=VALUE``)."""

    min_height: int = 480  # frames lower than this are upscaled first
    detect_scale: float = 1.0  # run on the frame scaled by this factor (< 1: faster, misses small people)
    scale: float = 1.05  # the HOG pyramid's step
    win_stride: int = 8
    hit_threshold: float = 0.0  # SVM margin a window needs
    iou: float = 0.45  # non-maximum suppression overlap


@register_detector("hog", options=HogOptions)
class HogDetector:
    """OpenCV's HOG people detector (offline, built in); `min_height`: upscale frames lower than this."""

    per_video = False

    @classmethod
    def from_options(cls, options: HogOptions | None, video: str | None = None) -> "HogDetector":
        """The detector with `options`."""
        return cls(**dataclasses.asdict(options or HogOptions()))

    def __init__(
        self,
        min_height: int = 480,
        scale: float = 1.05,
        win_stride: int = 8,
        hit_threshold: float = 0.0,
        iou: float = 0.45,
        shrink: tuple[float, float] = (0.6, 0.8),
        detect_scale: float = 1.0,
    ) -> None:
        import cv2

        if not (np.isfinite(detect_scale) and 0.05 <= float(detect_scale) <= 4.0):
            raise OptionError("detect_scale", f"expected a factor in [0.05, 4], got {detect_scale}")

        if not hasattr(cv2, "HOGDescriptor"):
            raise ReIDError(
                f"the HOG detector needs OpenCV 4.x (cv2 {cv2.__version__} has no HOGDescriptor); "
                f"pip install 'opencv-python-headless>=4.8,<5', or pass --detections / --detector"
            )
        self.hog = cv2.HOGDescriptor()
        self.hog.setSVMDetector(np.asarray(cv2.HOGDescriptor.getDefaultPeopleDetector(), dtype=np.float32))
        self.min_height, self.scale, self.stride = int(min_height), float(scale), int(win_stride)
        self.hit_threshold, self.iou = float(hit_threshold), float(iou)
        self.shrink = (float(shrink[0]), float(shrink[1]))
        self.detect_scale = float(detect_scale)

    def __call__(self, frame: np.ndarray, index: int = 0) -> Detections:
        """Person boxes and SVM scores of a BGR frame."""
        import cv2

        h, w = frame.shape[:2]
        f = max(1.0, self.min_height / h) * self.detect_scale
        img = (
            cv2.resize(frame, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR)
            if f != 1.0
            else frame
        )
        rects, weights = self.hog.detectMultiScale(
            img, hitThreshold=self.hit_threshold, winStride=(self.stride, self.stride), padding=(8, 8), scale=self.scale
        )
        if len(rects) == 0:
            return empty()
        r = np.asarray(rects, dtype=np.float32).reshape(-1, 4) / f
        sc = np.asarray(weights, dtype=np.float32).reshape(-1)
        # The 64 x 128 window frames a ~40 x 96 person with a margin: keep the central part (shrink w, h)
        cx, cy = r[:, 0] + r[:, 2] / 2, r[:, 1] + r[:, 3] / 2
        hw, hh = r[:, 2] * self.shrink[0] / 2, r[:, 3] * self.shrink[1] / 2
        boxes = np.stack([cx - hw, cy - hh, cx + hw, cy + hh], axis=1)
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        keep = nms(boxes, sc, -np.inf, self.iou)
        return boxes[keep], sc[keep]
