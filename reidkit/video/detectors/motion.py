"""``motion``: people as what differs from a fixed camera's background (the default detector).

Background subtraction, the classic detector of fixed surveillance cameras. The background of a block of
``block`` frames is the per-pixel median of ``samples`` frames spread over that block, each frame first
normalised per channel (mean 0, std 1) so that global exposure and colour changes do not count as
motion; it depends only on the video file, never on the frames processed before, so a resumed run
detects exactly what the uninterrupted run detects. A frame (at ``work_height`` rows) is compared with
its block's background; pixels farther than ``threshold`` (in frame standard deviations) form blobs
(after an opening, then a dilation that joins a person's nearby pieces). Blobs that are pieces of one
person are joined: side by side (a person cut by a thin occluder such as a pole) or one above the other
(a torso the colour of the background), when their union is no wider than a standing person (``aspect`` =
width / height, with a 25 % slack). A blob wider than a standing person is split into that many columns,
each cut moved to the emptiest column near it (the gap between two people), and each box is the
undilated pixels' extent (the dilation would grow every box by its margin); the score is the share of
the (dilated) box that moved. Joining, valley cuts and undilated extents took scene A's boxes at IoU 0.5
from 76 / 73, 83 / 81, 74 / 59 % recall / precision to 85 / 88, 88 / 93, 84 / 86 (seeds 0-2). People who stand still for most of a block fade into its background, and
anything that moves is found: use it on fixed cameras with people as the moving objects (measured in
benchmarks/bench_video.py). One per video (``per_video``): it models that video's background.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from reidkit.errors import ReIDError
from reidkit.video.detectors import register_detector
from reidkit.video.detectors.base import Detections, empty

log = logging.getLogger(__name__)
BUSY_SHARE, BUSY_WARN = 0.5, 10  # warn once after this many frames mostly in motion
JOIN_SLACK = 1.25  # pieces join when their union is at most this many standing-person widths wide
MAX_JOIN = 40  # more blobs than this (a busy or noisy frame): no joining (it is quadratic)


@dataclass
class MotionOptions:
    """The motion detector's options (``--detector-option KEY=VALUE``; ranges checked when it is built)."""

    work_height: int = 144  # rows the frame is compared at
    threshold: float = 1.0  # per-pixel distance to the background, in frame standard deviations
    block: int = 600  # frames per background
    samples: int = 20  # frames whose median is a block's background
    aspect: float = 0.33  # width / height of a standing person: wider blobs are split
    min_height: float = 0.15  # the shortest person, a share of the frame's height


