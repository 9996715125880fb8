"""The options of the ``bytesort`` tracker (reidkit.video.trackers.bytesort), set with ``--tracker-option``."""

from __future__ import annotations

from dataclasses import dataclass

from reidkit.errors import OptionError

REPORT_BOX = ("auto", "detection", "filter")


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
    max_cosine_distance: float = 2.0  # a confirmed track never takes a detection farther than this in appearance
    # (2: no veto; an occluded person's crop shows the occluder, and a veto of 0.5 broke their track: scene B gt
    # HOTA 95.0 -> 99.9 on held-out seed 1 without it, benchmarks/bench_trackers.py)
    app_weight: float = 0.0  # fused cost: 1 - IoU + app_weight * (cosine distance - the best alternative's)
    app_abs_weight: float = 1.25  # fused cost: + app_abs_weight * (cosine distance - app_neutral)
    lone_pairs_free: bool = True  # the absolute term spares a pair with no rival in the IoU gate
    app_all_or_none: bool = True  # ... and the rivals of a pair whose appearance is not known
    refresh_share: float = 0.5  # under an embedding budget: its share spent on the tracks with the oldest features
    refresh_age: int = 5  # ... that many frames old at least
    refresh_unlimited: bool = True  # without a budget too: every ambiguous detection and every stale track's
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
    report_box: str = "auto"  # the box a match reports (the tracklet stores it): "detection", "filter" or "auto"

    def check(self) -> None:
        if self.report_box not in REPORT_BOX:
            raise OptionError(
                "tracker.bytesort.report_box", f"must be one of {', '.join(REPORT_BOX)}, got {self.report_box!r}"
            )
        if self.height_iou not in ("off", "tentative", "all"):
            raise OptionError("tracker.bytesort.height_iou", f"must be off, tentative or all, got {self.height_iou!r}")
        for name in ("max_age", "n_init", "delta_t", "recover_age", "refresh_age"):
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
            "refresh_share",
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
