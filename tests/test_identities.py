"""reidkit.cluster.identities: constrained clustering of tracklets into global identities, on
hand-built features and times (no model, no gallery)."""

from __future__ import annotations

import numpy as np
import pytest

from reidkit.cluster.identities import (
    Links,
    cluster_identities,
    impossible_pairs,
    load_links,
    rerank_distance,
    split_violations,
    violations,
)
from reidkit.errors import ReIDError


def _feats(people, noise=0.05, dim=16, seed=0):
    """One feature per tracklet: its person's direction plus noise."""
    rng = np.random.default_rng(seed)
    base = np.eye(dim)[: max(people) + 1] + 0.3
    f = base[people] + noise * rng.standard_normal((len(people), dim))
    return f / np.linalg.norm(f, axis=1, keepdims=True)


def _same_partition(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return ((a[:, None] == a[None]) == (b[:, None] == b[None])).all()


# three people walking cam1 -> cam2 (4-6 s later), a fourth only in cam2
PEOPLE = [0, 1, 2, 0, 1, 2, 3]
CAMS = ["cam1", "cam1", "cam1", "cam2", "cam2", "cam2", "cam2"]
T0 = [0.0, 10.0, 20.0, 9.0, 19.0, 29.0, 2.0]
T1 = [4.0, 14.0, 24.0, 12.0, 22.0, 32.0, 6.0]


def test_clusters_people_across_cameras():
    ids = cluster_identities(_feats(PEOPLE), CAMS, T0, T1, threshold=0.3)
    assert _same_partition(ids, PEOPLE)
    # numbered from 1 in order of first appearance: person 0 (t=0), person 3 (t=2), person 1, person 2
    assert ids.tolist() == [1, 3, 4, 1, 3, 4, 2]
    # deterministic: the same input gives the same ids
    assert ids.tolist() == cluster_identities(_feats(PEOPLE), CAMS, T0, T1, threshold=0.3).tolist()


@pytest.mark.parametrize("linkage", ["average", "complete"])
def test_same_camera_overlap_never_joins(linkage):
    # two identical-looking people in one camera at the same time, then one of them in cam2
    f = _feats([0, 0, 0], noise=0.0)
    cams, t0, t1 = ["cam1", "cam1", "cam2"], [0.0, 1.0, 10.0], [5.0, 6.0, 12.0]
    ids = cluster_identities(f, cams, t0, t1, threshold=0.9, linkage=linkage)
    assert ids[0] != ids[1]
    assert ids[2] in (ids[0], ids[1])
    assert violations(ids, impossible_pairs(cams, t0, t1)) == 0
    # one camera, one after the other: allowed
    ids = cluster_identities(f[:2], ["cam1", "cam1"], [0.0, 6.0], [5.0, 9.0], threshold=0.9, linkage=linkage)
    assert ids[0] == ids[1]


def test_links_and_max_gap():
    # lookalikes: cam1 at 0-4 s and cam2 at 5-8 s (1 s gap) cannot be one person if the walk takes >= 3 s
    f = _feats([0, 0], noise=0.0)
    cams, t0, t1 = ["cam1", "cam2"], [0.0, 5.0], [4.0, 8.0]
    assert cluster_identities(f, cams, t0, t1, threshold=0.3).tolist() == [1, 1]
    links = load_links({"links": [{"cameras": ["cam2", "cam1"], "min": 3, "max": 20}]})
    assert links.window("cam1", "cam2") == (3.0, 20.0) == links.window("cam2", "cam1")
    assert cluster_identities(f, cams, t0, t1, threshold=0.3, links=links).tolist() == [1, 2]
    # too long a gap for the window
    assert cluster_identities(f, cams, [0.0, 30.0], [4.0, 33.0], threshold=0.3, links=links).tolist() == [1, 2]
    assert cluster_identities(f, cams, [0.0, 10.0], [4.0, 13.0], threshold=0.3, links=links).tolist() == [1, 1]
    # a pair that is not listed is bounded only by max_gap
    cams3 = ["cam1", "cam3"]
    assert cluster_identities(f, cams3, [0.0, 5.0], [4.0, 8.0], threshold=0.3, links=links).tolist() == [1, 1]
    capped = load_links({"links": links.to_dict()["links"], "max_gap": 10})
    assert cluster_identities(f, cams3, [0.0, 30.0], [4.0, 33.0], threshold=0.3, links=capped).tolist() == [1, 2]
    # concurrent in two linked cameras: impossible
    bad = impossible_pairs(cams, [0.0, 1.0], [4.0, 3.0], links)
    assert bad[0, 1] and bad[1, 0] and not bad[0, 0]


def test_threshold_controls_merging():
    f = _feats(PEOPLE, noise=0.05)
    assert len(set(cluster_identities(f, CAMS, T0, T1, threshold=0.0).tolist())) == len(PEOPLE)
    # everyone merges into as few identities as the constraints allow: cam1's three never overlap,
    # so the impossible pairs are only cam2's 3 (t=2-6) with ... none: all one identity per camera order
    few = cluster_identities(f, CAMS, T0, T1, threshold=10.0)
    assert violations(few, impossible_pairs(CAMS, T0, T1)) == 0
    assert len(set(few.tolist())) < 4


def test_incremental_keeps_old_ids():
    f = _feats(PEOPLE)
    first = cluster_identities(f[:3], CAMS[:3], T0[:3], T1[:3], threshold=0.3)
    assert first.tolist() == [1, 2, 3]
    fixed = np.r_[first, -np.ones(4, np.int64)]
    ids = cluster_identities(f, CAMS, T0, T1, threshold=0.3, fixed=fixed, next_id=4)
    assert ids[:3].tolist() == [1, 2, 3]  # never renumbered
    assert ids[3:6].tolist() == [1, 2, 3]  # the new cam2 tracklets joined their people
    assert ids[6] == 4  # a new person gets the next id
    # two fixed identities never merge, even when they look alike
    same = _feats([0, 0], noise=0.0)
    ids = cluster_identities(same, ["cam1", "cam2"], [0, 10], [1, 11], threshold=0.9, fixed=[5, 9], next_id=10)
    assert ids.tolist() == [5, 9]
    assert (
        cluster_identities(f, CAMS, T0, T1, threshold=0.3, fixed=fixed, next_id=4).tolist()
        == cluster_identities(f, CAMS, T0, T1, threshold=0.3, fixed=fixed, next_id=4).tolist()
    )


def test_split_of_a_violating_identity():
    # an identity kept from an earlier run holds two overlapping tracklets of cam1: the later one leaves
    cams, t0, t1 = ["cam1", "cam1", "cam2"], [0.0, 2.0, 9.0], [5.0, 6.0, 12.0]
    bad = impossible_pairs(cams, t0, t1)
    lab = split_violations([7, 7, 7], bad, next_id=8)
    assert lab.tolist() == [7, 8, 7]
    assert violations(lab, bad) == 0
    ids = cluster_identities(_feats([0, 0, 0], noise=0.0), cams, t0, t1, fixed=[7, 7, 7], next_id=8)
    assert ids.tolist() == [7, 8, 7]


def test_rerank_distance_properties():
    f = _feats(PEOPLE, noise=0.05)
    d = rerank_distance(f, k1=3, k2=2)
    assert d.shape == (7, 7) and np.allclose(d, d.T) and np.allclose(np.diag(d), 0)
    lab = np.asarray(PEOPLE)
    same = (lab[:, None] == lab[None]) & ~np.eye(7, dtype=bool)
    assert d[same].max() < d[~same & ~np.eye(7, dtype=bool)].min()
    plain = rerank_distance(f, rerank=False)
    np.testing.assert_allclose(plain, np.clip(2 - 2 * f @ f.T, 0, None), atol=1e-12)
    assert rerank_distance(f[:2]).shape == (2, 2)


def test_bad_inputs(tmp_path):
    with pytest.raises(ReIDError, match="t_end >= t_start"):
        impossible_pairs(["a"], [2.0], [1.0])
    with pytest.raises(ReIDError, match="linkage"):
        cluster_identities(_feats([0]), ["a"], [0], [1], linkage="single")
    with pytest.raises(ReIDError, match=r"^threshold: "):
        cluster_identities(_feats([0]), ["a"], [0], [1], threshold=float("nan"))
    p = tmp_path / "links.yaml"
    p.write_text("links:\n  - {cameras: [cam1, cam2], min: 5, max: 2}\n")
    with pytest.raises(ReIDError, match=r"links.yaml: links\[0\]: min 5 > max 2"):
        load_links(p)
    p.write_text("link: []\n")
    with pytest.raises(ReIDError, match="unknown key"):
        load_links(p)
    with pytest.raises(ReIDError, match="cannot read"):
        load_links(tmp_path / "missing.yaml")
    assert load_links(None, max_gap=5) == Links({}, 5.0)
    assert cluster_identities(np.zeros((0, 4)), [], [], []).tolist() == []


@pytest.mark.parametrize("linkage", ["average", "complete"])
def test_a_merged_cluster_inherits_its_parts_constraints(linkage):
    # B and C are closest and merge first; A looks like B but overlaps C in cam1, so A stays apart
    f = np.array([[1.0, 0.30, 0.0], [1.0, 0.20, 0.0], [1.0, 0.19, 0.0]])
    cams, t0, t1 = ["cam1", "cam2", "cam1"], [0.0, 1.0, 3.0], [5.0, 2.0, 8.0]
    ids = cluster_identities(f, cams, t0, t1, threshold=1.0, linkage=linkage, rerank=False)
    assert ids[1] == ids[2] and ids[0] != ids[1]


def test_camera_debias_lets_one_person_across_cameras_beat_two_people_in_one_camera():
    from reidkit.video.identities import debias_cameras

    r = np.random.default_rng(0)
    people = r.normal(size=(4, 32))
    bias = r.normal(size=(2, 32)) * 1.1  # each camera shifts every feature it sees alike
    feats = np.stack([people[p] + bias[c] + r.normal(size=32) * 0.1 for c in (0, 1) for p in range(4)])
    cams = ["a"] * 4 + ["b"] * 4
    ids = [0, 1, 2, 3, 0, 1, 2, 3]

    def one_person_closest(f):
        f = f / np.linalg.norm(f, axis=1, keepdims=True)
        s = f @ f.T
        np.fill_diagonal(s, -np.inf)
        return all(ids[int(np.argmax(s[i]))] == ids[i] for i in range(8))

    assert not one_person_closest(feats)  # the camera bias wins: a same-camera stranger is nearest
    assert one_person_closest(debias_cameras(feats, cams, 0.5))
    assert np.allclose(debias_cameras(feats, cams, 0.0), feats / np.linalg.norm(feats, axis=1, keepdims=True))
    # clustered: the partition of the people, only with the bias taken off
    got = cluster_identities(debias_cameras(feats, cams, 0.5), cams, [0] * 4 + [10] * 4, [5] * 4 + [15] * 4)
    assert _same_partition(got, ids)
