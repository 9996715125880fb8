"""Rank metrics: hand-computed cases, the per-query loop oracle, CUHK03 mode, distances."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_eval import market_like, reference_cuhk03_cmc, reference_evaluate_rank  # noqa: E402

from reidkit.errors import ReIDError  # noqa: E402
from reidkit.evaluation.distance import compute_distance, query_expansion  # noqa: E402
from reidkit.evaluation.metrics import evaluate_rank  # noqa: E402


def test_hand_computed_single_query():
    # gallery order by distance: g0 (pid 2), g1 (pid 1, cam 0 = junk), g2 (pid 1), g3 (pid 0), g4 (pid 1)
    d = np.array([[0.1, 0.2, 0.3, 0.4, 0.5]])
    g_pids = np.array([2, 1, 1, 0, 1])
    g_cams = np.array([1, 0, 1, 2, 2])
    r = evaluate_rank(d, [1], g_pids, [0], g_cams, max_rank=5)
    # junk removed -> ranked list: pid2, pid1, pid0, pid1 ; matches at ranks 2 and 4
    assert r["num_valid"] == 1
    assert r["mAP"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert r["mINP"] == pytest.approx(2 / 4)
    np.testing.assert_allclose(r["cmc"], [0, 1, 1, 1, 1])


def test_query_with_only_same_camera_matches_is_skipped():
    d = np.array([[0.1, 0.2, 0.3], [0.3, 0.2, 0.1]])
    g_pids = np.array([1, 2, 0])
    g_cams = np.array([0, 1, 1])
    # query 0 (pid 1, cam 0): its only match g0 is same camera -> skipped
    # query 1 (pid 2, cam 0): ranked g2 (pid 0), g1 (pid 2) -> AP 1/2, rank 2
    r = evaluate_rank(d, [1, 2], g_pids, [0, 0], g_cams, max_rank=3)
    assert r["num_valid"] == 1
    assert r["mAP"] == pytest.approx(0.5)
    assert r["mINP"] == pytest.approx(0.5)
    np.testing.assert_allclose(r["cmc"], [0, 1, 1])


def test_ties_broken_by_gallery_index():
    # all distances equal: stable order = gallery index order
    d = np.zeros((1, 4))
    g_pids = np.array([0, 1, 0, 1])
    r = evaluate_rank(d, [1], g_pids, [0], [1, 1, 1, 1], max_rank=4)
    assert r["mAP"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    np.testing.assert_allclose(r["cmc"], [0, 1, 1, 1])
    # the match now has the lower index among the tied pair -> first
    r = evaluate_rank(np.array([[0.5, 0.5, 0.1]]), [1], [1, 0, 0], [0], [1, 1, 1], max_rank=3)
    np.testing.assert_allclose(r["cmc"], [0, 1, 1])
    assert r["mAP"] == pytest.approx(0.5)


def test_max_rank_larger_than_gallery_is_padded():
    r = evaluate_rank(np.array([[0.2, 0.1]]), [1], [1, 0], [0], [1, 1], max_rank=6)
    np.testing.assert_allclose(r["cmc"], [0, 1, 1, 1, 1, 1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_equals_loop(seed):
    data = market_like(num_q=60, num_g=400, ids=25, cams=4, distractors=50, seed=seed)
    d = data[0].copy()
    if seed == 2:
        d = np.round(d * 20) / 20  # many exact ties
    ref = reference_evaluate_rank(d, *data[1:], max_rank=20)
    for chunk in (None, 7):
        fast = evaluate_rank(d, *data[1:], max_rank=20, chunk_size=chunk)
        assert fast["num_valid"] == ref["num_valid"]
        assert fast["mAP"] == pytest.approx(ref["mAP"], abs=1e-12)
        assert fast["mINP"] == pytest.approx(ref["mINP"], abs=1e-12)
        np.testing.assert_allclose(fast["cmc"], ref["cmc"], atol=1e-12)


def test_cuhk03_single_shot_hand_case():
    # one image per identity in the gallery: sampling cannot change anything
    d = np.array([[0.3, 0.1, 0.2], [0.1, 0.2, 0.3]])
    r = evaluate_rank(d, [1, 2], [1, 2, 3], [0, 0], [1, 1, 1], max_rank=3, cuhk03=True)
    # query 0: pid 1 at rank 3; query 1: pid 2 at rank 2
    np.testing.assert_allclose(r["cmc"], [0, 0.5, 1])


def test_cuhk03_matches_loop_reference():
    d, qp, gp, qc, gc = market_like(num_q=30, num_g=200, ids=15, cams=3, distractors=20, seed=3)
    fast = evaluate_rank(d, qp, gp, qc, gc, max_rank=10, cuhk03=True, seed=5)
    ref = reference_cuhk03_cmc(d, qp, gp, qc, gc, max_rank=10, seed=5)
    np.testing.assert_allclose(fast["cmc"], ref, atol=1e-12)
    # single-shot CMC is at least the multi-shot one's first-match... and AP is the full-list AP
    assert fast["mAP"] == pytest.approx(reference_evaluate_rank(d, qp, gp, qc, gc)["mAP"])


def test_errors():
    with pytest.raises(ReIDError):
        evaluate_rank(np.zeros((0, 3)), [], [1, 2, 3], [], [0, 0, 0])
    with pytest.raises(ReIDError):
        evaluate_rank(np.zeros((2, 3)), [1], [1, 2, 3], [0, 0], [0, 0, 0])
    with pytest.raises(ReIDError):  # no valid query at all
        evaluate_rank(np.zeros((1, 2)), [5], [1, 2], [0], [0, 0])
    with pytest.raises(ReIDError):  # NaN anywhere in a row
        evaluate_rank(np.array([[0.1, np.nan, 0.3]]), [1], [1, 0, 0], [0], [1, 1, 1])


@pytest.mark.parametrize("threads", [1, 3])
def test_threads_and_chunks_agree_with_loop(threads):
    data = market_like(num_q=50, num_g=300, ids=20, cams=3, distractors=30, seed=4)
    d = np.round(data[0] * 50) / 50  # ties
    ref = reference_evaluate_rank(d, *data[1:], max_rank=15)
    fast = evaluate_rank(d, *data[1:], max_rank=15, chunk_size=4, num_threads=threads)
    assert fast["mAP"] == pytest.approx(ref["mAP"], abs=1e-12)
    assert fast["mINP"] == pytest.approx(ref["mINP"], abs=1e-12)
    np.testing.assert_allclose(fast["cmc"], ref["cmc"], atol=1e-12)


def test_distances_against_numpy():
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(7, 5)).astype(np.float32), rng.normal(size=(11, 5)).astype(np.float32)
    eu = np.sqrt(((q[:, None] - g[None]) ** 2).sum(-1))
    np.testing.assert_allclose(compute_distance(q, g, "euclidean"), eu, atol=1e-4)
    np.testing.assert_allclose(compute_distance(q, g, "sqeuclidean"), eu**2, atol=1e-4)
    qn, gn = q / np.linalg.norm(q, axis=1, keepdims=True), g / np.linalg.norm(g, axis=1, keepdims=True)
    np.testing.assert_allclose(compute_distance(q, g, "cosine"), 1 - qn @ gn.T, atol=1e-5)
    for metric in ("euclidean", "cosine"):
        np.testing.assert_allclose(
            compute_distance(q, g, metric, chunk_size=3), compute_distance(q, g, metric, chunk_size=100), atol=1e-6
        )
    with pytest.raises(ReIDError):
        compute_distance(q, g, "manhattan")
    with pytest.raises(ReIDError):
        compute_distance(q, g[:, :3])


def test_query_expansion_average():
    q = torch.tensor([[1.0, 0.0]])
    g = torch.tensor([[0.9, 0.1], [0.0, 1.0], [0.8, 0.2]])
    out = query_expansion(q, g, k=2, normalize=False)
    expected = (q[0] + g[0] + g[2]) / 3
    torch.testing.assert_close(out[0], expected)
