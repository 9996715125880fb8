"""``deep_sort``: deep_sort_realtime's DeepSort (Wojke et al., ICIP 2017) on reidkit features, as a Tracker.

The tracker of reidkit.video.track (the cascade as it was configured before the Tracker protocol):
a confirmed track is matched by appearance (cosine gate ``max_cosine_distance``) inside DeepSort's
Mahalanobis gate, box overlap (``max_iou_distance``) serves tentative tracks and tracks matched in
the previous frame; a new track needs ``n_init`` consecutive detections and dies on its first miss;
a lost track lives ``max_age`` processed frames.

Which detections need features: one that pairs one-to-one with a track seen in the last frame
(reidkit.video.trackers.base.one_to_one_pairs) is given that track's last feature (an appearance cost
of zero for that pair: DeepSort's matching cascade serves tracks seen last frame first); with an
embedding budget the least ambiguous detections over it lean on their nearest track the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from reidkit.errors import ReIDError
from reidkit.video.track import Tracker as _DeepSort
from reidkit.video.trackers import register_tracker
from reidkit.video.trackers.base import (
    FrameTracks,
    Match,
    box4,
    check_boxes,
    feature_rows,
    needs_from_pairs,
    one_to_one_pairs,
)


@dataclass
class DeepSortOptions:
    """Options of the deep_sort tracker (``--tracker-option KEY=VALUE``; frames are processed frames)."""

    max_age: int = 15  # frames a lost track is kept
    n_init: int = 3  # consecutive detections to confirm a track
    max_cosine_distance: float = 0.1  # appearance gate (0.3 lets tracks jump between people on the synthetic scene)
    nn_budget: int = 20  # appearance samples kept per track
    max_iou_distance: float = 0.7  # box-overlap gate (1 - IoU)

    def check(self) -> None:
        from reidkit.errors import OptionError

        for name in ("max_age", "n_init", "nn_budget"):
            if int(getattr(self, name)) < 1:
                raise OptionError(f"tracker.deep_sort.{name}", f"must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.max_cosine_distance <= 2.0:
            raise OptionError(
                "tracker.deep_sort.max_cosine_distance", f"must be in [0, 2], got {self.max_cosine_distance}"
            )
        if not 0.0 <= self.max_iou_distance <= 1.0:
            raise OptionError("tracker.deep_sort.max_iou_distance", f"must be in [0, 1], got {self.max_iou_distance}")


@register_tracker("deep_sort", options=DeepSortOptions)
class DeepSortTracker(_DeepSort):
    """deep_sort_realtime's DeepSort behind the Tracker protocol (see the module docstring)."""

    requires = ("deep_sort_realtime.deepsort_tracker",)  # the deepsort extra, checked with the options

    def __init__(self, options: DeepSortOptions | None = None) -> None:
        o = options or DeepSortOptions()
        super().__init__(
            max_age=o.max_age,
            n_init=o.n_init,
            max_cosine_distance=o.max_cosine_distance,
            nn_budget=o.nn_budget,
            max_iou_distance=o.max_iou_distance,
        )

    def _recent(self) -> tuple[list[Any], np.ndarray]:
        """Tracks seen in the last processed frame (DeepSort's cascade serves them first) and their predicted boxes."""
        tracks = [t for t in self.ds.tracker.tracks if t.features and t.time_since_update <= 1]
        pred = []
        for t in tracks:  # the Kalman prediction for this frame: constant velocity on (cx, cy, a, h)
            cx, cy, a, h = (t.mean[:4] + t.mean[4:8]).tolist()
            w = a * h
            pred.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        return tracks, np.asarray(pred, np.float64).reshape(-1, 4)

    def reuse_features(self, boxes: np.ndarray, budget: int = 0) -> list[np.ndarray | None]:
        """Per detection: the feature standing in for its crop (its track's last feature), or None to embed it."""
        out: list[np.ndarray | None] = [None] * len(boxes)
        tracks, pred = self._recent()
        if not tracks or not len(boxes):
            return out
        _need, lean = needs_from_pairs(len(boxes), *one_to_one_pairs(np.asarray(boxes), pred), int(budget))
        for d, j in lean.items():
            out[d] = tracks[j].features[-1]
        return out

    def needs_features(self, boxes: np.ndarray, scores: np.ndarray, budget: int = 0) -> np.ndarray:
        """Bool per detection: embed it (see the module docstring)."""
        return np.asarray([r is None for r in self.reuse_features(boxes, budget)], bool)

    def update(
        self, boxes: np.ndarray, scores: np.ndarray, features: Sequence[np.ndarray | None] | np.ndarray | None
    ) -> FrameTracks:
        """One frame; a detection given no feature takes its track's last one (as ``needs_features`` decided)."""
        b, s = check_boxes(boxes, scores)
        rows = feature_rows(features, len(b))
        if any(r is None for r in rows):
            # a detection given no feature was paired with its nearest recent track by needs_features (one-to-one,
            # or ambiguous over the budget): that track's last feature stands in, as it did before the protocol
            tracks, pred = self._recent()
            pairs, ambiguous = one_to_one_pairs(b, pred)
            near = {**{d: j for _m, d, j in ambiguous}, **pairs}
            for i, r in enumerate(rows):
                if r is None:
                    if i not in near:
                        raise ReIDError("tracker deep_sort: a detection near no recent track came without a feature")
                    rows[i] = np.asarray(tracks[near[i]].features[-1], np.float32)
        known = [r for r in rows if r is not None]
        assert len(known) == len(rows)  # each missing feature was filled in above
        embeds = np.stack(known) if known else np.zeros((0, 1), np.float32)
        matched, ended = self.step(b, s, embeds)
        return FrameTracks([Match(tid, di, conf, box4(b[di])) for tid, di, conf in matched], ended)
