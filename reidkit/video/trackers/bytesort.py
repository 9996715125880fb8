"""``bytesort``: the default tracker, built from the association ideas that paid on the benchmark scenes.

Per frame, every track's Kalman filter (state cx, cy, w, h and their velocities, as BoT-SORT's;
process and measurement noise proportional to the box size, the measurement noise doubled:
``measurement_noise``, because a detector's boxes jitter) predicts its box, then detections are
given to tracks in stages, each a linear assignment (``scipy.optimize.linear_sum_assignment``) over a
gated cost:

1. confident detections (score >= ``high_score``) to confirmed tracks, lost ones included, on a
   fused cost: 1 - IoU with the predicted box, plus ``app_abs_weight`` x (cosine distance between the
   detection's feature and the track's feature EMA - ``app_neutral``), plus OC-SORT's direction term
   (the angle between the track's recent motion and the way to the detection, x ``inertia``; Cao et
   al., CVPR 2023). The whole cost must pass ``1 - match_iou``, so a look that is unlike the track
   vetoes a weak overlap (and a cosine distance over ``max_cosine_distance`` never matches); a pair with no rival in its row and column of the IoU gate pays no
   appearance (``lone_pairs_free``: small, fast, blurred crops look unlike their last ones without
   looking like anyone else). BoT-SORT (Aharon et al. 2022) fuses IoU and appearance too, with a
   minimum instead of a sum; on these scenes, whose ImageNet features put a person's crops at cosine
   0.17-0.33 and other people's from 0.17 up, the sum paid (benchmarks/bench_trackers.py);
2. (off by default, ``refind_cosine`` > 0) confirmed tracks lost for more than a frame to the
   confident detections left, by appearance alone, inside a reach growing with the frames lost;
3. tracks seen in the last frame to the low-score detections (``low_score`` <= score <
   ``high_score``) on IoU alone (ByteTrack, Zhang et al., ECCV 2022): a faint person keeps their
   track, and a low-score box never starts one;
4. tentative tracks to the confident detections left (IoU gate ``tentative_iou``, fused cost ranked on
   Hybrid-SORT's height-modulated IoU, IoU x the IoU of the vertical extents: Yang et al., AAAI 2024;
   ``height_iou``): two people who walk into the picture together have boxes clipped by the frame edge,
   of any width, and a new track has no velocity yet, while their heights differ (the one ID swap
   of scene A with ground-truth boxes); ranking confirmed tracks so too (``height_iou: all``) cost
   HOTA in the crowd of scene B, whose jittered boxes' heights say little;
5. (off by default, ``recover``) OC-SORT's observation-centric recovery on the last observed box.

A track found again after a gap is re-updated observation-centrically (OC-SORT's ORU): its filter
goes back to its state at the last observation and runs through virtual observations on the line
to the new one. ``score_noise`` (off by default) shrinks the measurement noise with the score
(StrongSORT's NSA Kalman): the detections here carry scores that say little about where the box
is. The feature EMA (``ema``, 0.95 as Deep OC-SORT's: Maggiolino et al., ICIP 2023) takes a
detection's feature only when no other detection overlaps it much. A new track starts from a confident detection (score >= ``new_score``) left over, with a
velocity uncertainty ``initial_velocity_std`` wide (people walk into the picture fast), is
confirmed after ``n_init`` detections and, while tentative, survives ``tentative_misses`` missed
frames (DeepSort's new tracks die on their first miss); a confirmed track lost for more than
``max_age`` frames ends. The scenes here come from fixed cameras: no camera motion compensation.

Which detections need features (``needs_features``): low-score ones never (IoU alone serves them);
a confident one that pairs one-to-one with a track seen in the last frame neither (the IoU pair is
unambiguous); the others do, the most ambiguous first under an embedding budget. A detection given
no feature pays the neutral appearance and leaves its track's EMA as it was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from reidkit.errors import OptionError
from reidkit.video.trackers import register_tracker
from reidkit.video.trackers.base import (
    FrameTracks,
    Match,
    box_iou,
    check_boxes,
    decode,
    encode,
    feature_rows,
    needs_from_pairs,
    one_to_one_pairs,
)

STD_POS, STD_VEL = 1.0 / 20, 1.0 / 160  # Kalman noise per unit of box size (DeepSort's, BoT-SORT's)
_F = np.eye(8)
_F[:4, 4:] = np.eye(4)
_H = np.eye(4, 8)
BIG = 1e6


@dataclass
class ByteSortOptions:
    """Options of the bytesort tracker (``--tracker-option KEY=VALUE``); frames are processed frames."""

    max_age: int = 30  # frames a lost confirmed track is kept
    n_init: int = 3  # detections to confirm a track
    tentative_misses: int = 2  # frames a tentative track may miss before it is dropped
    high_score: float = 0.35  # detections at or above: first stage; below: the low-score stage
    low_score: float = 0.1  # detections below are ignored
    new_score: float = 0.45  # a detection left over starts a track at this score or more
    match_iou: float = 0.2  # stage 1: IoU with the predicted box at least (the gate; the fused cost ranks)
    low_iou: float = 0.5  # stage 3 (low-score boxes): IoU at least
    tentative_iou: float = 0.3  # stage 4: IoU with the predicted box at least
    buffer: float = 0.0  # a track lost k frames matches on boxes widened by buffer * k (C-BIoU; 0: off)
    fused_gate: bool = True  # stage 1 gates the fused cost (1 - IoU + appearance + direction <= 1 - match_iou)
    recover_iou: float = 0.3  # stage 5 (with recover): IoU with the last observed box at least
    recover_age: int = 3  # stage 5: only tracks lost for at most this many frames
    recover: bool = False  # stage 5 on (it cost HOTA on the scenes of benchmarks/bench_trackers.py)
    max_cosine_distance: float = 0.5  # a confirmed track never takes a detection farther than this in appearance
    app_weight: float = 0.0  # fused cost: 1 - IoU + app_weight * (cosine distance - the best alternative's)
    app_abs_weight: float = 1.25  # fused cost: + app_abs_weight * (cosine distance - app_neutral)
    lone_pairs_free: bool = True  # the absolute term spares a pair with no rival in the IoU gate
    app_neutral: float = 0.2  # ... the cosine distance that neither helps nor hurts (also used without a feature)
    refind_cosine: float = 0.0  # stage 2: appearance alone, cosine distance at most (0: off)
    refind_reach: float = 0.5  # stage 2: centre distance at most this many box heights per frame lost (+1)
    inertia: float = 0.2  # weight of OC-SORT's direction term
    delta_t: int = 3  # frames back for the direction of motion
    ema: float = 0.95  # feature EMA: new = ema * old + (1 - ema) * detection (Deep OC-SORT's 0.95)
    ema_overlap: float = 0.3  # a detection overlapped by another at this IoU or more leaves the EMA alone
    reupdate: bool = True  # OC-SORT's observation-centric re-update after a gap
    score_noise: bool = False  # measurement noise x (1 - score) (NSA Kalman), at least 0.1
    initial_velocity_std: float = 15.0  # a new track's velocity std, in Kalman velocity noise units (DeepSort: 10)
    measurement_noise: float = 2.0  # measurement noise x this (the box's jitter against the filter's trust)
    height_iou: str = (
        "tentative"  # rank pairs by IoU x the IoU of their vertical extents (Hybrid-SORT's height-modulated
    )
    # IoU) in stage 4 ("tentative"), in stages 1 and 4 ("all") or nowhere ("off")
    height_gate: bool = False  # ... and gate on it too (else the gate is the plain IoU's)

    def check(self) -> None:
        if self.height_iou not in ("off", "tentative", "all"):
            raise OptionError("tracker.bytesort.height_iou", f"must be off, tentative or all, got {self.height_iou!r}")
        for name in ("max_age", "n_init", "delta_t", "recover_age"):
            if int(getattr(self, name)) < 1:
                raise OptionError(f"tracker.bytesort.{name}", f"must be >= 1, got {getattr(self, name)}")
        if int(self.tentative_misses) < 0:
            raise OptionError("tracker.bytesort.tentative_misses", f"must be >= 0, got {self.tentative_misses}")
        for name in (
            "high_score",
            "low_score",
            "new_score",
            "match_iou",
            "low_iou",
            "tentative_iou",
            "recover_iou",
            "ema",
            "ema_overlap",
        ):
            v = float(getattr(self, name))
            if not 0.0 <= v <= 1.0:
                raise OptionError(f"tracker.bytesort.{name}", f"must be in [0, 1], got {v}")
        for name in ("max_cosine_distance", "refind_cosine", "app_neutral"):
            v = float(getattr(self, name))
            if not 0.0 <= v <= 2.0:
                raise OptionError(f"tracker.bytesort.{name}", f"must be in [0, 2], got {v}")
        for name in (
            "refind_reach",
            "inertia",
            "app_weight",
            "app_abs_weight",
            "measurement_noise",
            "buffer",
            "initial_velocity_std",
        ):
            if not float(getattr(self, name)) >= 0.0:
                raise OptionError(f"tracker.bytesort.{name}", f"must be >= 0, got {getattr(self, name)}")


def _xywh(box: np.ndarray) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box[2] - box[0], box[3] - box[1]])


def _xyxy(m: np.ndarray) -> np.ndarray:
    """x1, y1, x2, y2 of Kalman means (..., >= 4): cx, cy, w, h first."""
    m = np.asarray(m)
    half = np.abs(m[..., 2:4]) / 2
    return np.concatenate([m[..., :2] - half, m[..., :2] + half], axis=-1)


def _q(mean: np.ndarray) -> np.ndarray:
    w, h = abs(mean[2]), abs(mean[3])
    return np.square(
        [STD_POS * w, STD_POS * h, STD_POS * w, STD_POS * h, STD_VEL * w, STD_VEL * h, STD_VEL * w, STD_VEL * h]
    )


class _Track:
    """One track's state (plain numbers and arrays: a state_dict is vars())."""

    def __init__(
        self, tid: int, box: np.ndarray, score: float, feat: np.ndarray | None, frame: int, velocity_std: float = 10.0
    ) -> None:
        z = _xywh(box)
        w, h = z[2], z[3]
        v = velocity_std * STD_VEL
        self.id = tid
        self.mean = np.r_[z, np.zeros(4)]
        self.cov = np.diag(
            np.square([2 * STD_POS * w, 2 * STD_POS * h, 2 * STD_POS * w, 2 * STD_POS * h, v * w, v * h, v * w, v * h])
        )
        self.feat = None if feat is None else np.array(feat, np.float32)  # a unit row
        self.confirmed = False
        self.hits = 1
        self.misses = 0  # frames since the last detection
        self.last_box = np.asarray(box, np.float64).copy()
        self.last_frame = frame
        self.obs = [[float(frame), float(z[0]), float(z[1])]]  # recent observed centres (for the direction)
        self.motion = [0.0, 0.0, 0.0, 0.0]  # the direction's origin (x, y) and unit vector (zeros: unknown)
        self.snap_mean, self.snap_cov = self.mean.copy(), self.cov.copy()

    def state(self) -> dict[str, Any]:
        return dict(vars(self))

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> _Track:
        t = cls.__new__(cls)
        t.__dict__.update(d)
        return t


