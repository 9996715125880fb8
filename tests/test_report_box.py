"""The box a tracker reports for a match (``Match.box``) is the box ``reidkit video`` stores: bytesort's
``report_box`` (the detection's, or its Kalman filter's estimate, nearer the person when boxes jitter), clipped to
the frame by reidkit.video.trackers.base.frame_box; the pipeline stores what any tracker reports."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest


def _walk(jitter: float, frames: int = 40, seed: int = 0, swing: float = 0.0):
    """A person walking right at 3 px a frame (true boxes; `swing`: the width swings by that many pixels with a
    10-frame gait), and the detections: the boxes with seeded jitter of `jitter` x the size on the centre and the
    log size (as the benchmark's gtn)."""
    rng = np.random.default_rng(seed)
    true, dets = [], []
    for f in range(frames):
        x, y, w, h = 20.0 + 3.0 * f, 40.0, 30.0 + swing * np.sin(2 * np.pi * f / 10), 80.0
        true.append([x, y, x + w, y + h])
        n = rng.normal(0.0, jitter, 4)
        cx, cy = x + w / 2 + n[0] * w, y + h / 2 + n[1] * h
        ww, hh = w * np.exp(n[2]), h * np.exp(n[3])
        dets.append([cx - ww / 2, cy - hh / 2, cx + ww / 2, cy + hh / 2])
    return np.asarray(true), np.asarray(dets)


def _reported(report_box: str, dets: np.ndarray) -> np.ndarray:
    from reidkit.video.trackers import build_tracker

    t = build_tracker("bytesort", {"report_box": report_box})
    out = []
    for d in dets:
        (m,) = t.update(d[None], np.ones(1), None).matched
        assert m.track_id == "1"
        out.append(m.box)
    return np.asarray(out)


def _mean_iou(a: np.ndarray, b: np.ndarray) -> float:
    from reidkit.video.detect import box_iou

    return float(np.mean(np.diag(box_iou(a, b))))


def test_bytesort_filter_boxes_are_nearer_the_person_than_jittered_detections():
    true, dets = _walk(0.05)
    assert np.array_equal(_reported("detection", dets), dets)  # the detection's box, as it was given
    filt = _reported("filter", dets)
    assert filt[0].tolist() == dets[0].tolist()  # a new track reports its first detection
    # past the first frames the filter's box is nearer the person than the jittered detection
    assert _mean_iou(filt[5:], true[5:]) > _mean_iou(dets[5:], true[5:]) + 0.03
    # exact boxes of a steady walk: the filter follows them
    true, exact = _walk(0.0)
    assert _mean_iou(_reported("filter", exact)[5:], true[5:]) > 0.95


def test_bytesort_auto_box_smooths_jitter_and_keeps_exact_boxes_of_a_swinging_gait():
    true, dets = _walk(0.05)
    assert _mean_iou(_reported("auto", dets)[5:], true[5:]) > _mean_iou(dets[5:], true[5:]) + 0.02
    # a gait's smooth swing of the width is motion, not jitter: exact boxes are reported (nearly) as they are,
    # where the filter lags behind the swing
    true, exact = _walk(0.0, swing=6.0)
    assert _mean_iou(_reported("auto", exact)[5:], true[5:]) > 0.995
    assert _mean_iou(_reported("filter", exact)[5:], true[5:]) < 0.98


def test_report_box_option_is_checked():
    from reidkit.errors import ReIDError
    from reidkit.video.trackers import build_tracker

    with pytest.raises(ReIDError, match="report_box"):
        build_tracker("bytesort", {"report_box": "kalman"})


def test_frame_box_clips_to_the_frame_and_falls_back_to_the_detection():
    from reidkit.video.trackers.base import frame_box

    assert frame_box((-5.5, 10.25, 50.0, 130.0), 100, 120, (0, 10, 50, 120)).tolist() == [0.0, 10.25, 50.0, 120.0]
    assert frame_box((150.0, 10.0, 170.0, 60.0), 100, 120, (90, 10, 100, 60)).tolist() == [90.0, 10.0, 100.0, 60.0]
    assert frame_box((np.nan, 10.0, 20.0, 60.0), 100, 120, (1, 2, 3, 4)).tolist() == [1.0, 2.0, 3.0, 4.0]


@dataclasses.dataclass
class _ShiftOptions:
    dx: float = 3.0


class _Shifted:
    """bytesort reporting every box `dx` pixels to the right (a tracker whose reported box is not the detection's)."""

    def __init__(self, options: _ShiftOptions) -> None:
        from reidkit.video.trackers import build_tracker

        self.dx, self.inner = float(options.dx), build_tracker("bytesort", {"report_box": "detection"})

    def needs_features(self, boxes, scores, budget=0):
        return self.inner.needs_features(boxes, scores, budget)

    def update(self, boxes, scores, features):
        from reidkit.video.trackers import FrameTracks

        res = self.inner.update(boxes, scores, features)
        moved = [m._replace(box=(m.box[0] + self.dx, m.box[1], m.box[2] + self.dx, m.box[3])) for m in res.matched]
        return FrameTracks(moved, res.ended)

    def live_ids(self):
        return self.inner.live_ids()

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state):
        self.inner.load_state_dict(state)


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    from reidkit.data.scene import generate_scene
    from reidkit.video.ingest import prepare_jobs
    from reidkit.video.trackers import register_tracker

    register_tracker("test-shifted", _Shifted, options=_ShiftOptions, overwrite=True)
    sc = generate_scene(
        tmp_path_factory.mktemp("rb") / "s", cams=1, ids=3, frames=30, size=(96, 128), fps=10, seed=3, speed=1.5
    )
    return prepare_jobs([str(v) for v in sc.videos], detections=[str(g) for g in sc.gt])


