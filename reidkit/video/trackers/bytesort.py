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
   vetoes a weak overlap (``max_cosine_distance``, a hard veto on appearance, is off by default: an
   occluded person's crop shows the occluder and the veto broke their track); a pair with no rival
   in its row and column of the IoU gate pays no
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

The box a match reports (``report_box``, what ``reidkit video`` stores in the tracklet): the
detection's (``detection``), the filter's posterior (``filter``, as BoxMOT's trackers report), or
by default (``auto``) the Kalman update of the track's prediction with the jitter measured on this
video as the measurement noise: exact boxes are reported as they are, jittering ones smoothed as
much as they jitter. The jitter is a difference-based noise estimate (``_jitter_var``): the
second differences of white noise of variance v have a lag-one covariance of -4 v, a smooth walk
a positive one, so the estimate sees the detector's noise and not the walk. On the benchmark's
jittered boxes (gtn) this lifts HOTA by 1-4 points (the filter's estimate is nearer the person);
on exact boxes the filter's box costs up to 9 (it lags), the auto box 0.2.

Which detections need features (``needs_features``): low-score ones never (IoU alone serves them);
a confident one that pairs one-to-one with a track seen in the last frame neither (the IoU pair is
unambiguous); the others do. Under an embedding budget (``reidkit video --embed-budget``) the
detections near no track still always do; of the budget, ``1 - refresh_share`` goes to the most
ambiguous, the rest to detections that overlap no other (their features feed the EMA) of the
tracks whose features are the oldest: in a crowd nearly every box is "ambiguous", and spending a
budget of 8 only on the most overlapped (whose crops may not feed the EMA) left the tracks with
their first look when people crossed (scene B with ground-truth boxes: HOTA 93.0 at budget 8 and
98.5 with every crop embedded; 98.1 so). A detection given no feature pays no appearance, and
neither do its rivals in the IoU gate (``app_all_or_none``: an unseen pair paid nothing while its
rivals paid theirs, so the unembedded boxes of a crowd took the tracks), and it leaves its
track's EMA as it was.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from reidkit.video.trackers import register_tracker
from reidkit.video.trackers.base import (
    FrameTracks,
    Match,
    box4,
    box_iou,
    check_boxes,
    decode,
    encode,
    feature_rows,
    needs_from_pairs,
    one_to_one_pairs,
)
from reidkit.video.trackers.bytesort_options import ByteSortOptions
from reidkit.video.trackers.bytesort_track import _F, STD_POS, STD_VEL, _q, _Track, _xywh, _xyxy

BIG = 1e6


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
        self.jitter = [0.0] * 5  # pairs of second differences seen, their products' sums per cx, cy, w, h (_jitter_var)

    # ------------------------------------------------------------------ Kalman

    def _update_kf(self, t: _Track, box: np.ndarray, score: float) -> np.ndarray:
        """One track's Kalman update; its reported box as _update_many's."""
        z = _xywh(box)
        auto = _xyxy(self._reported(t.mean[None], t.cov[None], z[None])[0]) if self.o.report_box == "auto" else None
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
        return _xyxy(t.mean) if auto is None else auto

    def _jitter_var(self) -> np.ndarray:
        """The detector's jitter on this video as a variance per cx, cy, w, h, relative to the box's width or height
        (see ``_reported``; 0 before any is measured). From the confirmed tracks' runs of four consecutive boxes:
        the second differences d[t] = z[t] - 2 z[t-1] + z[t-2] of i.i.d. noise of variance v have a lag-one
        covariance of -4 v, while a smooth motion (a walk, a gait's swing) gives them a positive one; so
        -mean(d[t] d[t-1]) / 4 measures the jitter and not the motion (a difference-based noise estimate)."""
        n = self.jitter[0]
        if not n:
            return np.zeros(4)
        return np.maximum(-np.asarray(self.jitter[1:]) / (4.0 * n), 0.0)

    def _reported(self, means: np.ndarray, covs: np.ndarray, z: np.ndarray) -> np.ndarray:
        """report_box auto: the boxes (cx, cy, w, h) a Kalman update of these priors gives with the measurement noise
        measured on this video (``_jitter_var``) instead of the filter's assumed one: exact boxes (jitter near 0)
        are reported as they are, jittering ones are smoothed as much as they jitter."""
        norm = np.abs(means[:, [2, 3, 2, 3]])
        hph = covs[:, :4, :4]
        s = hph.copy()
        s[:, np.arange(4), np.arange(4)] += self._jitter_var() * np.square(norm)
        nu = z - means[:, :4]
        return np.asarray(means[:, :4] + np.einsum("nij,nj->ni", hph, np.linalg.solve(s, nu[..., None])[..., 0]))

    def _update_many(self, tracks: list[_Track], boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """_update_kf of several tracks at once (the same arithmetic, batched); the reported boxes (report_box auto:
        from the priors, ``_reported``; else the posteriors, as x1, y1, x2, y2)."""
        z = np.c_[
            (boxes[:, 0] + boxes[:, 2]) / 2,
            (boxes[:, 1] + boxes[:, 3]) / 2,
            boxes[:, 2] - boxes[:, 0],
            boxes[:, 3] - boxes[:, 1],
        ]
        means = np.stack([t.mean for t in tracks])
        covs = np.stack([t.cov for t in tracks])
        auto = _xyxy(self._reported(means, covs, z)) if self.o.report_box == "auto" else None
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
        return _xyxy(means) if auto is None else auto

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
            a = np.stack([f for i in ti if (f := tracks[i].feat) is not None])
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
            if self.o.app_all_or_none:
                # a track or detection whose rivals in the IoU gate are not all seen (a detection left unembedded by
                # the budget, a track with no feature yet) is ranked without appearance: a pair whose look is not
                # known paid nothing while its rivals paid theirs, and a crowd's unembedded boxes took the tracks
                near = iou >= min_iou
                blind = near & ~known
                rows = (near & blind.any(axis=1, keepdims=True)) | (near & blind.any(axis=0, keepdims=True))
                term = np.where(rows, 0.0, term)
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
        if self.o.refresh_share > 0 and (budget > 0 or self.o.refresh_unlimited):
            limit = int(budget) if budget > 0 else len(idx)  # no limit: every ambiguous one and every stale track
            need[idx] = self._budgeted(b[idx], pairs, ambiguous, recent, limit, budget <= 0)
            return need
        sub, _lean = needs_from_pairs(len(idx), pairs, ambiguous, int(budget))
        need[idx] = sub
        return need

    def _budgeted(
        self,
        boxes: np.ndarray,
        pairs: dict[int, int],
        ambiguous: list[tuple[float, int, int]],
        recent: list,
        budget: int,
        unlimited: bool = False,
    ) -> np.ndarray:
        """needs_features under a budget: the detections near no track (new people) always; then the most ambiguous
        (the smallest IoU margins) for the budget's share 1 - ``refresh_share``; then, for the rest of it, the
        detections that overlap no other (their features feed the track's EMA) of the tracks whose features are the
        oldest (at least ``refresh_age`` frames old), so a crowd's tracks keep a recent look for the moment they cross;
        then more ambiguous ones."""
        need = np.ones(len(boxes), bool)
        near = {d: j for d, j in pairs.items()} | {d: j for _m, d, j in ambiguous}
        need[list(near)] = False
        order = [d for _m, d, _j in sorted(ambiguous)]
        first = order if unlimited else order[: max(0, budget - int(round(budget * self.o.refresh_share)))]
        chosen = set(first)
        over = box_iou(boxes, boxes)
        np.fill_diagonal(over, 0.0)
        clean = over.max(axis=1, initial=0.0) < self.o.ema_overlap
        age = {d: self.frame - getattr(recent[j], "feat_frame", -(10**9)) for d, j in near.items()}
        stale = sorted(
            (d for d in near if clean[d] and d not in chosen and age[d] >= self.o.refresh_age),
            key=lambda d: (-age[d], d),
        )
        for d in stale:
            if len(chosen) >= budget:
                break
            chosen.add(d)
        for d in order:
            if len(chosen) >= budget:
                break
            chosen.add(d)
        need[list(chosen)] = True
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
        reported: dict[int, np.ndarray] = {}
        if plain:  # one batched Kalman update; a track back from a gap is re-updated on its own (_observe)
            got = self._update_many(
                [self.tracks[i] for i in plain], b[[taken[i] for i in plain]], s[[taken[i] for i in plain]]
            )
            reported = dict(zip(plain, got))
        over = overlap.max(axis=1, initial=0.0)
        for i in order:
            t, d = self.tracks[i], taken[i]
            est = self._observe(t, b[d], float(s[d]), feats[d], float(over[d]), reported.get(i))
            box = b[d] if o.report_box == "detection" else est
            matched.append(Match(str(t.id), d, t.confirmed, box4(box)))
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
        for new in high:
            d = int(new)
            if d not in used and s[d] >= o.new_score:
                t = _Track(self.next_id, b[d], float(s[d]), feats[d], self.frame, o.initial_velocity_std)
                self.next_id += 1
                if o.n_init <= 1:
                    t.confirmed = True
                self.tracks.append(t)
                matched.append(Match(str(t.id), d, t.confirmed, box4(b[d])))
        self.frame += 1
        return FrameTracks(matched, ended)

    def _observe(
        self,
        t: _Track,
        box: np.ndarray,
        score: float,
        feat: np.ndarray | None,
        overlap: float,
        updated: np.ndarray | None = None,
    ) -> np.ndarray:
        """Take a detection into a track (`updated`: its reported box when the Kalman update was done in a batch);
        the reported box."""
        gap = self.frame - t.last_frame
        if updated is not None:
            est = updated  # the Kalman update was done in a batch
        elif self.o.reupdate and gap > 1:
            # OC-SORT's re-update: from the state at the last observation, through virtual observations
            t.mean, t.cov = t.snap_mean.copy(), t.snap_cov.copy()
            for k in range(1, gap):
                virtual = t.last_box + (box - t.last_box) * (k / gap)
                self._predict_one(t)
                self._update_kf(t, virtual, score)
            self._predict_one(t)
            est = self._update_kf(t, box, score)
        else:
            est = self._update_kf(t, box, score)
        t.snap_mean, t.snap_cov = t.mean.copy(), t.cov.copy()
        if feat is not None and overlap < self.o.ema_overlap:
            f = feat  # a unit row
            t.feat_frame = self.frame
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
        t.zs = [*t.zs[-3:], [float(self.frame), *(float(v) for v in z)]]
        if t.confirmed and [v[0] for v in t.zs] == [float(self.frame - k) for k in (3, 2, 1, 0)]:
            # the detector's jitter (_jitter_var): a confirmed track's four consecutive boxes
            z0, z1, z2, z3 = (np.asarray(v[1:]) for v in t.zs)
            size = np.abs(z3[[2, 3, 2, 3]]).clip(1e-6)
            lag = np.clip((z3 - 2 * z2 + z1) / size, -1.0, 1.0) * np.clip((z2 - 2 * z1 + z0) / size, -1.0, 1.0)
            self.jitter = [self.jitter[0] + 1.0, *(a + float(v) for a, v in zip(self.jitter[1:], lag))]
        if not t.confirmed and t.hits >= self.o.n_init:
            t.confirmed = True
        return est

    def live_ids(self) -> list[str]:
        """Ids of the tracks still alive (tentative or confirmed)."""
        return [str(t.id) for t in self.tracks]

    def state_dict(self) -> dict[str, Any]:
        """The whole tracker as JSON-able data (exact: arrays as raw bytes)."""
        return {
            "next_id": self.next_id,
            "frame": self.frame,
            "jitter": list(self.jitter),
            "tracks": [encode(t.state()) for t in self.tracks],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state_dict (same options)."""
        self.next_id = int(state["next_id"])
        self.frame = int(state["frame"])
        self.jitter = [float(v) for v in state.get("jitter", [0.0] * 5)]
        self.tracks = [_Track.from_state(decode(d)) for d in state["tracks"]]
