"""reidkit.video.pipeline without a gallery: chunks resume exactly from a stored state, `--appearance needed`
embeds fewer crops and keeps real features in tracklets, `--detect-every` interpolates boxes, the
shared embedder mixes cameras; reidkit.utils.threads."""

from __future__ import annotations

import json

import numpy as np
import pytest


class FakeEmbedder:
    """Deterministic 16-d features of a crop (its colour statistics), counting crops and remembering outputs."""

    dim = 16

    def __init__(self) -> None:
        self.crops = 0
        self.seen: list[np.ndarray] = []

    def embed_crops(self, crops):
        out = []
        for c in crops:
            c = c.astype(np.float32)
            h = c.shape[0]
            parts = [c[: h // 2], c[h // 2 :]]
            v = np.concatenate(
                [np.r_[p.mean(axis=(0, 1)), p.std(axis=(0, 1)), [p.shape[0], p.shape[1]]] for p in parts]
            )
            out.append(v / max(np.linalg.norm(v), 1e-12))
        self.crops += len(crops)
        f = np.asarray(out, np.float32).reshape(-1, self.dim)
        self.seen.extend(f)
        return f


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    from reidkit.data.scene import generate_scene
    from reidkit.video.ingest import prepare_jobs

    sc = generate_scene(
        tmp_path_factory.mktemp("pipe") / "s", cams=2, ids=3, frames=40, size=(96, 128), fps=10, seed=3, speed=1.5
    )
    jobs = prepare_jobs([str(v) for v in sc.videos], detections=[str(g) for g in sc.gt])
    return jobs


def _chunks(job, settings, resume=None, emb=None):
    from reidkit.video.pipeline import process_video

    return list(process_video(job, settings, emb or FakeEmbedder(), resume))


def _flat(chunks):
    return [
        (
            c.state["next_frame"],
            [e["tracklet"] for e in c.entries],
            [e["meta"]["boxes"] for e in c.entries],
            c.features.tolist(),
            sorted(c.thumbs),
        )
        for c in chunks
    ]


def test_resume_from_a_chunk_state_gives_the_same_chunks(video):
    from reidkit.video.pipeline import Settings

    s = Settings(chunk=7)
    full = _chunks(video[0], s)
    assert len(full) == 40 // 7 + 1 and full[-1].done and sum(len(c.entries) for c in full) >= 1
    for cut in (1, 3):
        state = json.loads(json.dumps(full[cut - 1].state))  # as stored in the gallery
        rest = _chunks(video[0], s, state)
        assert _flat(rest) == _flat(full[cut:])
    assert _chunks(video[0], s, full[-1].state) == []  # done: nothing to do


def test_appearance_needed_embeds_fewer_crops_real_features_only(video):
    from reidkit.video.pipeline import Settings, process_video
    from reidkit.video.tracklets import OpenTracklet

    all_e, need_e = FakeEmbedder(), FakeEmbedder()
    a = _chunks(video[0], Settings(chunk=100), emb=all_e)
    n = _chunks(video[0], Settings(chunk=100, appearance="needed"), emb=need_e)
    assert need_e.crops < all_e.crops
    ta = {e["tracklet"]: e["meta"]["boxes"] for c in a for e in c.entries}
    tn = {e["tracklet"]: e["meta"]["boxes"] for c in n for e in c.entries}
    assert ta == tn  # well separated people: the same tracks
    # every crop feature kept for a tracklet is a real one (its tracklet feature is a mean of real features)
    e5 = FakeEmbedder()
    gen = process_video(video[0], Settings(chunk=5, appearance="needed"), e5, None)
    first = next(gen)
    real = {tuple(np.round(f, 6)) for f in e5.seen}  # the samples' features are embedded when the chunk is cut
    for d in first.state["open"]:
        t = OpenTracklet.from_state(d)
        assert t.samples and not t.missing()
        for c in t.samples:
            assert tuple(np.round(c["feat"], 6)) in real
        # the best K: thumbnails only; a feature only where association embedded the crop anyway
        assert all(c["feat"] is None or tuple(np.round(c["feat"], 6)) in real for c in t.best)
    gen.close()


class _Track:
    """What the deep_sort tracker's needs_features reads of a DeepSort track: its features, frames since update,
    Kalman mean."""

    def __init__(self, box, feat):
        x1, y1, x2, y2 = box
        h = y2 - y1
        self.mean = np.array([(x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / h, h, 0, 0, 0, 0], float)
        self.features, self.time_since_update = [np.full(4, feat, np.float32)], 1


@pytest.mark.parametrize("budget, embedded", [(0, {0, 1, 3}), (2, {0, 1, 3}), (1, {1, 3})])
def test_embed_budget_embeds_the_most_ambiguous_and_always_the_new(video, budget, embedded):
    from reidkit.video.pipeline import Settings, _Video

    v = _Video(video[0], Settings(appearance="needed", embed_budget=budget, tracker="deep_sort"), FakeEmbedder(), None)
    # tracks A and B overlap; C stands alone
    v.tracker.ds.tracker.tracks = [
        _Track((0, 0, 20, 40), 1.0),
        _Track((12, 0, 32, 40), 2.0),
        _Track((100, 0, 120, 40), 3.0),
    ]
    boxes = np.array(
        [
            [0, 0, 20, 40],  # on A, overlapped by B: ambiguous, margin 0.75
            [14, 0, 34, 40],  # between A and B: ambiguous, margin 0.57 (the most ambiguous)
            [100, 0, 120, 40],  # on C alone: reuses C's feature
            [200, 0, 220, 40],
        ],  # near no track: new, always embedded
        np.float32,
    )
    out = v.tracker.reuse_features(boxes, budget)
    assert v.tracker.needs_features(boxes, np.ones(4), budget).tolist() == [f is None for f in out]
    assert {i for i, f in enumerate(out) if f is None} == embedded
    assert out[2][0] == 3.0
    if budget == 1:
        assert out[0][0] == 1.0  # over budget: the nearest track's feature, motion decides


def test_embed_budget_is_stored_and_checked(video):
    from reidkit.errors import ReIDError
    from reidkit.video.pipeline import Settings, check_settings

    assert Settings(appearance="needed", embed_budget=3).stored(video[0])["embed_budget"] == 3
    assert "embed_budget" not in Settings(appearance="needed").stored(video[0])  # today's states unchanged
    with pytest.raises(ReIDError, match=r"^embed_budget: must be >= 0"):
        check_settings(Settings(appearance="needed", embed_budget=-1))
    with pytest.raises(ReIDError, match=r"^embed_budget: applies to appearance 'needed' only"):
        check_settings(Settings(embed_budget=2))


def test_detect_every_interpolates_boxes(video):
    from reidkit.video.pipeline import Settings
    from reidkit.video.tracklets import OpenTracklet

    t = OpenTracklet("1")
    crop = np.zeros((8, 4, 3), np.uint8)
    t.observe(0, [0, 0, 10, 20], 1.0, np.ones(4), crop, 100, 100, 2, True, fill_step=1, fill_gap=3)
    t.observe(3, [3, 6, 13, 26], 0.7, np.ones(4), crop, 100, 100, 2, True, fill_step=1, fill_gap=3)
    t.observe(10, [3, 6, 13, 26], 0.7, np.ones(4), crop, 100, 100, 2, True, fill_step=1, fill_gap=3)  # lost: no fill
    assert [b[0] for b in t.boxes] == [0, 1, 2, 3, 10]
    assert t.boxes[1][1:5] == [1.0, 2.0, 11.0, 22.0] and t.boxes[1][5] == pytest.approx(0.9)
    emb = FakeEmbedder()
    every = _chunks(video[0], Settings(chunk=100, detect_every=2, n_init=2, min_len=2), emb=emb)
    full = _chunks(video[0], Settings(chunk=100, n_init=2, min_len=2))
    boxes = [b for c in every for e in c.entries for b in e["meta"]["boxes"]]
    frames = [b[0] for c in every for e in c.entries for b in e["meta"]["boxes"]]
    assert boxes and any((f - 1) % 2 for f in frames)  # filled frames between detections
    assert sum(len(e["meta"]["boxes"]) for c in full for e in c.entries) >= len(boxes) * 0.8


def test_shared_embedder_batches_mix_cameras(video):
    import threading

    from reidkit.video.pipeline import Settings, SharedEmbedder, Stats, process_video

    stats = Stats()
    shared = SharedEmbedder(FakeEmbedder(), stats, max_wait=0.05)
    out = {}

    def run(job):
        client = shared.client(job.camera)
        out[job.camera] = list(process_video(job, Settings(chunk=100), client, None))
        client.close()

    threads = [threading.Thread(target=run, args=(j,)) for j in video]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    shared.close()
    rep = stats.report()
    assert rep["mixed_camera_batches"] >= 1 and rep["embed_batches"] >= 1
    for job in video:  # the same chunks as alone
        assert _flat(out[job.camera]) == _flat(_chunks(job, Settings(chunk=100)))


def test_configure_threads(monkeypatch):
    import torch

    from reidkit.cli import main
    from reidkit.errors import ReIDError
    from reidkit.utils import threads

    before = torch.get_num_threads()
    for name in ("_configured", "_kept"):  # the module's record too: a later verb would follow what this sets
        monkeypatch.setattr(threads, name, getattr(threads, name))
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    try:
        assert threads.configure_threads(1) == 1
        import os

        assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and os.environ["OMP_NUM_THREADS"] == "1"
        assert torch.get_num_threads() == 1
        assert 1 <= threads.available_cores()
        with pytest.raises(ReIDError, match=r"^threads: "):
            threads.configure_threads(0)
        monkeypatch.setenv("REIDKIT_THREADS", "x")
        with pytest.raises(ReIDError, match="REIDKIT_THREADS"):
            threads.configure_threads()
    finally:
        torch.set_num_threads(before)
    monkeypatch.delenv("REIDKIT_THREADS")
    assert main(["--threads", "0", "scene", "/nonexistent/x"]) == 2


def test_configure_threads_keeps_an_embedding_programs_counts_on_every_call(monkeypatch):
    """A program that set torch's threads itself (this suite: 1) keeps them through every `reidkit` verb it runs
    in-process: the second cli.main used to set torch to the $OMP_NUM_THREADS the first one wrote (the
    training after `reidkit train` + `reidkit test` in test_engine.py then ran on 2 threads and learnt less)."""
    import torch

    from reidkit.utils import threads

    before = torch.get_num_threads()
    monkeypatch.setattr(threads, "_configured", None)
    monkeypatch.setattr(threads, "_kept", False)
    monkeypatch.delenv("REIDKIT_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # what the environment asks, not what the program set
    try:
        torch.set_num_threads(1)
        assert threads.configure_threads() == 3 and torch.get_num_threads() == 1
        assert threads.configure_threads() == 3 and torch.get_num_threads() == 1  # a second verb: still its own
        assert threads.configure_threads(2) == 2 and torch.get_num_threads() == 2  # asked for: set
    finally:
        torch.set_num_threads(before)


def test_ingest_options_one_object_keyword_changes_over_it(tmp_path):
    """ingest's settings are one frozen IngestOptions; keyword arguments change fields of it, an unknown one is
    refused, and a per-video list of the wrong length is an OptionError naming the parameter."""
    import dataclasses

    from reidkit.errors import OptionError
    from reidkit.video.ingest import IngestOptions, prepare_jobs

    base = IngestOptions(detector="hog", k=8)
    o = IngestOptions.of(base, k=2, every=3)
    assert (o.detector, o.k, o.every, base.k) == ("hog", 2, 3, 8)
    assert o.settings().k == 2 and o.settings().every == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.k = 5
    with pytest.raises(TypeError, match="unknown ingest options: kk"):
        IngestOptions.of(base, kk=1)
    with pytest.raises(OptionError, match=r"^min_len: must be >= 1, got 0$"):
        IngestOptions(min_len=0).settings()
    with pytest.raises(OptionError, match=r"^cameras: give one per video \(1 videos, 2 values\)$"):
        prepare_jobs([str(tmp_path / "a.mp4")], IngestOptions(cameras=["a", "b"]))


def test_a_resume_with_another_tracklet_feature_or_dtype_is_refused(video, caplog):
    """A video's stored settings record the tracklet feature (spread samples) and the engine its stored
    features come from (float / int8); a resume that would mix them is refused naming the setting and both
    values. A state of an older reidkit without those keys: read from its open tracklets where it has any
    (no samples: the mean of the best K), else resumed with a warning."""
    import logging
    from types import SimpleNamespace

    from reidkit.errors import ReIDError
    from reidkit.video.pipeline import Settings, resume_state
    from reidkit.video.tracklets import FEATURE_KIND

    s = Settings(chunk=7)
    full = _chunks(video[0], s)
    state = json.loads(json.dumps(next(c.state for c in full if c.state["open"])))  # with open tracklets
    assert state["settings"]["feature"] == FEATURE_KIND == "samples:16"
    assert state["settings"]["feature_dtype"] == "float"  # FakeEmbedder: no int8 model

    def resume(st, emb=None):
        return resume_state(SimpleNamespace(get_state=lambda key: st, db="g"), video[0], s, emb or FakeEmbedder())

    assert resume(state) == state
    int8 = SimpleNamespace(
        extractor=SimpleNamespace(engine="int8", model=None), embed_crops=None, dim=16
    )  # no float twin
    with pytest.raises(ReIDError, match=r"other settings: feature_dtype 'float' there, 'int8' now"):
        resume(state, int8)
    other = {**state, "settings": {**state["settings"], "feature": "best"}}
    with pytest.raises(ReIDError, match=r"other settings: feature 'best' there, 'samples:16' now"):
        resume(other)
    # an older reidkit's state: no keys; its open tracklets tell the kind
    old = {**state, "settings": {k: v for k, v in state["settings"].items() if not k.startswith("feature")}}
    with caplog.at_level(logging.WARNING, logger="reidkit.video.pipeline"):
        assert resume(old) == old  # samples in its tracklets: today's feature, float
    assert "does not record" not in caplog.text
    best4 = {**old, "open": [{k: v for k, v in t.items() if k not in ("samples", "stride")} for t in old["open"]]}
    with pytest.raises(ReIDError, match=r"other settings: feature 'best' there, 'samples:16' now"):
        resume(best4)
    with caplog.at_level(logging.WARNING, logger="reidkit.video.pipeline"):
        assert resume({**old, "open": []}) is not None  # nothing tells: accepted, with a warning
    assert "does not record feature (taken as 'samples:16'), feature_dtype (taken as 'float')" in caplog.text
