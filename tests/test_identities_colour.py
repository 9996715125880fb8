"""Identities by feature and colour, with short tracklets attached after the clustering: the colour
descriptor (reidkit.video.colour), its storage per tracklet (reidkit.video.tracklets), the fused
distance (reidkit.video.identities.with_colour) and ``seed_min`` (reidkit.cluster.identities)."""

from __future__ import annotations

import numpy as np
import pytest

from reidkit.cluster.identities import cluster_identities
from reidkit.errors import OptionError
from reidkit.video.colour import DIM, colour_descriptor
from reidkit.video.identities import with_colour
from reidkit.video.tracklets import OpenTracklet


def _person(top, bottom, h=96, w=32, seed=0):
    """An RGB crop: a grey background, a torso of colour `top` over legs of colour `bottom`, some noise."""
    r = np.random.default_rng(seed)
    c = np.full((h, w, 3), 110, np.float64)
    c[h // 6 : h // 2, w // 8 : 7 * w // 8] = top
    c[h // 2 : h - h // 12, w // 8 : 7 * w // 8] = bottom
    return np.clip(c + r.normal(0, 6, c.shape), 0, 255).astype(np.uint8)


RED, BLUE, GREEN = (200, 30, 30), (30, 40, 200), (30, 170, 40)


def test_colour_descriptor_keeps_which_colour_is_where():
    a = colour_descriptor(_person(RED, BLUE))
    assert a.shape == (DIM,) and a.dtype == np.float32 and np.isclose(np.linalg.norm(a), 1)
    again = colour_descriptor(_person(RED, BLUE, h=150, w=50, seed=1))  # the same clothes, nearer, other noise
    swapped = colour_descriptor(_person(BLUE, RED))  # the same colours on the other body parts
    other = colour_descriptor(_person(GREEN, BLUE))
    assert float(a @ again) > 0.95
    assert max(float(a @ swapped), float(a @ other)) < 0.8
    with pytest.raises(ValueError, match="H x W x 3"):
        colour_descriptor(np.zeros((10, 10), np.uint8))


def test_a_tracklet_keeps_the_colour_of_its_samples_across_a_resume():
    whole, first = OpenTracklet("1"), OpenTracklet("1")
    feat = np.ones(4, np.float32)

    def walk(t, frames):
        for f in frames:
            crop = _person(RED if f < 20 else GREEN, BLUE, seed=f)
            t.observe(f, [10, 10, 42, 106], 1.0, feat, crop, 400, 400, 4, True)

    walk(whole, range(40))
    walk(first, range(25))
    again = OpenTracklet.from_state(first.to_state())
    walk(again, range(25, 40))
    col = whole.colour()
    assert col is not None and np.array_equal(again.colour(), col)
    # the mean of the spread samples: half red-top crops, half green-top ones
    red, green = colour_descriptor(_person(RED, BLUE)), colour_descriptor(_person(GREEN, BLUE))
    assert float(col @ red) > 0.75 and float(col @ green) > 0.75
    assert OpenTracklet("empty").colour() is None


def test_fused_cosine_is_the_weighted_sum_and_needs_every_tracklet_described():
    r = np.random.default_rng(0)
    f, c = r.normal(size=(5, 12)), np.abs(r.normal(size=(5, DIM)))
    rows = [{"meta": {"colour": row.tolist()}} for row in c]
    fused, used = with_colour(f, rows, 0.3)
    assert used and fused.shape == (5, 12 + DIM)
    fu = f / np.linalg.norm(f, axis=1, keepdims=True)
    cu = c / np.linalg.norm(c, axis=1, keepdims=True)
    assert np.allclose(fused @ fused.T, 0.7 * fu @ fu.T + 0.3 * cu @ cu.T, atol=1e-5)
    plain, used = with_colour(f, rows[:4] + [{"meta": {}}], 0.3)  # one tracklet from an older ingest
    assert not used and np.allclose(plain, fu, atol=1e-6)
    assert not with_colour(f, rows, 0.0)[1]


def test_colour_separates_two_people_the_feature_confuses():
    # two people in two cameras; the model's features barely tell them apart, their clothes do
    r = np.random.default_rng(1)
    base = r.normal(size=16)
    feats = np.stack([base + 0.15 * r.normal(size=16) for _ in range(4)])
    crops = [_person(RED, BLUE, seed=1), _person(GREEN, BLUE, seed=2), _person(RED, BLUE, seed=3, h=120, w=40)]
    crops.append(_person(GREEN, BLUE, seed=4, h=120, w=40))
    rows = [{"meta": {"colour": colour_descriptor(x).tolist()}} for x in crops]
    cams, t0, t1 = ["cam1", "cam1", "cam2", "cam2"], [0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 15.0, 15.0]
    truth = np.array([1, 2, 1, 2])
    alone, _ = with_colour(feats, rows, 0.0)
    fused, _ = with_colour(feats, rows, 0.5)
    assert cluster_identities(fused, cams, t0, t1, threshold=0.8, rerank=False).tolist() == truth.tolist()
    assert len(set(cluster_identities(alone, cams, t0, t1, threshold=0.8, rerank=False).tolist())) < 4
    assert cluster_identities(alone, cams, t0, t1, threshold=0.8, rerank=False).tolist() != truth.tolist()


# two people seen in two cameras for 4 s each, and a 0.5 s fragment in cam1 that looks like nobody
F = np.array([[1.0, 0, 0], [0, 1.0, 0], [1.0, 0.05, 0], [0.05, 1.0, 0], [0.5, 0.35, 0.8]])
CAMS = ["cam1", "cam1", "cam2", "cam2", "cam1"]
T0 = [0.0, 10.0, 20.0, 30.0, 2.0]
T1 = [4.0, 14.0, 24.0, 34.0, 2.5]


def test_a_short_tracklet_joins_the_nearest_identity_it_can_belong_to():
    off = cluster_identities(F, CAMS, T0, T1, threshold=0.5, rerank=False)
    assert len(set(off.tolist())) == 3 and off[4] not in off[:4]  # the fragment is an identity of its own
    on = cluster_identities(F, CAMS, T0, T1, threshold=0.5, rerank=False, seed_min=1.0)
    assert on[0] == on[2] and on[1] == on[3] and on[0] != on[1]
    # nearer to person 0, but it overlaps person 0's cam1 tracklet (one person, one track at a time): person 1
    assert float(F[4] @ F[0]) > float(F[4] @ F[1]) and on[4] == on[1]
    assert len(set(on.tolist())) == 2
    # an earlier run's identities keep their ids; the fragment attaches to one of them
    fixed = np.array([7, 9, 7, 9, -1])
    inc = cluster_identities(F, CAMS, T0, T1, threshold=0.5, rerank=False, seed_min=1.0, fixed=fixed, next_id=10)
    assert inc.tolist() == [7, 9, 7, 9, 9]
    with pytest.raises(OptionError, match="seed_min"):
        cluster_identities(F, CAMS, T0, T1, seed_min=-1.0)
