"""The stored tracklet feature: the mean of crops spread evenly over the whole track (reidkit.video.tracklets),
not of the K best by quality, which bunch in one stretch of the track."""

from __future__ import annotations

import numpy as np

from reidkit.video.tracklets import SAMPLES, OpenTracklet

CROP = np.full((40, 16, 3), 128, np.uint8)


def _walk(t: OpenTracklet, frames: range, with_feat: bool = True) -> None:
    """A person who shrinks as they walk away (the best crops by quality are the first ones) and whose
    feature changes with the view: e_0 for frames 0-23, e_1 for 24-47, ..."""
    for f in frames:
        h = 200 - f  # larger boxes first
        feat = np.eye(8, dtype=np.float32)[f // 24]
        t.observe(f, [10, 10, 10 + h / 3, 10 + h], 1.0, feat if with_feat else None, CROP, 400, 400, 4, True)


def test_feature_is_the_mean_of_samples_spread_over_the_whole_track():
    t = OpenTracklet("1")
    _walk(t, range(96))
    frames = [c["frame"] for c in t.samples]
    assert len(frames) <= SAMPLES and frames[0] == 0 and frames[-1] >= 96 - t.stride
    assert len(set(np.diff(frames).tolist())) == 1  # an even stride
    f = t.feature()
    assert np.allclose(f[:4], 0.5, atol=0.05) and np.allclose(f[4:], 0)  # the four views count alike
    assert all(c["frame"] < 24 for c in t.best)  # the best K: all from the first view
    # the K-best mean would have been the first view only
    best = np.mean([c["feat"] for c in t.best], axis=0)
    assert best[0] == 1.0


def test_samples_survive_a_resume_and_are_embedded_late():
    whole, first = OpenTracklet("1"), OpenTracklet("1")
    _walk(whole, range(70))
    _walk(first, range(40))
    again = OpenTracklet.from_state(first.to_state())
    assert again.stride == first.stride and [c["frame"] for c in again.samples] == [c["frame"] for c in first.samples]
    _walk(again, range(40, 70))
    assert [c["frame"] for c in again.samples] == [c["frame"] for c in whole.samples]
    assert np.array_equal(again.feature(), whole.feature())
    late = OpenTracklet("2")
    _walk(late, range(30), with_feat=False)  # features computed when the chunk is cut
    todo = late.missing()
    assert {id(c) for c in late.samples} <= {id(c) for c in todo} and all("crop" in c for c in todo)
