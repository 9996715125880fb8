"""Person detectors for video ingestion: all return (boxes x1,y1,x2,y2 float32 N x 4, scores N) per BGR frame.

Four sources:

- ``MotDetections``: a MOTChallenge file (``frame,id,x,y,w,h,conf,...``, 1-based frames, as the
  MOT benchmark ships public detections and as reidkit.data.scene writes ground truth). The whole
  file is parsed up front, so a malformed row (named by file and line number) fails before anything
  is ingested.
- ``OnnxDetector``: any YOLO-family ONNX export. Outputs ``[1, 4+nc, N]`` (YOLOv8/v11: cx, cy, w, h
  then class scores) or ``[1, N, 5+nc]`` (YOLOv5/v7: cx, cy, w, h, objectness, class scores); the
  frame is letterboxed to the model's input size, boxes are mapped back, the person class is kept
  above a confidence threshold and non-maximum suppression (cv2.dnn.NMSBoxes) removes duplicates.
- ``HogDetector``: OpenCV's HOG + linear SVM people detector (Dalal & Triggs, CVPR 2005), offline
  and built in. Its window is 64 x 128, so small frames are upscaled first (``min_height``) to let
  people shorter than 128 pixels be found; the window holds the person with a margin, so boxes are
  shrunk to their central ``shrink`` = (0.6 w, 0.8 h); scores are the SVM margins. ``detect_scale``
  (< 1) runs it on a downscaled frame: its cost falls with the pixel count, people shorter than
  about 100 / detect_scale pixels are missed (measured in benchmarks/bench_video.py).
- ``MotionDetector``: people as what differs from a fixed camera's background (background
  subtraction, the classic detector of fixed surveillance cameras). The background of a block of
  ``block`` frames is the per-pixel median of ``samples`` frames spread over that block, each
  frame first normalised per channel (mean 0, std 1) so that global exposure and colour changes
  do not count as motion; it depends only on the video file, never on the frames processed before,
  so a resumed run detects exactly what the uninterrupted run detects. A frame (at ``work_height``
  rows) is compared with its block's background; pixels farther than ``threshold`` (in frame
  standard deviations) form blobs; a blob wider than a standing person (``aspect`` = width / height)
  is split into that many columns, each trimmed to its own rows. People who stand still for most
  of a block fade into its background, and anything that moves is found: use it on fixed cameras
  with people as the moving objects (measured in benchmarks/bench_video.py).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from reidkit.errors import OptionError, ReIDError

Detections = tuple[np.ndarray, np.ndarray]
log = logging.getLogger(__name__)
BUSY_SHARE, BUSY_WARN = 0.5, 10  # motion detector: warn once after this many frames mostly in motion


def _empty() -> Detections:
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of `a` (N x 4, x1 y1 x2 y2) with every box of `b` (M x 4): N x M."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def nms(boxes_xyxy: np.ndarray, scores: np.ndarray, score_threshold: float, iou_threshold: float) -> np.ndarray:
    """Indices kept by OpenCV's NMS (boxes above `score_threshold`, overlaps above `iou_threshold` removed)."""
    import cv2

    if len(boxes_xyxy) == 0:
        return np.zeros((0,), np.int64)
    ltwh = [[float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])] for b in boxes_xyxy]
    # NMSBoxes wants non-negative scores and threshold (SVM margins can be negative): shift both alike
    shift = min(0.0, float(np.min(scores)), float(score_threshold) if np.isfinite(score_threshold) else 0.0)
    thr = float(score_threshold) - shift if np.isfinite(score_threshold) else 0.0
    keep = cv2.dnn.NMSBoxes(ltwh, [float(s) - shift for s in scores], thr, float(iou_threshold))
    return np.asarray(keep, dtype=np.int64).reshape(-1)


_MAX_FRAME = 2**31 - 1  # frame numbers are stored as SQLite integers and OpenCV frame indices


