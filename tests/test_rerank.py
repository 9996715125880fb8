"""re_ranking against a literal transcription of the paper's steps; features path against dense."""

import numpy as np
import pytest
import torch

from reidkit.errors import ReIDError
from reidkit.evaluation.distance import compute_distance
from reidkit.evaluation.rerank import re_ranking, re_ranking_features


def literal_re_ranking(q_g, q_q, g_g, k1, k2, lam):
    """Zhong et al. 2017, step by step with plain loops (stable sorts for determinism)."""
    nq = q_g.shape[0]
    dist = np.concatenate([np.concatenate([q_q, q_g], 1), np.concatenate([q_g.T, g_g], 1)], 0)
    dist = np.power(dist, 2).astype(np.float32)
    dist = np.transpose(dist / np.max(dist, axis=0))
    n = dist.shape[0]
    rank = np.argsort(dist, axis=1, kind="stable")

    def recip(i, k):
        fwd = rank[i, : k + 1]
        return np.array([j for j in fwd if i in rank[j, : k + 1]])

    V = np.zeros((n, n), dtype=np.float64)
    half = int(np.around(k1 / 2.0))
    for i in range(n):
        r = recip(i, k1)
        expansion = list(r)
        for c in r:
            rc = recip(c, half)
            if len(np.intersect1d(rc, r)) > 2.0 / 3 * len(rc):
                expansion.extend(rc)
        expansion = np.unique(expansion)
        w = np.exp(-dist[i, expansion].astype(np.float64))
        V[i, expansion] = w / w.sum()
    if k2 != 1:
        V = np.stack([V[rank[i, :k2]].mean(0) for i in range(n)])
    jac = np.zeros((nq, n))
    for i in range(nq):
        for j in range(n):
            m = np.minimum(V[i], V[j]).sum()
            jac[i, j] = 1 - m / (2 - m)
    final = jac * (1 - lam) + dist[:nq] * lam
    return final[:nq, nq:]


def _features(nq=12, ng=40, d=8, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, d))
    lab_q, lab_g = rng.integers(0, 8, nq), rng.integers(0, 8, ng)
    qf = centres[lab_q] + 0.6 * rng.normal(size=(nq, d))
    gf = centres[lab_g] + 0.6 * rng.normal(size=(ng, d))
    return torch.tensor(qf, dtype=torch.float32), torch.tensor(gf, dtype=torch.float32)


@pytest.mark.parametrize("k1,k2,lam", [(20, 6, 0.3), (5, 3, 0.5), (7, 1, 0.0)])
def test_re_ranking_matches_literal(k1, k2, lam):
    qf, gf = _features()
    qg, qq, gg = (compute_distance(a, b) for a, b in ((qf, gf), (qf, qf), (gf, gf)))
    ours = re_ranking(qg, qq, gg, k1=k1, k2=k2, lambda_value=lam)
    ref = literal_re_ranking(qg, qq, gg, k1, k2, lam)
    assert ours.shape == (12, 40)
    np.testing.assert_allclose(ours, ref, atol=1e-4)


@pytest.mark.parametrize("k1,k2", [(20, 6), (5, 3)])
def test_features_path_matches_dense(k1, k2):
    qf, gf = _features(nq=30, ng=90, d=16, seed=1)
    qg, qq, gg = (compute_distance(a, b) for a, b in ((qf, gf), (qf, qf), (gf, gf)))
    dense = re_ranking(qg, qq, gg, k1=k1, k2=k2, lambda_value=0.3)
    fast = re_ranking_features(qf, gf, k1=k1, k2=k2, lambda_value=0.3, chunk_size=17)
    np.testing.assert_allclose(fast, dense, atol=1e-4)


def test_features_path_small_chunks_many_compactions():
    # small k and chunks: each row group's candidate pool is compacted many times mid-pass
    qf, gf = _features(nq=60, ng=340, d=16, seed=2)
    qg, qq, gg = (compute_distance(a, b) for a, b in ((qf, gf), (qf, qf), (gf, gf)))
    dense = re_ranking(qg, qq, gg, k1=3, k2=2, lambda_value=0.3)
    for chunk in (16, 64, 1000):
        fast = re_ranking_features(qf, gf, k1=3, k2=2, lambda_value=0.3, chunk_size=chunk)
        np.testing.assert_allclose(fast, dense, atol=1e-4)


def test_lambda_one_is_normalised_original():
    qf, gf = _features()
    out = re_ranking_features(qf, gf, k1=5, k2=3, lambda_value=1.0)
    x = torch.cat([qf, gf])
    d2 = torch.cdist(x, x).pow(2)
    expected = (d2 / d2.max(1, keepdim=True).values)[:12, 12:]
    np.testing.assert_allclose(out, expected.numpy(), atol=1e-5)


def test_bad_inputs():
    qf, gf = _features()
    with pytest.raises(ReIDError):
        re_ranking_features(qf, gf[:, :4])
    with pytest.raises(ReIDError):
        re_ranking_features(qf, gf, k1=100)
    with pytest.raises(ReIDError):
        re_ranking(np.zeros((2, 3)), np.zeros((2, 2)), np.zeros((2, 2)))