class _Colours:
    """A deterministic 6-d feature of a crop: its colour means and spreads."""

    dim = 6

    def embed_crops(self, crops):
        f = np.asarray([np.r_[c.mean(axis=(0, 1)), c.std(axis=(0, 1))] for c in crops], np.float32).reshape(-1, 6)
        return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def _boxes(job, settings, resume=None):
    from reidkit.video.pipeline import process_video

    chunks = list(process_video(job, settings, _Colours(), resume))
    return chunks, {e["tracklet"]: e["meta"]["boxes"] for c in chunks for e in c.entries}


def test_the_pipeline_stores_the_box_the_tracker_reports_clipped_to_the_frame(jobs):
    from reidkit.video.pipeline import Settings

    _, plain = _boxes(jobs[0], Settings(tracker="test-shifted", tracker_options=(("dx", 0.0),)))
    _, moved = _boxes(jobs[0], Settings(tracker="test-shifted", tracker_options=(("dx", 3.0),)))
    assert plain and list(plain) == list(moved)
    width = jobs[0].info.width
    for key in plain:
        for p, m in zip(plain[key], moved[key]):
            assert m[0] == p[0] and m[1] == min(p[1] + 3.0, width) and m[3] == min(p[3] + 3.0, width), (p, m)
            assert m[2] == p[2] and m[4] == p[4]


@pytest.mark.parametrize("report_box", ["detection", "filter"])
def test_resume_is_exact_with_either_reported_box(jobs, report_box):
    from reidkit.video.pipeline import Settings

    s = Settings(chunk=7, tracker_options=(("report_box", report_box),))
    full, boxes = _boxes(jobs[0], s)
    state = json.loads(json.dumps(full[1].state))  # as stored in the gallery
    rest, _ = _boxes(jobs[0], s, state)
    assert [[e["meta"]["boxes"] for e in c.entries] for c in rest] == [
        [e["meta"]["boxes"] for e in c.entries] for c in full[2:]
    ]
    assert sum(len(c.entries) for c in full[2:]) >= 1


def _row_of_people(refresh_share: float, budget: int = 2, frames: int = 20) -> list[int]:
    """Six people side by side, each box overlapping its neighbours' a little (every detection ambiguous, none
    overlapped enough to keep its crop from the feature EMA), walking together; features asked for under `budget`.
    Returns, per track at the end, the frames since its EMA last took a feature."""
    from reidkit.video.trackers import build_tracker

    rng = np.random.default_rng(0)
    looks = rng.normal(size=(6, 8)).astype(np.float32)
    t = build_tracker("bytesort", {"refresh_share": refresh_share})
    for f in range(frames):
        boxes = np.asarray([[10 + 16 * i + f, 20, 30 + 16 * i + f, 80] for i in range(6)], np.float32)
        need = t.needs_features(boxes, np.ones(6), budget)
        assert need.sum() <= max(budget, 6 if f == 0 else 0)  # the first frame's are all new people
        t.update(boxes, np.ones(6), [looks[i] if need[i] else None for i in range(6)])
    assert len(t.tracks) == 6
    return [t.frame - 1 - tr.feat_frame for tr in t.tracks]


def test_an_embedding_budget_keeps_every_track_s_look_recent_in_a_crowd():
    ages = _row_of_people(0.5)
    assert max(ages) <= 6, ages  # a budget of 2 for 6 people: each refreshed every few frames
    # spent only on the most ambiguous, the budget keeps going to the same boxes and some tracks keep their first look
    assert max(_row_of_people(0.0)) >= 15
