"""reidkit.video.stitch: one camera's fragments of one person joined, other people left apart, on
hand-made tracklets (boxes in seconds, features); and through `assign_identities` on a real gallery."""

from __future__ import annotations

import numpy as np
import pytest

from reidkit.errors import ReIDError
from reidkit.video.stitch import Fragment, StitchParams, group_features, join_cost, stitch


def _walk(t0, t1, x0, vx, y=40.0, h=100.0, fps=10.0):
    """Boxes of a person walking right at vx px/s from x0 at t0, seen from t0 to t1."""
    ts = np.arange(round(t0 * fps), round(t1 * fps) + 1) / fps
    xs = x0 + vx * (ts - t0)
    return np.stack([ts, xs, np.full_like(ts, y), xs + h / 2.5, np.full_like(ts, y + h)], axis=1)


def _feat(i, noise=0.0, seed=0):
    f = np.eye(8)[i] + 0.5 + noise * np.random.default_rng(seed).standard_normal(8)
    return f / np.linalg.norm(f)


def test_two_fragments_of_one_person_are_joined():
    # one person walking at 50 px/s, lost for 0.8 s: the second fragment starts where the first was heading
    a = Fragment.of("cam1", _walk(0.0, 3.0, 10.0, 50.0), _feat(0))
    b = Fragment.of("cam1", _walk(3.8, 6.0, 10.0 + 50.0 * 3.8, 50.0), _feat(0, 0.02, 1))
    other_cam = Fragment.of("cam2", _walk(3.5, 6.0, 200.0, 50.0), _feat(0))  # another camera: never stitched
    assert stitch([a, b, other_cam]).tolist() == [0, 0, 2]
    assert stitch([b, a, other_cam]).tolist() == [1, 1, 2]  # the label is the chain's first fragment


def test_two_people_close_in_time_are_not_joined():
    a = Fragment.of("cam1", _walk(0.0, 3.0, 10.0, 50.0), _feat(0))
    # someone else appears 0.5 s later, far from where the first one was heading
    far = Fragment.of("cam1", _walk(3.5, 6.0, 400.0, -50.0), _feat(0))
    # someone else where the first was heading, but looking different
    other = Fragment.of("cam1", _walk(3.5, 6.0, 10.0 + 50.0 * 3.5, 50.0), _feat(1))
    # the same look and place, but overlapping in time (two people side by side)
    twin = Fragment.of("cam1", _walk(2.5, 5.0, 10.0 + 50.0 * 2.5, 50.0), _feat(0))
    # the same look, but a much bigger box (a person nearer the camera)
    near = Fragment.of("cam1", _walk(3.5, 6.0, 10.0 + 50.0 * 3.5, 50.0, h=200.0), _feat(0))
    for x in (far, other, twin, near):
        assert stitch([a, x]).tolist() == [0, 1]
    # a long gap: over max_gap, not joined; joined when the gap allowed is longer
    late = Fragment.of("cam1", _walk(6.0, 8.0, 10.0 + 50.0 * 6.0, 50.0), _feat(0))
    assert stitch([a, late]).tolist() == [0, 1]
    assert stitch([a, late], StitchParams(max_gap=4.0, max_motion=1.5)).tolist() == [0, 0]
    assert stitch([a, late], StitchParams(max_gap=0)).tolist() == [0, 1]  # off


def test_each_end_joins_once_best_first_and_chains():
    a = Fragment.of("cam1", _walk(0.0, 2.0, 10.0, 50.0), _feat(0))
    good = Fragment.of("cam1", _walk(2.5, 4.0, 10.0 + 50.0 * 2.5, 50.0), _feat(0))
    worse = Fragment.of("cam1", _walk(2.6, 4.0, 10.0 + 50.0 * 2.6 + 20.0, 50.0), _feat(0, 0.1, 3))
    third = Fragment.of("cam1", _walk(4.5, 6.0, 10.0 + 50.0 * 4.5, 50.0), _feat(0))
    p = StitchParams()
    assert join_cost(a, good, p) < join_cost(a, worse, p)
    labels = stitch([a, worse, good, third]).tolist()
    assert labels[0] == labels[2] == labels[3] == 0 and labels[1] == 1  # a -> good -> third; worse alone
    f = group_features(np.stack([_feat(0), _feat(1), _feat(2)]), [0, 0, 2], weights=[3, 1, 1])
    assert np.allclose(f[0], f[1]) and np.allclose(np.linalg.norm(f, axis=1), 1.0)
    m = 3 * _feat(0) + _feat(1)
    assert np.allclose(f[0], m / np.linalg.norm(m), atol=1e-6) and np.allclose(f[2], _feat(2), atol=1e-6)


def test_bad_input():
    with pytest.raises(ReIDError, match="cam1"):
        Fragment.of("cam1", np.zeros((0, 5)), _feat(0))
    with pytest.raises(ReIDError, match="stitch.max_gap"):
        stitch([], StitchParams(max_gap=float("nan")))
    with pytest.raises(ReIDError, match="stitch.max_scale"):
        stitch([], StitchParams(max_scale=0.5))
