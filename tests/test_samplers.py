from collections import Counter

import numpy as np
import pytest

from reidkit.data.samplers import CameraBalancedPKSampler, DatasetBalancedPKSampler, PKSampler
from reidkit.errors import ReIDError


def _labels(counts):
    """Labels array with counts[i] images of identity i (identities interleaved)."""
    labels = np.concatenate([np.full(c, i) for i, c in enumerate(counts)])
    return np.random.default_rng(5).permutation(labels)


def _check_pk(batch, labels, p, k):
    assert len(batch) == p * k
    per_id = Counter(labels[batch].tolist())
    assert len(per_id) == p
    assert set(per_id.values()) == {k}
    # the K images of one identity are consecutive in the batch
    for j in range(p):
        assert len(set(labels[batch[j * k : (j + 1) * k]].tolist())) == 1


def test_batches_have_p_ids_with_k_images_and_small_ids_use_replacement():
    counts = [1, 2, 3] + [4, 5, 9, 12] * 6
    labels = _labels(counts)
    s = PKSampler(labels, p=6, k=4, seed=1)
    batches = list(s)
    # default length: sum max(n, K) // K // P
    assert len(s) == len(batches) == sum(max(c, 4) // 4 for c in counts) // 6
    small_seen = False
    for b in batches:
        _check_pk(b, labels, 6, 4)
        for j in range(6):
            group = b[j * 4 : (j + 1) * 4]
            n = counts[labels[group[0]]]
            if n < 4:
                small_seen = True
                # with replacement: repeats, yet every image of the identity appears
                assert len(set(group)) == n
            else:
                assert len(set(group)) == 4
    assert small_seen


def test_epoch_mostly_covers_images_once():
    labels = _labels([8] * 40)
    s = PKSampler(labels, p=8, k=4)
    flat = [i for b in s for i in b]
    assert len(flat) == 320
    assert len(set(flat)) >= 0.9 * 320


def test_deterministic_and_epoch_and_seed_change_order():
    labels = _labels([6] * 30)
    a, b = PKSampler(labels, p=5, k=3, seed=7), PKSampler(labels, p=5, k=3, seed=7)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(PKSampler(labels, p=5, k=3, seed=8)) != first


def test_explicit_epoch_batches_spans_several_passes():
    labels = _labels([4] * 10)
    s = PKSampler(labels, p=5, k=4, epoch_batches=7)
    batches = list(s)
    assert len(s) == len(batches) == 7
    for b in batches:
        _check_pk(b, labels, 5, 4)


def test_state_dict_resume_continues_identically():
    labels = _labels([5, 7, 4, 9] * 8)
    ref = PKSampler(labels, p=4, k=4, seed=3)
    ref.set_epoch(2)
    full = list(ref)
    run = PKSampler(labels, p=4, k=4, seed=3)
    run.set_epoch(2)
    it = iter(run)
    got = [next(it) for _ in range(3)]
    state = run.state_dict()
    assert state["epoch"] == 2 and state["position"] == 3
    resumed = PKSampler(labels, p=4, k=4, seed=3)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # a trainer re-announcing the same epoch must not rewind it
    assert got + list(resumed) == full
    # after the epoch the next one starts at its beginning
    resumed.set_epoch(3)
    ref.set_epoch(3)
    assert list(resumed) == list(ref)


def test_load_state_dict_rejects_other_seed():
    labels = _labels([4] * 8)
    state = PKSampler(labels, p=2, k=4, seed=1).state_dict()
    with pytest.raises(ReIDError, match="seed"):
        PKSampler(labels, p=2, k=4, seed=2).load_state_dict(state)


def test_distributed_shards_are_disjoint_and_equal_length():
    # 48 identities with exactly K images: one pass, every image exactly once
    labels = _labels([4] * 48)
    world = 3
    shards = [list(PKSampler(labels, p=4, k=4, seed=0, rank=r, world_size=world)) for r in range(world)]
    lengths = {len(s) for s in shards}
    assert lengths == {48 // 4 // world}
    flat = [i for s in shards for b in s for i in b]
    assert len(flat) == len(set(flat)) == 48 * 4
    # rank r holds global batches r, r + W, ...
    glob = PKSampler(labels, p=4, k=4, seed=0, world_size=world).global_batches()
    for r in range(world):
        assert shards[r] == glob[r::world]


def test_distributed_explicit_length_same_on_every_rank():
    labels = _labels([3, 6, 10] * 7)
    lens = [len(list(PKSampler(labels, p=4, k=2, epoch_batches=5, rank=r, world_size=2))) for r in range(2)]
    assert lens == [5, 5]


def test_negative_labels_are_never_sampled():
    labels = _labels([4] * 12)
    labels[:5] = -1
    s = PKSampler(labels, p=3, k=2)
    assert all(labels[i] >= 0 for b in s for i in b)


def test_too_few_identities_is_a_user_error():
    with pytest.raises(ReIDError, match="p=8"):
        PKSampler(_labels([4] * 5), p=8, k=4)
    with pytest.raises(ReIDError, match="labels"):
        PKSampler(np.zeros((3, 2), dtype=int))


def test_camera_balanced_spreads_cameras():
    # every identity: 4 images in each of 4 cameras
    n_ids, k = 16, 4
    labels = np.repeat(np.arange(n_ids), 16)
    camids = np.tile(np.repeat(np.arange(4), 4), n_ids)
    order = np.random.default_rng(0).permutation(len(labels))
    labels, camids = labels[order], camids[order]

    def distinct(sampler):
        groups = [b[j : j + k] for b in sampler for j in range(0, len(b), k)]
        return [len(set(camids[g].tolist())) for g in groups]

    balanced = distinct(CameraBalancedPKSampler(labels, camids, p=4, k=k, seed=2))
    plain = distinct(PKSampler(labels, p=4, k=k, seed=2))
    assert set(balanced) == {4}
    assert np.mean(plain) < 3.5
    for b in CameraBalancedPKSampler(labels, camids, p=4, k=k):
        _check_pk(b, labels, 4, k)


def test_camera_balanced_rejects_mismatched_camids():
    with pytest.raises(ReIDError, match="camids"):
        CameraBalancedPKSampler(_labels([4] * 4), [0, 1], p=2, k=2)


def test_dataset_balanced_equal_and_proportional():
    labels = np.repeat(np.arange(40), 4)
    dataset_ids = (labels >= 30).astype(int)  # 30 identities in set 0, 10 in set 1
    eq = DatasetBalancedPKSampler(labels, dataset_ids, p=8, k=4, mode="equal", seed=1)
    prop = DatasetBalancedPKSampler(labels, dataset_ids, p=8, k=4, mode="proportional", seed=1)
    assert eq.quota.tolist() == [4, 4] and prop.quota.tolist() == [6, 2]
    for sampler, want in ((eq, [4, 4]), (prop, [6, 2])):
        batches = list(sampler)
        assert len(batches) == len(sampler) > 0
        for b in batches:
            _check_pk(b, labels, 8, 4)
            ids = set(labels[b].tolist())
            assert [sum(dataset_ids[labels == i][0] == d for i in ids) for d in (0, 1)] == want
    with pytest.raises(ReIDError, match="dataset_ids"):
        DatasetBalancedPKSampler(labels, np.arange(len(labels)) % 2, p=8, k=4)
