"""Tracklets: the observations of one track, its best K crops and its feature.

Every observation (frame, box, detector confidence) is kept as the tracklet's appearance list;
only K crops are kept for the feature and the thumbnails, the best by a quality score:

    quality = size + 0.5 * conf / (1 + |conf|) + 0.5 * sharp / (sharp + 100) - 2 * truncated

size = sqrt(box area / frame area) * 2 (capped at 1): bigger crops carry more detail;
conf: the detector confidence squashed to (-1, 1) (MOT files, ONNX scores and HOG margins differ
in range); sharp: variance of the Laplacian of the grey crop (motion and focus blur lower it);
truncated: the box touches the frame edge, so part of the person is missing; such crops are
taken only when a tracklet has no other. Ties go to the earlier frame.

The tracklet feature is the mean of the L2-normalised features of crops spread over the whole
tracklet, normalised again (each crop votes equally, whatever its feature norm), as in video ReID's
temporal average pooling: at most ``SAMPLES`` crops, taken at a frame stride that doubles (keeping
every other sample) each time the samples outgrow that cap, so they always cover the whole track
evenly and each tracklet costs at most about 2 x ``SAMPLES`` feature computations. The best K by
quality alone were a poor summary: they are the largest crops, consecutive frames of one pose, and
on scene A (benchmarks/bench_identities.py, gt boxes) the chance that a cross-camera pair of one
person is closer than a pair of two people went from 0.72 with the best 4 to 0.94 with these samples
(0.94 for the mean of every crop; gtn boxes 0.80 -> 0.95 vs 0.97). A tracklet without samples (an
older resume state) falls back to the mean of its best K.

A crop's feature can come later: ``observe`` takes None where association did not embed the crop, and the
sample keeps the crop until its feature is set (``missing``). The best K then carry no feature (only
their thumbnails and scores are used: the feature is the samples'), so they never cost a computation.
``survival`` says how many more halvings a sample outlives: embedding the waiting samples ahead of the
commit most durable first (``reidkit watch`` does it while it waits for a camera's next frame:
reidkit.video.watch.wait_frame) spends the least on samples that a later halving drops.

Each sample also keeps its crop's colour descriptor (reidkit.video.colour: HSV histograms of
horizontal stripes, no model); their normalised mean is stored with the tracklet (meta "colour")
for `reidkit identities`.
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reidkit.video.colour import colour_descriptor, mean_descriptor

EDGE_PX = 2  # a box within this many pixels of the frame edge is truncated
SAMPLES = 16  # crops spread over a tracklet whose mean is its feature (module docstring)
FEATURE_KIND = f"samples:{SAMPLES}"  # the tracklet feature, as a video's settings record it ("best": the best K's)
THUMB_HEIGHT = 128


def crop_quality(crop_rgb: np.ndarray, box: Any, conf: float, width: int, height: int) -> float:
    """The quality score of the module docstring (higher is better)."""
    import cv2

    x0, y0, x1, y1 = (float(v) for v in box)
    size = min(1.0, 2.0 * math.sqrt(max(0.0, (x1 - x0) * (y1 - y0)) / float(width * height)))
    c = float(conf)
    conf_t = c / (1.0 + abs(c))
    grey = cv2.cvtColor(crop_rgb, cv2.COLOR_RGB2GRAY)
    sharp = float(cv2.Laplacian(grey, cv2.CV_64F).var()) if min(grey.shape) >= 3 else 0.0
    truncated = x0 <= EDGE_PX or y0 <= EDGE_PX or x1 >= width - EDGE_PX or y1 >= height - EDGE_PX
    return size + 0.5 * conf_t + 0.5 * sharp / (sharp + 100.0) - (2.0 if truncated else 0.0)


def thumbnail_jpeg(crop_rgb: np.ndarray, height: int = THUMB_HEIGHT, quality: int = 85) -> bytes:
    """A small JPEG of a crop (at most `height` pixels high)."""
    import cv2

    h, w = crop_rgb.shape[:2]
    if h > height:
        crop_rgb = cv2.resize(crop_rgb, (max(1, round(w * height / h)), height), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(crop_rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:  # pragma: no cover - OpenCV always encodes a uint8 image
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


@dataclass
class OpenTracklet:
    """A track being collected: all its boxes, its best K crops (feature + JPEG) so far."""

    track_id: str
    boxes: list[list[float]] = field(default_factory=list)  # [frame (0-based), x0, y0, x1, y1, conf]
    best: list[dict[str, Any]] = field(default_factory=list)  # {q, frame, feat (D,), jpeg (bytes)}
    confirmed: bool = False
    samples: list[dict[str, Any]] = field(default_factory=list)  # {frame, feat (D,)}: the feature's crops
    stride: int = 1  # frames between two samples (doubles as the track grows)

    def would_keep(self, q: float, k: int) -> bool:
        """True when a crop of quality `q` would enter the best K (so its real feature is needed)."""
        return len(self.best) < k or q > self.best[-1]["q"]

    def observe(
        self,
        frame: int,
        box: Any,
        conf: float,
        feat: np.ndarray | None,
        crop_rgb: np.ndarray,
        width: int,
        height: int,
        k: int,
        confirmed: bool,
        q: float | None = None,
        fill_step: int | None = None,
        fill_gap: int | None = None,
    ) -> None:
        """Add one observation; keep its crop when it is among the K best.

        `feat` None: the feature is computed later (``missing`` / ``set_features``), only if the crop
        is still among the K best by then; the crop is kept until it is.

        With `fill_step`, a gap of at most `fill_gap` frames since this track's previous box (the
        frames between two detections) is filled with boxes every `fill_step` frames, linearly
        interpolated (confidence too).
        """
        if fill_step and self.boxes and 0 < int(frame) - self.boxes[-1][0] <= int(fill_gap or fill_step):
            prev = self.boxes[-1]
            cur = [int(frame), *(float(v) for v in box), float(conf)]
            for f in range(int(prev[0]) + fill_step, int(frame), fill_step):
                a = (f - prev[0]) / (int(frame) - prev[0])
                self.boxes.append(
                    [
                        f,
                        *(round(p + a * (c - p), 2) for p, c in zip(prev[1:5], cur[1:5])),
                        round(prev[5] + a * (cur[5] - prev[5]), 4),
                    ]
                )
        self.boxes.append([int(frame), *(round(float(v), 2) for v in box), round(float(conf), 4)])
        self.confirmed = self.confirmed or confirmed
        self._sample(int(frame), feat, crop_rgb)
        if q is None:
            q = crop_quality(crop_rgb, box, conf, width, height)
        if not self.would_keep(q, k):
            return
        c = {  # no crop kept for a later feature: the tracklet's feature is its samples' (module docstring)
            "q": q,
            "frame": int(frame),
            "feat": None if feat is None else np.asarray(feat, np.float32),
            "jpeg": thumbnail_jpeg(crop_rgb),
        }
        self.best.append(c)
        self.best.sort(key=lambda c: (-c["q"], c["frame"]))
        del self.best[k:]

    def _sample(self, frame: int, feat: np.ndarray | None, crop_rgb: np.ndarray) -> None:
        """Keep this crop as a feature sample when `stride` frames have passed since the last one; halve the
        samples (every other one, the stride doubled) when they outgrow SAMPLES."""
        if self.samples and frame - self.samples[-1]["frame"] < self.stride:
            return
        c: dict[str, Any] = {"frame": frame, "feat": None if feat is None else np.asarray(feat, np.float32)}
        c["colour"] = colour_descriptor(crop_rgb)  # reidkit.video.colour: no model, ~3 % of an embedding
        if feat is None:
            c["crop"] = np.array(crop_rgb, dtype=np.uint8, copy=True)
        self.samples.append(c)
        if len(self.samples) > SAMPLES:
            del self.samples[1::2]
            self.stride *= 2

    def missing(self) -> list[dict[str, Any]]:
        """The feature samples whose feature is still to be computed (each holds its "crop"), in time order."""
        return [c for c in self.samples if c["feat"] is None]

    def survival(self, c: dict[str, Any]) -> int:
        """How many more halvings sample `c` survives (at list position p: the times 2 divides p; the first sample
        stays for good): a halving keeps the even positions and halves them."""
        p = next(i for i, s in enumerate(self.samples) if s is c)
        return SAMPLES if p == 0 else (p & -p).bit_length() - 1

    def feature(self) -> np.ndarray:
        """Mean of the unit-normalised features of the samples (of the best K without samples), normalised."""
        rows = self.samples or self.best
        if any(c["feat"] is None for c in rows):
            raise ValueError(f"tracklet {self.track_id}: a sample's feature is still to be computed (see missing())")
        f = np.stack([c["feat"] / max(float(np.linalg.norm(c["feat"])), 1e-12) for c in rows])
        m = f.mean(axis=0)
        return np.asarray(m / max(float(np.linalg.norm(m)), 1e-12), dtype=np.float32)

    def colour(self) -> np.ndarray | None:
        """The tracklet's colour descriptor: the normalised mean of its samples' (None without any)."""
        return mean_descriptor(c.get("colour") for c in self.samples)

    def to_state(self) -> dict[str, Any]:
        """JSON-able form (for the resume state); every sample's feature must be computed (a crop is not stored)."""
        from reidkit.video.track import encode

        if self.missing():
            raise ValueError(f"tracklet {self.track_id}: a sample's feature is still to be computed (see missing())")

        return {
            "track_id": self.track_id,
            "boxes": [list(b) for b in self.boxes],
            "confirmed": self.confirmed,
            "best": [
                {
                    "q": c["q"],
                    "frame": c["frame"],
                    "feat": encode(c["feat"]),
                    "jpeg": base64.b64encode(c["jpeg"]).decode("ascii"),
                }
                for c in self.best
            ],
            "samples": [
                {"frame": c["frame"], "feat": encode(c["feat"]), "colour": encode(c.get("colour"))}
                for c in self.samples
            ],
            "stride": self.stride,
        }

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> OpenTracklet:
        """Inverse of to_state."""
        from reidkit.video.track import decode

        return cls(
            str(d["track_id"]),
            [list(b) for b in d["boxes"]],
            [
                {
                    "q": float(c["q"]),
                    "frame": int(c["frame"]),
                    "feat": decode(c["feat"]),
                    "jpeg": base64.b64decode(c["jpeg"]),
                }
                for c in d["best"]
            ],
            bool(d["confirmed"]),
            [
                {"frame": int(c["frame"]), "feat": decode(c["feat"]), "colour": decode(c.get("colour"))}
                for c in d.get("samples", [])
            ],
            int(d.get("stride", 1)),
        )


def older_feature(state: dict[str, Any]) -> dict[str, str]:
    """The ``feature`` settings of a video state of an older reidkit (without them), where its open tracklets
    tell: samples in them (they came after the float twin) or none (the mean of the best K, the kind before)."""
    opened = state.get("open") or []
    if not opened:
        return {}
    if all("samples" in t for t in opened):
        return {"feature": FEATURE_KIND, "feature_dtype": "float"}
    return {"feature": "best"}
