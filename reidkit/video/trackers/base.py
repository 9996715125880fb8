"""The Tracker protocol every within-video tracker speaks, and helpers shared by the built-in ones.

A tracker takes one frame at a time: ``update(boxes, scores, features)`` with the frame's
detections (x1, y1, x2, y2; N x 4), their scores (N) and their appearance features (a list of N
rows, a row None where the caller did not embed that crop, or an N x D array, or None for none)
and returns a :class:`FrameTracks`: the tracks that took a detection in this frame (new tentative
tracks included, so a tracklet keeps its first frames once confirmed) and the ids of the tracks
that ended in it. Before that, ``needs_features(boxes, scores, budget)`` says which detections the
caller must embed this frame (the pipeline's ``--appearance needed`` / ``--embed-budget``); a
caller that embeds every crop skips it. ``state_dict`` / ``load_state_dict`` turn the whole tracker
into JSON-able data (floats as raw bytes, :func:`encode`), so an interrupted ingestion resumes with
exactly the tracker it had at its last committed chunk.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol, Sequence, runtime_checkable

import numpy as np

from reidkit.errors import ReIDError
from reidkit.video.detect import box_iou

# the state codec of every tracker, and the IoU of the built-in ones: part of the plugin surface
from reidkit.video.track import decode, encode

__all__ = [
    "Match",
    "FrameTracks",
    "Tracker",
    "box_iou",
    "decode",
    "encode",
    "feature_rows",
    "frame_box",
    "one_to_one_pairs",
]

PAIR_IOU, OTHER_IOU = 0.3, 0.1  # a detection pairs one-to-one with a track (see one_to_one_pairs)


class Match(NamedTuple):
    """A track that took a detection this frame: its id, the detection's index, confirmed yet, and the box it
    reports for this frame (what the tracklet stores: the detection's box, or the tracker's estimate of it)."""

    track_id: str
    det: int
    confirmed: bool
    box: tuple[float, float, float, float]


class FrameTracks(NamedTuple):
    """What one frame did: the tracks that took a detection, and the ids of the tracks that ended."""

    matched: list[Match]
    ended: list[str]


@runtime_checkable
class Tracker(Protocol):
    """One video's tracker (see the module docstring). Built as ``cls(options)`` (``cls()`` without options)."""

    def needs_features(self, boxes: np.ndarray, scores: np.ndarray, budget: int = 0) -> np.ndarray:
        """Bool per detection: embed its crop this frame (at most `budget` ambiguous ones when > 0)."""
        ...

    def update(
        self, boxes: np.ndarray, scores: np.ndarray, features: Sequence[np.ndarray | None] | np.ndarray | None
    ) -> FrameTracks:
        """Take one frame's detections; the tracks that took one and the tracks that ended."""
        ...

    def live_ids(self) -> list[str]:
        """Ids of the tracks still alive (tentative or confirmed)."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """The whole tracker as JSON-able data (exact)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state_dict (same options)."""
        ...


def box4(box: Any) -> tuple[float, float, float, float]:
    """A box (x1, y1, x2, y2) as the four floats a Match reports."""
    x1, y1, x2, y2 = (float(v) for v in np.asarray(box).reshape(4))
    return x1, y1, x2, y2


def check_boxes(boxes: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """(N x 4 float64 boxes, N float64 scores); ReIDError for empty boxes or mismatched lengths."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(s) != len(b):
        raise ReIDError(f"tracker: {len(b)} boxes but {len(s)} scores")
    if len(b) and ((b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])).any():
        raise ReIDError("tracker: detections must have a positive width and height")
    return b, s


def frame_box(box: Any, width: int, height: int, fallback: Any) -> np.ndarray:
    """A reported box clipped to the width x height frame (float x1, y1, x2, y2); `fallback` (the detection's box)
    where the box is not finite or has no area inside the frame."""
    b = np.asarray(box, np.float64).reshape(4)
    if np.isfinite(b).all():
        c = np.clip(b, 0.0, [width, height, width, height])
        if c[2] - c[0] >= 1.0 and c[3] - c[1] >= 1.0:
            return c
    return np.asarray(fallback, np.float64).reshape(4)


def feature_rows(features: Sequence[np.ndarray | None] | np.ndarray | None, n: int) -> list[np.ndarray | None]:
    """The features as a list of n rows (None: not embedded)."""
    if features is None:
        return [None] * n
    rows = list(features)
    if len(rows) != n:
        raise ReIDError(f"tracker: {n} boxes but {len(rows)} features")
    return [None if r is None else np.asarray(r, np.float32).reshape(-1) for r in rows]


def one_to_one_pairs(boxes: np.ndarray, pred: np.ndarray) -> tuple[dict[int, int], list[tuple[float, int, int]]]:
    """({detection: track} unambiguous pairs, [(margin, detection, nearest track)] ambiguous ones).

    A detection pairs one-to-one with the predicted box of a track when their IoU is >= PAIR_IOU and
    no other track or detection overlaps either of them by OTHER_IOU or more; such a pair needs no
    appearance. A detection near some track but overlapped by another is ambiguous (margin: its IoU
    with the nearest track minus the next overlap); a detection near no track is in neither.
    """
    pairs: dict[int, int] = {}
    ambiguous: list[tuple[float, int, int]] = []
    if not len(boxes) or not len(pred):
        return pairs, ambiguous
    iou = box_iou(boxes, pred)
    for d in range(len(boxes)):
        j = int(np.argmax(iou[d]))
        if iou[d, j] < PAIR_IOU:
            continue
        other = max(np.delete(iou[d], j).max(initial=0.0), np.delete(iou[:, j], d).max(initial=0.0))
        if other >= OTHER_IOU:
            ambiguous.append((float(iou[d, j] - other), d, j))
        else:
            pairs[d] = j
    return pairs, ambiguous


def needs_from_pairs(
    n: int, pairs: dict[int, int], ambiguous: list[tuple[float, int, int]], budget: int
) -> tuple[np.ndarray, dict[int, int]]:
    """(bool need per detection, {detection: track} whose feature stands in): unambiguous pairs need none;
    with a budget B > 0 only the B most ambiguous detections are embedded, the others lean on their nearest track."""
    need = np.ones(n, bool)
    lean = dict(pairs)
    if budget and len(ambiguous) > budget:
        for _margin, d, j in sorted(ambiguous)[budget:]:
            lean[d] = j
    need[list(lean)] = False
    return need, lean