@register_detector("motion", options=MotionOptions)
class MotionDetector:
    """Background-subtraction person detector of one video file (see the module docstring)."""

    per_video = True

    @classmethod
    def from_options(cls, options: MotionOptions | None, video: str | os.PathLike | None = None) -> "MotionDetector":
        """The detector of `video` with `options`."""
        return cls(video if video is not None else "", **dataclasses.asdict(options or MotionOptions()))

    def __init__(
        self,
        path: str | os.PathLike,
        work_height: int = 144,
        threshold: float = 1.0,
        block: int = 600,
        samples: int = 20,
        aspect: float = 0.33,
        min_height: float = 0.15,
    ) -> None:
        checks = (
            ("work_height", work_height, 32, 4096),
            ("threshold", threshold, 0.05, 100.0),
            ("block", block, 2, 10**9),
            ("samples", samples, 3, 1000),
            ("aspect", aspect, 0.05, 5.0),
            ("min_height", min_height, 0.0, 1.0),
        )
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
        x = (
            cv2.resize(frame, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
            if f < 1.0
            else frame
        )
        x = x.astype(np.float32)
        flat = x.reshape(-1, x.shape[2])
        return np.asarray((x - flat.mean(0)) / (flat.std(0) + 1e-3))

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
            raise ReIDError(
                f"video {self.path}: no frames around frame {index + 1} for the motion detector's background"
            )
        bg = np.asarray(np.median(np.stack(frames), axis=0), dtype=np.float32)
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
                log.warning(
                    "video %s: more than half of the picture moved in %d frames (by frame %d): the "
                    "motion detector needs a fixed camera; use --detector hog or an ONNX detector",
                    self.path,
                    BUSY_WARN,
                    index + 1,
                )
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
        raw = cv2.morphologyEx(mask, cv2.MORPH_OPEN, k)
        n, lab, stats, _ = cv2.connectedComponentsWithStats(cv2.dilate(raw, k, iterations=2), connectivity=8)
        if 2 < n <= MAX_JOIN:
            lab, stats = join_pieces(lab, stats, self.aspect * JOIN_SLACK)
            n = len(stats)
        min_h = max(4.0, self.min_height * x.shape[0])
        boxes, scores = [], []
        for j in range(1, n):
            bx, by, bw, bh, area = (int(v) for v in stats[j])
            if bh < min_h or area < 0.2 * min_h * min_h * self.aspect:
                continue
            full = lab[by : by + bh, bx : bx + bw] == j
            blob = full & (raw[by : by + bh, bx : bx + bw] > 0)  # the undilated pixels: the person's own extent
            ys, xs = np.flatnonzero(blob.any(axis=1)), np.flatnonzero(blob.any(axis=0))
            if len(ys) < min_h:
                continue
            blob, full = blob[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1], full[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1]
            by, bx, (bh, bw) = by + int(ys[0]), bx + int(xs[0]), blob.shape
            parts = max(1, int(round(bw / (self.aspect * bh))))
            edges = valley_cuts(blob.sum(axis=0), parts)
            for p in range(parts):
                col = blob[:, edges[p] : edges[p + 1]]
                rows = np.flatnonzero(col.any(axis=1))
                if len(rows) < min_h or (parts > 1 and len(rows) < 0.5 * bh):
                    continue
                y0, y1 = rows[0], rows[-1] + 1
                boxes.append([bx + edges[p], by + y0, bx + edges[p + 1], by + y1])
                scores.append(float(full[y0:y1, edges[p] : edges[p + 1]].mean()))
        if not boxes:
            return empty()
        return (np.asarray(boxes, np.float32) / s), np.asarray(scores, np.float32)


def valley_cuts(profile: np.ndarray, parts: int, reach: float = 0.3) -> np.ndarray:
    """Column edges splitting a blob of column counts `profile` into `parts`: each equal-width cut moved to
    the emptiest column within `reach` of a part's width (where two side-by-side people meet)."""
    w = len(profile)
    edges: np.ndarray = np.linspace(0, w, parts + 1).round().astype(int)
    half = max(1, int(reach * w / parts))
    for q in range(1, parts):
        lo, hi = max(edges[q - 1] + 1, edges[q] - half), min(edges[q + 1] - 1, edges[q] + half)
        if hi > lo:
            edges[q] = lo + int(np.argmin(profile[lo : hi + 1]))
    return edges


def join_pieces(lab: np.ndarray, stats: np.ndarray, max_aspect: float) -> tuple[np.ndarray, np.ndarray]:
    """Labels and stats (cv2.connectedComponentsWithStats's) with the pieces of one person joined.

    Two groups of blobs join when their union box is at most `max_aspect` times as wide as tall and they
    lie side by side (rows overlapping by half the shorter) or one above the other (columns overlapping by
    half the narrower, the gap under a tenth of the union's height); repeated until nothing joins.
    """
    n = len(stats)
    box = np.column_stack([stats[:, 0], stats[:, 1], stats[:, 0] + stats[:, 2], stats[:, 1] + stats[:, 3]])
    box = box.astype(np.float64)
    root = np.arange(n)
    alive = list(range(1, n))
    joined = True
    while joined:
        joined = False
        for ia, a in enumerate(alive):
            for b in alive[ia + 1 :]:
                (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = box[a], box[b]
                uh = max(ay1, by1) - min(ay0, by0)
                if max(ax1, bx1) - min(ax0, bx0) > max_aspect * uh:
                    continue
                rows = min(ay1, by1) - max(ay0, by0)
                cols = min(ax1, bx1) - max(ax0, bx0)
                side = rows >= 0.5 * min(ay1 - ay0, by1 - by0)
                stacked = cols >= 0.5 * min(ax1 - ax0, bx1 - bx0) and -rows <= 0.1 * uh
                if side or stacked:
                    box[a] = [min(ax0, bx0), min(ay0, by0), max(ax1, bx1), max(ay1, by1)]
                    root[root == b] = a
                    alive.remove(b)
                    joined = True
                    break
            if joined:
                break
    if len(alive) == n - 1:
        return lab, stats
    new = np.zeros(n, np.int32)
    out = np.zeros((len(alive) + 1, 5), stats.dtype)
    out[0] = stats[0]
    for k, a in enumerate(alive, 1):
        members = root == a
        new[members] = k
        x0, y0, x1, y1 = box[a]
        out[k] = [x0, y0, x1 - x0, y1 - y0, stats[members, 4].sum()]
    return new[lab], out