@register_tracker("bytesort", options=ByteSortOptions)
class ByteSort:
    """ByteTrack + OC-SORT + BoT-SORT association on reidkit features (see the module docstring)."""

    def __init__(self, options: ByteSortOptions | None = None) -> None:
        from reidkit.video.track import single_thread_blas

        single_thread_blas()  # tiny per-frame solves and products: a threaded BLAS only spins (reidkit.video.track)
        self.o = options or ByteSortOptions()
        self.tracks: list[_Track] = []
        self.next_id = 1
        self.frame = 0

    # ------------------------------------------------------------------ Kalman

    def _update_kf(self, t: _Track, box: np.ndarray, score: float) -> None:
        z = _xywh(box)
        w, h = abs(t.mean[2]), abs(t.mean[3])
        r = np.square([STD_POS * w, STD_POS * h, STD_POS * w, STD_POS * h])
        r = r * self.o.measurement_noise
        if self.o.score_noise:
            r = r * max(1.0 - float(score), 0.1)
        s = t.cov[:4, :4] + np.diag(r)
        pht = t.cov[:, :4]
        gain = np.linalg.solve(s, pht.T).T
        t.mean = t.mean + gain @ (z - t.mean[:4])
        t.cov = t.cov - gain @ pht.T

    def _update_many(self, tracks: list[_Track], boxes: np.ndarray, scores: np.ndarray) -> None:
        """_update_kf of several tracks at once (the same arithmetic, batched)."""
        z = np.c_[
            (boxes[:, 0] + boxes[:, 2]) / 2,
            (boxes[:, 1] + boxes[:, 3]) / 2,
            boxes[:, 2] - boxes[:, 0],
            boxes[:, 3] - boxes[:, 1],
        ]
        means = np.stack([t.mean for t in tracks])
        covs = np.stack([t.cov for t in tracks])
        wh = np.abs(means[:, 2:4])
        r = np.square(np.concatenate([STD_POS * wh, STD_POS * wh], axis=1)) * self.o.measurement_noise
        if self.o.score_noise:
            r = r * np.maximum(1.0 - scores, 0.1)[:, None]
        s = covs[:, :4, :4].copy()
        s[:, np.arange(4), np.arange(4)] += r
        pht = covs[:, :, :4]
        gain = np.linalg.solve(s, pht.transpose(0, 2, 1)).transpose(0, 2, 1)
        means = means + np.einsum("nij,nj->ni", gain, z - means[:, :4])
        covs = covs - gain @ pht.transpose(0, 2, 1)
        for t, m, c in zip(tracks, means, covs):
            t.mean, t.cov = m, c

    @staticmethod
    def _predict_one(t: _Track) -> None:
        t.mean = _F @ t.mean
        t.cov = _F @ t.cov @ _F.T + np.diag(_q(t.mean))

    def _predict_all(self) -> None:
        if not self.tracks:
            return
        means = np.stack([t.mean for t in self.tracks])
        lost = np.array([t.misses > 0 for t in self.tracks])
        means[lost, 6:8] = 0.0  # a lost box keeps its size
        covs = np.stack([t.cov for t in self.tracks])
        means = means @ _F.T
        wh = np.abs(means[:, 2:4])
        q = np.square(np.concatenate([STD_POS * wh, STD_POS * wh, STD_VEL * wh, STD_VEL * wh], axis=1))
        q = q[:, [0, 1, 2, 3, 4, 5, 6, 7]]
        covs = _F @ covs @ _F.T
        covs[:, np.arange(8), np.arange(8)] += q
        for t, m, c in zip(self.tracks, means, covs):
            t.mean, t.cov = m, c

    def _predicted_boxes(self, tracks: list[_Track]) -> np.ndarray:
        """Boxes of the tracks' means as they are now (after the predict of this frame)."""
        if not tracks:
            return np.zeros((0, 4))
        return _xyxy(np.stack([t.mean for t in tracks]))

    # ------------------------------------------------------------------ costs

    def _direction_cost(self, tracks: list[_Track], boxes: np.ndarray) -> np.ndarray:
        """OC-SORT's direction term: |angle| / pi between each track's recent motion (from its observation
        `delta_t` frames back to its last) and the way from that older observation to each box, x inertia."""
        if not self.o.inertia or not len(boxes) or not tracks:
            return np.zeros((len(tracks), len(boxes)))
        centres = np.c_[(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2]
        motion = np.array([t.motion for t in tracks])  # from x, from y, unit dx, unit dy (zeros: unknown)
        d = centres[None, :, :] - motion[:, None, :2]
        nd = np.maximum(np.hypot(d[..., 0], d[..., 1]), 1e-6)
        cos = np.clip((d[..., 0] * motion[:, None, 2] + d[..., 1] * motion[:, None, 3]) / nd, -1.0, 1.0)
        known = (motion[:, 2] != 0) | (motion[:, 3] != 0)
        return np.where(known[:, None], np.arccos(cos) / math.pi * self.o.inertia, 0.0)

    def _appearance(self, tracks: list[_Track], feats: list[np.ndarray | None], dets: np.ndarray) -> np.ndarray:
        """Cosine distance track EMA x detection (nan where either has no feature)."""
        out = np.full((len(tracks), len(dets)), np.nan)
        ti = [i for i, t in enumerate(tracks) if t.feat is not None]
        di = [j for j, d in enumerate(dets) if feats[d] is not None]
        if ti and di:
            a = np.stack([tracks[i].feat for i in ti])
            b = np.stack([feats[dets[j]] for j in di])  # unit rows (update normalises them once)
            out[np.ix_(ti, di)] = 1.0 - a @ b.T
        return out

    def _fused(
        self,
        tracks: list[_Track],
        boxes: np.ndarray,
        feats: list[np.ndarray | None],
        dets: np.ndarray,
        direction: bool,
        min_iou: float,
        fused_gate: bool,
        height: bool = False,
    ) -> np.ndarray:
        """The fused cost; BIG where the IoU with the predicted box is under `min_iou` or the appearance is vetoed
        (the gate is geometric: appearance and direction only rank the pairs that pass it)."""
        pred = self._predicted_boxes(tracks)
        iou = box_iou(pred, boxes[dets])
        lost = np.array([min(t.misses, 3) for t in tracks], float)
        if self.o.buffer and lost.any():
            # C-BIoU (Yang et al., WACV 2023): a track lost for k frames (up to 3) is matched on boxes widened by
            # buffer * k of their size on each side, the detections' and its own, so a fast walker is found again
            k = np.flatnonzero(lost)
            grow = (self.o.buffer * lost[k])[:, None, None]
            p, d = pred[k], boxes[dets]
            pw = np.c_[p[:, 2] - p[:, 0], p[:, 3] - p[:, 1]]
            dw = np.c_[d[:, 2] - d[:, 0], d[:, 3] - d[:, 1]]
            pb = np.c_[p[:, :2] - pw * grow[:, 0], p[:, 2:] + pw * grow[:, 0]]
            for row, kk in enumerate(k):
                g = float(grow[row, 0, 0])
                db = np.c_[d[:, :2] - dw * g, d[:, 2:] + dw * g]
                iou[kk] = np.maximum(iou[kk], box_iou(pb[row : row + 1], db)[0])
        rank = self._height_modulated(pred, boxes[dets], iou) if height else iou
        cost = 1.0 - rank
        app = self._appearance(tracks, feats, dets)
        known = ~np.isnan(app)
        if self.o.app_weight and known.any():
            # relative appearance: a pair pays for the better-looking alternative its track or its detection has
            # among the boxes that pass the IoU gate (a lone pair pays nothing, whatever the features)
            near = known & (iou >= min_iou)
            a = np.where(near, app, np.inf)
            best = np.minimum(a.min(axis=1, initial=np.inf)[:, None], a.min(axis=0, initial=np.inf)[None, :])
            cost = cost + self.o.app_weight * np.where(near, app - best, 0.0)
        if self.o.app_abs_weight:
            term = self.o.app_abs_weight * (np.where(known, app, self.o.app_neutral) - self.o.app_neutral)
            if self.o.lone_pairs_free:
                # a pair alone in its row and column of the IoU gate has nothing to be told apart from: it pays no
                # appearance (small, fast, blurred crops look unlike their last ones without being anyone else)
                near = iou >= min_iou
                lone = (near.sum(axis=1, keepdims=True) == 1) & (near.sum(axis=0, keepdims=True) == 1)
                term = np.where(lone, 0.0, term)
            cost = cost + term
        cost = np.where(known & (app > self.o.max_cosine_distance), BIG, cost)
        if direction:
            cost = cost + self._direction_cost(tracks, boxes[dets])
        if self.o.height_gate:
            ok = (cost <= 1.0 - min_iou) if fused_gate else (rank >= min_iou)
        else:
            ok = (cost + rank - iou <= 1.0 - min_iou) if fused_gate else (iou >= min_iou)
        return np.where(ok, cost, BIG)

    def _height_modulated(self, a: np.ndarray, b: np.ndarray, iou: np.ndarray) -> np.ndarray:
        """`iou` (of boxes a x b) times the IoU of their vertical extents with ``height_iou`` (Hybrid-SORT, Yang et
        al., AAAI 2024): people who enter at a frame edge together have clipped boxes of any width, their heights
        differ."""
        if iou.size:
            inter = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
            union = np.maximum(a[:, None, 3], b[None, :, 3]) - np.minimum(a[:, None, 1], b[None, :, 1])
            iou = iou * np.clip(inter, 0.0, None) / np.maximum(union, 1e-9)
        return iou

    @staticmethod
    def _assign(cost: np.ndarray, limit: float) -> list[tuple[int, int]]:
        if not cost.size:
            return []
        from scipy.optimize import linear_sum_assignment

        c = np.where(cost <= limit, cost, BIG)
        rows, cols = linear_sum_assignment(c)
        return [(int(r), int(k)) for r, k in zip(rows, cols) if c[r, k] <= limit]

    # ------------------------------------------------------------------ the protocol

    def needs_features(self, boxes: np.ndarray, scores: np.ndarray, budget: int = 0) -> np.ndarray:
        """Bool per detection: embed it (see the module docstring)."""
        b, s = check_boxes(boxes, scores)
        need = s >= self.o.high_score
        recent = [t for t in self.tracks if t.misses == 0]
        if not recent or not need.any():
            return need
        pred = _xyxy(np.stack([_F @ t.mean for t in recent]))  # this frame's prediction, the state untouched
        idx = np.flatnonzero(need)
        pairs, ambiguous = one_to_one_pairs(b[idx], pred)
        sub, _lean = needs_from_pairs(len(idx), pairs, ambiguous, int(budget))
        need[idx] = sub
        return need

    def update(
        self, boxes: np.ndarray, scores: np.ndarray, features: Sequence[np.ndarray | None] | np.ndarray | None
    ) -> FrameTracks:
        """One frame (see the module docstring)."""
        o = self.o
        b, s = check_boxes(boxes, scores)
        feats = [
            None if f is None else f / max(float(np.linalg.norm(f)), 1e-12) for f in feature_rows(features, len(b))
        ]
        self._predict_all()
        high = np.flatnonzero(s >= o.high_score)
        low = np.flatnonzero((s >= o.low_score) & (s < o.high_score))
        taken: dict[int, int] = {}  # track index -> detection
        confirmed = [i for i, t in enumerate(self.tracks) if t.confirmed]

        def free(dets: np.ndarray) -> np.ndarray:
            used = set(taken.values())
            return np.asarray([d for d in dets if d not in used], dtype=np.int64)

        # 1. confident detections to confirmed tracks: fused cost + direction
        tr = [self.tracks[i] for i in confirmed]
        for r, c in self._assign(
            self._fused(tr, b, feats, high, True, o.match_iou, o.fused_gate, o.height_iou == "all"), BIG / 2
        ):
            taken[confirmed[r]] = int(high[c])
        # 2. lost confirmed tracks by appearance alone, within a reach growing with the frames lost
        rest = [
            i for i in confirmed if i not in taken and self.tracks[i].misses > 1 and self.tracks[i].feat is not None
        ]
        dets = free(high)
        if o.refind_cosine > 0 and rest and len(dets):
            tr = [self.tracks[i] for i in rest]
            app = self._appearance(tr, feats, dets)
            last = np.stack([t.last_box for t in tr])
            lc = np.c_[(last[:, 0] + last[:, 2]) / 2, (last[:, 1] + last[:, 3]) / 2]
            bd = b[dets]
            dc = np.c_[(bd[:, 0] + bd[:, 2]) / 2, (bd[:, 1] + bd[:, 3]) / 2]
            dist = np.hypot(lc[:, None, 0] - dc[None, :, 0], lc[:, None, 1] - dc[None, :, 1])
            reach = o.refind_reach * (last[:, 3] - last[:, 1]) * (np.array([t.misses for t in tr]) + 1.0)
            cost = np.where((dist <= reach[:, None]) & ~np.isnan(app), app, BIG)
            for r, c in self._assign(cost, o.refind_cosine):
                taken[rest[r]] = int(dets[c])
        # 3. tracks seen in the last frame to low-score detections, IoU alone
        rest = [i for i in confirmed if i not in taken and self.tracks[i].misses == 0]
        dets = free(low)
        if rest and len(dets):
            iou = box_iou(self._predicted_boxes([self.tracks[i] for i in rest]), b[dets])
            for r, c in self._assign(1.0 - iou, 1.0 - o.low_iou):
                taken[rest[r]] = int(dets[c])
        # 4. tentative tracks to the confident detections left
        tent = [i for i, t in enumerate(self.tracks) if not t.confirmed]
        dets = free(high)
        if tent and len(dets):
            tr = [self.tracks[i] for i in tent]
            for r, c in self._assign(
                self._fused(tr, b, feats, dets, False, o.tentative_iou, False, o.height_iou != "off"), BIG / 2
            ):
                taken[tent[r]] = int(dets[c])
        # 5. observation-centric recovery: the last observed box of tracks still unmatched
        rest = [i for i in range(len(self.tracks)) if i not in taken and self.tracks[i].misses <= o.recover_age]
        dets = free(high)
        if o.recover and rest and len(dets):
            iou = box_iou(np.stack([self.tracks[i].last_box for i in rest]), b[dets])
            for r, c in self._assign(1.0 - iou, 1.0 - o.recover_iou):
                taken[rest[r]] = int(dets[c])

        matched: list[Match] = []
        overlap = box_iou(b, b)
        np.fill_diagonal(overlap, 0.0)
        order = sorted(taken)
        plain = [i for i in order if not (o.reupdate and self.frame - self.tracks[i].last_frame > 1)]
        if plain:  # one batched Kalman update; a track back from a gap is re-updated on its own (_observe)
            self._update_many(
                [self.tracks[i] for i in plain], b[[taken[i] for i in plain]], s[[taken[i] for i in plain]]
            )
        plain_set = set(plain)
        over = overlap.max(axis=1, initial=0.0)
        for i in order:
            t, d = self.tracks[i], taken[i]
            self._observe(t, b[d], float(s[d]), feats[d], float(over[d]), updated=i in plain_set)
            matched.append(Match(str(t.id), d, t.confirmed, tuple(_xyxy(t.mean).tolist())))
        ended: list[str] = []
        keep: list[_Track] = []
        for i, t in enumerate(self.tracks):
            if i not in taken:
                t.misses += 1
                if t.misses > (o.max_age if t.confirmed else o.tentative_misses):
                    ended.append(str(t.id))
                    continue
            keep.append(t)
        self.tracks = keep
        used = set(taken.values())
        for d in high:
            if int(d) not in used and s[d] >= o.new_score:
                t = _Track(self.next_id, b[d], float(s[d]), feats[d], self.frame, o.initial_velocity_std)
                self.next_id += 1
                if o.n_init <= 1:
                    t.confirmed = True
                self.tracks.append(t)
                matched.append(Match(str(t.id), int(d), t.confirmed, tuple(float(v) for v in b[d])))
        self.frame += 1
        return FrameTracks(matched, ended)

    def _observe(
        self, t: _Track, box: np.ndarray, score: float, feat: np.ndarray | None, overlap: float, updated: bool = False
    ) -> None:
        gap = self.frame - t.last_frame
        if updated:
            pass  # the Kalman update was done in a batch
        elif self.o.reupdate and gap > 1:
            # OC-SORT's re-update: from the state at the last observation, through virtual observations
            t.mean, t.cov = t.snap_mean.copy(), t.snap_cov.copy()
            for k in range(1, gap):
                virtual = t.last_box + (box - t.last_box) * (k / gap)
                self._predict_one(t)
                self._update_kf(t, virtual, score)
            self._predict_one(t)
            self._update_kf(t, box, score)
        else:
            self._update_kf(t, box, score)
        t.snap_mean, t.snap_cov = t.mean.copy(), t.cov.copy()
        if feat is not None and overlap < self.o.ema_overlap:
            f = feat  # a unit row
            if t.feat is None:
                t.feat = f.copy()
            else:
                e = t.feat * np.float32(self.o.ema) + f * np.float32(1.0 - self.o.ema)
                t.feat = e / max(float(np.linalg.norm(e)), 1e-12)
        t.hits += 1
        t.misses = 0
        t.last_box = np.asarray(box, np.float64).copy()
        t.last_frame = self.frame
        z = _xywh(box)
        t.obs.append([float(self.frame), float(z[0]), float(z[1])])
        del t.obs[: -(self.o.delta_t + 1)]
        prev = t.obs[0]
        for ob in t.obs:
            if ob[0] <= self.frame - self.o.delta_t:
                prev = ob
        v = (z[0] - prev[1], z[1] - prev[2])
        n = math.hypot(*v)
        t.motion = [prev[1], prev[2], v[0] / n, v[1] / n] if n > 1e-6 else [0.0, 0.0, 0.0, 0.0]
        if not t.confirmed and t.hits >= self.o.n_init:
            t.confirmed = True

    def live_ids(self) -> list[str]:
        """Ids of the tracks still alive (tentative or confirmed)."""
        return [str(t.id) for t in self.tracks]

    def state_dict(self) -> dict[str, Any]:
        """The whole tracker as JSON-able data (exact: arrays as raw bytes)."""
        return {"next_id": self.next_id, "frame": self.frame, "tracks": [encode(t.state()) for t in self.tracks]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state_dict (same options)."""
        self.next_id = int(state["next_id"])
        self.frame = int(state["frame"])
        self.tracks = [_Track.from_state(decode(d)) for d in state["tracks"]]
