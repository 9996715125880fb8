"""`reidkit watch` embeds the tracklets' feature samples while a camera waits for its next frame, so a commit
does not stall the frame loop with them (reidkit.video.watch.wait_frame, pipeline._Video.embed_missing); the
chunks are the ones the lazy commit-time embedding gives, and the best-K crops cost no feature at all."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from test_pipeline_video import FakeEmbedder, _flat

from reidkit.video.tracklets import SAMPLES, OpenTracklet

CROP = np.full((40, 16, 3), 128, np.uint8)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    from reidkit.data.scene import generate_scene
    from reidkit.video.ingest import prepare_jobs

    sc = generate_scene(
        tmp_path_factory.mktemp("idle") / "s", cams=1, ids=4, frames=60, size=(96, 128), fps=10, seed=5, speed=1.5
    )
    return prepare_jobs([str(v) for v in sc.videos], detections=[str(g) for g in sc.gt])[0]


def _observe(t: OpenTracklet, frames: range) -> None:
    for f in frames:
        t.observe(f, [10, 10, 30, 70], 1.0, None, CROP, 400, 400, 4, True)


def test_survival_says_how_many_halvings_a_sample_outlives():
    t = OpenTracklet("1")
    _observe(t, range(SAMPLES))  # SAMPLES samples, the next one halves them
    rank = {c["frame"]: t.survival(c) for c in t.samples}
    assert rank[0] == SAMPLES and rank[1] == 0 and rank[2] == 1 and rank[4] == 2 and rank[8] == 3
    for halvings in (1, 2):
        _observe(t, range(t.boxes[-1][0] + 1, t.boxes[-1][0] + 1 + t.stride * (SAMPLES // 2 + 1)))
        kept = {c["frame"] for c in t.samples if c["frame"] < SAMPLES}
        assert kept == {f for f, r in rank.items() if r >= halvings}, halvings


def test_the_best_crops_keep_no_crop_to_embed_and_only_samples_wait():
    t = OpenTracklet("1")
    _observe(t, range(30))
    assert t.best and all("crop" not in c and c["feat"] is None for c in t.best)
    assert {id(c) for c in t.missing()} == {id(c) for c in t.samples}
    with pytest.raises(ValueError, match="still to be computed"):
        t.to_state()  # a resume state cannot hold a crop: every sample's feature first


def _run(job, idle: bool, chunk: int = 20):
    """Chunks of _Video on the job's frames; `idle`: after every frame, embed the waiting samples IDLE_BATCH at a
    time until none is left (a camera with time between frames). Returns (chunks, crops embedded at commits)."""
    from reidkit.video.decode import iter_frames
    from reidkit.video.pipeline import Settings, _Video
    from reidkit.video.watch import IDLE_BATCH

    emb, store = FakeEmbedder(), FakeEmbedder()
    v = _Video(job, Settings(appearance="needed", embed_budget=2), emb, None, store, same_model=True)
    chunks, at_commit = [], 0
    for idx, frame in iter_frames(job.info.path):
        boxes, scores = job.detector(frame, idx)
        v.step(idx, frame, boxes, scores)
        v.next_frame = idx + 1
        while idle and v.embed_missing(IDLE_BATCH):
            pass
        if (idx + 1) % chunk == 0:
            before = store.crops
            chunks.append(v.chunk(False, chunk, idx, 0.0))
            at_commit += store.crops - before
    for tid in list(v.open):
        v._finish(tid)
    before = store.crops
    chunks.append(v.chunk(True, 0, idx, 0.0))
    return chunks, at_commit + store.crops - before


def test_samples_embedded_while_idle_give_the_same_chunks_and_commits_embed_nothing(job):
    lazy, lazy_at_commit = _run(job, idle=False)
    idle, idle_at_commit = _run(job, idle=True)
    assert sum(len(c.entries) for c in lazy) >= 3
    assert _flat(idle) == _flat(lazy)  # the same tracklets, features bit for bit
    assert [c.state for c in idle] == [c.state for c in lazy]  # and the same resume states
    assert lazy_at_commit > 0 and idle_at_commit == 0


def test_ended_tracklets_first_then_the_most_durable_samples(job):
    from reidkit.video.pipeline import Settings, _Video

    v = _Video(job, Settings(appearance="needed"), FakeEmbedder(), None)
    a, b = OpenTracklet("a"), OpenTracklet("b")
    _observe(a, range(5))
    _observe(b, range(5))
    v.open = {"a": a}
    v.pending = [b]
    order = v.missing()
    assert order[:5] == b.samples  # ended: all of them, in time order
    assert [c["frame"] for c in order[5:]] == [0, 4, 2, 1, 3]  # by halvings survived, then time
    assert v.embed_missing(3) == 3 and len(v.missing()) == 7 and all(c["feat"] is not None for c in b.samples[:3])


class _Source:
    """A LiveSource stand-in: frames handed over by the test; read(timeout=0) never waits."""

    def __init__(self) -> None:
        self.frames: list[object] = []
        self.waits: list[float | None] = []

    def read(self, timeout=None):
        if not self.frames:
            self.waits.append(timeout)
            return None
        return self.frames.pop(0)


def test_wait_frame_embeds_while_no_frame_waits_and_returns_a_waiting_frame_at_once():
    from reidkit.video.watch import wait_frame

    src, stop, calls = _Source(), threading.Event(), []

    def late(n: int) -> int:
        calls.append(n)
        if len(calls) == 3:
            src.frames.append("frame")  # the camera's next frame arrives while the third batch runs
        return n

    assert wait_frame(src, late, stop) == "frame" and len(calls) == 3
    calls.clear()
    src.frames.append("waiting")
    assert wait_frame(src, late, stop) == "waiting" and calls == []  # a waiting frame goes first
    src.waits.clear()
    assert wait_frame(src, lambda n: 0, stop, wait=0.01) is None and src.waits == [0, 0.01]  # nothing to embed: wait


class _Backlog:
    """A _Video stand-in with `waiting` feature samples still to embed."""

    def __init__(self, waiting: int) -> None:
        self.waiting, self.calls = waiting, []

    def missing(self):
        return [{}] * self.waiting

    def embed_missing(self, limit=None):
        n = min(self.waiting, limit)
        self.calls.append(n)
        self.waiting -= n
        return n


def test_a_busy_camera_spreads_its_waiting_samples_over_the_frames_before_the_commit():
    from reidkit.video.watch import spread_missing

    v = _Backlog(95)
    frames = 0
    for frame in range(100):  # 10 s to the commit at 10 frames/s, no idle time at all
        spread_missing(v, (100 - frame) / 10.0, 10.0)
        frames += 1
        if not v.waiting:
            break
    assert v.waiting == 0 and max(v.calls) == 1 and frames == 95  # one crop per frame, none left at the commit
    late = _Backlog(40)
    assert spread_missing(late, 0.05, 10.0) == 40  # the commit is due: all of them
    assert spread_missing(_Backlog(0), 5.0, 10.0) == 0
    v = _Backlog(30)
    spread_missing(v, 1.0, 10.0)
    assert v.calls == [3]  # 30 over the 10 frames left