class MotDetections:
    """Detections read from a MOTChallenge-format file, looked up by 0-based frame index."""

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
                    raise OptionError("detections", "expected 'frame,id,x,y,w,h,conf,...' with an integer frame >= 1 "
                                      f"and finite non-negative sizes, got {text[:80]!r}",
                                      value=f"{self.path}, line {n}") from None
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
            return _empty()
        a = np.asarray(rows, dtype=np.float32)
        return a[:, :4].copy(), a[:, 4].copy()


class OnnxDetector:
    """A YOLO-family ONNX detector (see the module docstring) keeping class `person_class`."""

    def __init__(self, path: str | os.PathLike, conf: float = 0.25, iou: float = 0.45, person_class: int = 0,
                 input_size: tuple[int, int] | None = None, threads: int | None = None) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise OptionError("detector", f"{self.path} is not a file (the built-in detectors are motion and hog)")
        from reidkit.export import ort_session

        self.session = ort_session(self.path, threads, "--detector")
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        shape = list(inp.shape)
        if input_size is None:
            if len(shape) != 4 or not all(isinstance(v, int) for v in shape[2:]):
                raise OptionError("detector", f"input {inp.name} has no fixed H x W ({shape}); "
                                f"give the input size", value=self.path)
            input_size = (int(shape[2]), int(shape[3]))
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.conf, self.iou, self.person_class = float(conf), float(iou), int(person_class)

    def _letterbox(self, frame: np.ndarray) -> tuple[np.ndarray, float, float, float]:
        import cv2

        H, W = self.input_size
        h, w = frame.shape[:2]
        s = min(H / h, W / w)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        px, py = (W - nw) / 2, (H - nh) / 2
        canvas = np.full((H, W, 3), 114, np.uint8)  # YOLO's grey padding
        x0, y0 = int(round(px - 0.1)), int(round(py - 0.1))
        canvas[y0:y0 + nh, x0:x0 + nw] = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_LINEAR)
        blob = canvas[:, :, ::-1].transpose(2, 0, 1)[None].astype(np.float32) / 255.0  # BGR -> RGB, 0..1
        return np.ascontiguousarray(blob), s, x0, y0

    def decode(self, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(boxes cx,cy,w,h in input pixels, person scores) of a raw YOLO output."""
        a = np.asarray(out, dtype=np.float32)
        if a.ndim == 3:
            a = a[0]
        if a.ndim != 2:
            raise OptionError("detector", f"expected an output of shape [1, 4+nc, N] or [1, N, 5+nc], "
                            f"got {list(np.shape(out))}", value=self.path)
        # Anchors outnumber channels in every YOLO export (thousands vs 4+nc): channels-first when rows < cols.
        if a.shape[0] < a.shape[1]:
            a = a.T
            if a.shape[1] < 5 + self.person_class:
                raise OptionError("detector", f"output has {a.shape[1] - 4} classes, "
                                f"no class {self.person_class}", value=self.path)
            return a[:, :4], a[:, 4 + self.person_class]
        if a.shape[1] < 6 + self.person_class:
            raise OptionError("detector", f"output rows of {a.shape[1]} values, "
                            f"expected 5 + classes", value=self.path)
        return a[:, :4], a[:, 4] * a[:, 5 + self.person_class]

    def __call__(self, frame: np.ndarray, index: int = 0) -> Detections:
        """Person boxes (x1, y1, x2, y2 in frame pixels) and scores of a BGR frame."""
        blob, s, px, py = self._letterbox(frame)
        out = self.session.run(None, {self.input_name: blob})[0]
        cxcywh, scores = self.decode(out)
        m = scores >= self.conf
        if not m.any():
            return _empty()
        c, sc = cxcywh[m], scores[m]
        boxes = np.stack([(c[:, 0] - c[:, 2] / 2 - px) / s, (c[:, 1] - c[:, 3] / 2 - py) / s,
                          (c[:, 0] + c[:, 2] / 2 - px) / s, (c[:, 1] + c[:, 3] / 2 - py) / s], axis=1)
        h, w = frame.shape[:2]
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, w)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, h)
        keep = nms(boxes, sc, self.conf, self.iou)
        return boxes[keep].astype(np.float32), sc[keep].astype(np.float32)


class HogDetector:
    """OpenCV's HOG people detector (the offline default); `min_height`: upscale frames lower than this."""

    def __init__(self, min_height: int = 480, scale: float = 1.05, win_stride: int = 8,
                 hit_threshold: float = 0.0, iou: float = 0.45, shrink: tuple[float, float] = (0.6, 0.8),
                 detect_scale: float = 1.0) -> None:
        import cv2

        if not (np.isfinite(detect_scale) and 0.05 <= float(detect_scale) <= 4.0):
            raise OptionError("detect_scale", f"expected a factor in [0.05, 4], got {detect_scale}")

        if not hasattr(cv2, "HOGDescriptor"):
            raise ReIDError(f"the HOG detector needs OpenCV 4.x (cv2 {cv2.__version__} has no HOGDescriptor); "
                            f"pip install 'opencv-python>=4.8,<5', or pass --detections / --detector")
        self.hog = cv2.HOGDescriptor()
        self.hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        self.min_height, self.scale, self.stride = int(min_height), float(scale), int(win_stride)
        self.hit_threshold, self.iou = float(hit_threshold), float(iou)
        self.shrink = (float(shrink[0]), float(shrink[1]))
        self.detect_scale = float(detect_scale)

    def __call__(self, frame: np.ndarray, index: int = 0) -> Detections:
        """Person boxes and SVM scores of a BGR frame."""
        import cv2

        h, w = frame.shape[:2]
        f = max(1.0, self.min_height / h) * self.detect_scale
        img = cv2.resize(frame, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA if f < 1 else
                         cv2.INTER_LINEAR) if f != 1.0 else frame
        rects, weights = self.hog.detectMultiScale(img, hitThreshold=self.hit_threshold,
                                                   winStride=(self.stride, self.stride), padding=(8, 8),
                                                   scale=self.scale)
        if len(rects) == 0:
            return _empty()
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


class MotionDetector:
    """Background-subtraction person detector of one video file (see the module docstring)."""

    def __init__(self, path: str | os.PathLike, work_height: int = 144, threshold: float = 1.0,
                 block: int = 600, samples: int = 20, aspect: float = 0.33, min_height: float = 0.15) -> None:
        checks = (("work_height", work_height, 32, 4096), ("threshold", threshold, 0.05, 100.0),
                  ("block", block, 2, 10**9), ("samples", samples, 3, 1000), ("aspect", aspect, 0.05, 5.0),
                  ("min_height", min_height, 0.0, 1.0))
        for name, v, lo, hi in checks:
            if not (np.isfinite(v) and lo <= v <= hi):
                raise ReIDError(f"motion detector: {name} must be in [{lo}, {hi}], got {v}")
        self.path = Path(path)
        self.work_height, self.threshold = int(work_height), float(threshold)
        self.block, self.samples, self.aspect = int(block), int(samples), float(aspect)
        self.min_height = float(min_height)
        self._bg: tuple[int, np.ndarray] | None = None
        self.busy_frames = 0  # frames where most of the picture moved (a moving camera, a light switched)

    def _small(self, frame: np.ndarray) -> np.ndarray:
        """The frame at work size, normalised per channel (float32, H x W x 3)."""
        import cv2

        h, w = frame.shape[:2]
        f = min(1.0, self.work_height / h)
        x = cv2.resize(frame, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA) \
            if f < 1.0 else frame
        x = x.astype(np.float32)
        flat = x.reshape(-1, x.shape[2])
        return (x - flat.mean(0)) / (flat.std(0) + 1e-3)

    def background(self, index: int) -> np.ndarray:
        """The normalised background of the block holding frame `index` (cached for the current block)."""
        import cv2

        b = index // self.block
        if self._bg is not None and self._bg[0] == b:
            return self._bg[1]
        start = b * self.block
        cap = cv2.VideoCapture(str(self.path))
        try:
            n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
            end = min(start + self.block, n) if n > start else start + self.block
            want = sorted(set(np.linspace(start, end - 1, min(self.samples, end - start)).round().astype(int).tolist()))
            frames = []
            if n > start:  # a known length: seek to each sample (the same frames every run; a median need not be exact)
                for i in want:
                    cap.set(cv2.CAP_PROP_POS_FRAMES, i)
                    ok, fr = cap.read()
                    if ok and fr is not None:
                        frames.append(self._small(fr))
            else:  # a stream of unknown length: read through the block
                keep = set(want)
                if start > 0:
                    cap.set(cv2.CAP_PROP_POS_FRAMES, start)
                for i in range(start, end):
                    if not cap.grab():
                        break
                    if i in keep:
                        ok, fr = cap.retrieve()
                        if ok and fr is not None:
                            frames.append(self._small(fr))
        finally:
            cap.release()
        if not frames:
            raise ReIDError(f"video {self.path}: no frames around frame {index + 1} for the motion detector's background")
        bg = np.median(np.stack(frames), axis=0).astype(np.float32)
        self._bg = (b, bg)
        return bg

    def __call__(self, frame: np.ndarray, index: int = 0) -> Detections:
        """Person boxes (frame pixels) and scores (the share of the box that moved) of a BGR frame."""
        import cv2

        h = frame.shape[0]
        x = self._small(frame)
        bg = self.background(index)
        if bg.shape != x.shape:
            raise ReIDError(f"video {self.path}: frame {index + 1} is not the size of the video's first frames")
        s = x.shape[0] / h
        mask = (np.abs(x - bg).max(axis=2) > self.threshold).astype(np.uint8)
        if mask.mean() > BUSY_SHARE:
            self.busy_frames += 1
            if self.busy_frames == BUSY_WARN:
                log.warning("video %s: more than half of the picture moved in %d frames (by frame %d): the "
                            "motion detector needs a fixed camera; use --detector hog or an ONNX detector",
                            self.path, BUSY_WARN, index + 1)
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
        mask = cv2.dilate(cv2.morphologyEx(mask, cv2.MORPH_OPEN, k), k, iterations=2)
        n, lab, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        min_h = max(4.0, self.min_height * x.shape[0])
        boxes, scores = [], []
        for j in range(1, n):
            bx, by, bw, bh, area = (int(v) for v in stats[j])
            if bh < min_h or area < 0.2 * min_h * min_h * self.aspect:
                continue
            blob = lab[by:by + bh, bx:bx + bw] == j
            parts = max(1, int(round(bw / (self.aspect * bh))))
            edges = np.linspace(0, bw, parts + 1).round().astype(int)
            for p in range(parts):
                col = blob[:, edges[p]:edges[p + 1]]
                rows = np.flatnonzero(col.any(axis=1))
                if len(rows) < min_h or (parts > 1 and len(rows) < 0.5 * bh):
                    continue
                y0, y1 = rows[0], rows[-1] + 1
                boxes.append([bx + edges[p], by + y0, bx + edges[p + 1], by + y1])
                scores.append(float(col[y0:y1].mean()))
        if not boxes:
            return _empty()
        return (np.asarray(boxes, np.float32) / s), np.asarray(scores, np.float32)


def build_detector(detections: str | os.PathLike | None = None, detector: str | os.PathLike | None = None,
                   conf: float = 0.25, **hog: Any) -> Any:
    """The detector a command asked for: a MOT file, an ONNX model, else HOG."""
    if detections is not None and detector is not None:
        raise ReIDError("give --detections or --detector, not both")
    if detections is not None:
        return MotDetections(detections)
    if detector is not None:
        return OnnxDetector(detector, conf=conf)
    return HogDetector(**hog)
