"""The k-reciprocal neighbourhood core against literal loop implementations of each step."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from reidkit.errors import ReIDError
from reidkit.neighbors import (
    exact_knn,
    expand_sets,
    gaussian_weights,
    k_reciprocal_encoding,
    knn_search,
    pair_values,
    query_expansion,
    reciprocal_sets,
    stable_smallest,
)


def _points(n=90, d=8, seed=0, ids=6):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(ids, d))
    return (centres[rng.integers(0, ids, n)] + 0.7 * rng.normal(size=(n, d))).astype(np.float32)


def _dense_sq(x):
    x = x.astype(np.float64)
    return ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)


# literal versions: one item at a time, plain Python sets


def literal_reciprocal(rank, i, k):
    return sorted(j for j in rank[i, :k] if i in rank[j, :k])


def literal_expanded(rank, i, k_main, k_half):
    r = literal_reciprocal(rank, i, k_main)
    out = set(r)
    for c in r:
        rc = literal_reciprocal(rank, c, k_half)
        if len(set(rc) & set(r)) > 2.0 / 3.0 * len(rc):
            out |= set(rc)
    return sorted(out)


def literal_v(dist, rank, k_main, k_half, k_qe):
    n = dist.shape[0]
    v = np.zeros((n, n))
    for i in range(n):
        e = literal_expanded(rank, i, k_main, k_half)
        w = np.exp(-dist[i, e])
        v[i, e] = w / w.sum()
    if k_qe > 1:
        v = np.stack([v[rank[i, :k_qe]].mean(0) for i in range(n)])
    return v


def test_stable_smallest_breaks_ties_by_index():
    block = np.array([[3.0, 1.0, 1.0, 0.0, 1.0, 5.0], [2.0, 2.0, 2.0, 2.0, 0.5, 2.0]])
    np.testing.assert_array_equal(stable_smallest(block, 3), [[3, 1, 2], [4, 0, 1]])
    rng = np.random.default_rng(0)
    b = rng.integers(0, 4, size=(20, 30)).astype(np.float32)  # many ties
    np.testing.assert_array_equal(stable_smallest(b, 7), np.argsort(b, axis=1, kind="stable")[:, :7])


@pytest.mark.parametrize("chunk", [7, 32, 4096])
def test_exact_knn_matches_brute_force(chunk):
    x = _points(n=120, d=6, seed=1)
    k = 11
    d2 = _dense_sq(x)
    nq = 30
    qg = np.empty((nq, 120 - nq), dtype=np.float32)
    got_d, got_i, rowmax = exact_knn(torch.from_numpy(x), k, chunk_size=chunk, qg_out=qg, num_query=nq)
    want_i = np.argsort(d2, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_allclose(got_d, np.take_along_axis(d2, want_i, 1), atol=1e-4)
    np.testing.assert_allclose(rowmax, d2.max(1), rtol=1e-5)
    np.testing.assert_allclose(qg, d2[:nq, nq:], atol=1e-4)
    with pytest.raises(ReIDError):
        exact_knn(torch.from_numpy(x), 121)


def test_exact_knn_equal_distances_rank_by_index():
    # points on a grid: many exactly equal distances (small integers are exact in float32)
    g = np.array([[i, j] for i in range(6) for j in range(6)], dtype=np.float32)
    d2, idx, _ = exact_knn(torch.from_numpy(g), 9, chunk_size=8)
    want = np.argsort(_dense_sq(g), axis=1, kind="stable")[:, :9]
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_array_equal(d2, np.take_along_axis(_dense_sq(g), want, 1))


@pytest.mark.parametrize("search", ["faiss", "torch", "exact"])
def test_knn_search_self_first_cosine(search):
    x = _points(n=80, d=10, seed=2)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[3] = x[0]  # duplicate: each must still come first in its own list
    sims, idx = knn_search(x, 9, search=search, device="cpu")
    cos = x.astype(np.float64) @ x.T.astype(np.float64)
    np.fill_diagonal(cos, np.inf)
    want = np.argsort(-cos, axis=1, kind="stable")[:, :9]
    assert (idx[:, 0] == np.arange(80)).all() and (sims[:, 0] == 1.0).all()
    others = [i for i in range(80) if i not in (0, 3)]
    # the duplicates 0 and 3 tie in every other row: compare with 3 read as 0
    np.testing.assert_array_equal(np.where(idx == 3, 0, idx)[others, 1:], np.where(want == 3, 0, want)[others, 1:])
    assert idx[0, 1] == 3 and idx[3, 1] == 0
    np.fill_diagonal(cos, 1.0)
    np.testing.assert_allclose(sims, np.take_along_axis(cos, idx, 1), atol=1e-5)
    with pytest.raises(ReIDError, match="search"):
        knn_search(x, 9, search="annoy")


def test_reciprocal_and_expanded_sets_match_literal():
    x = _points(n=70, d=5, seed=3)
    rank = np.argsort(_dense_sq(x), axis=1, kind="stable")
    k_main, k_half = 9, 5
    r = reciprocal_sets(rank[:, :k_main])
    h = reciprocal_sets(rank[:, :k_half])
    e = expand_sets(r, h, chunk=16)  # several row chunks
    grown = 0
    for i in range(70):
        assert r[i].indices.tolist() == literal_reciprocal(rank, i, k_main)
        assert h[i].indices.tolist() == literal_reciprocal(rank, i, k_half)
        want = literal_expanded(rank, i, k_main, k_half)
        assert e[i].indices.tolist() == want and (e[i].data == 1).all()
        grown += len(want) > len(literal_reciprocal(rank, i, k_main))
    assert grown > 0  # the 2/3 rule really added members somewhere


def test_gaussian_weights_and_query_expansion_literal():
    pattern = sp.csr_matrix(np.array([[1, 1, 0, 1], [0, 0, 0, 0], [1, 0, 1, 0], [0, 1, 1, 1]], dtype=np.int32))
    d = np.array([0.0, 0.5, 2.0, 0.1, 0.0, 0.3, 0.2, 0.0])  # CSR order; row 1 is empty
    v = gaussian_weights(pattern, d)
    want = np.zeros((4, 4))
    want[0, [0, 1, 3]] = np.exp(-np.array([0.0, 0.5, 2.0])) / np.exp(-np.array([0.0, 0.5, 2.0])).sum()
    want[2, [0, 2]] = np.exp(-np.array([0.1, 0.0])) / np.exp(-np.array([0.1, 0.0])).sum()
    want[3, [1, 2, 3]] = np.exp(-np.array([0.3, 0.2, 0.0])) / np.exp(-np.array([0.3, 0.2, 0.0])).sum()
    np.testing.assert_allclose(v.toarray(), want, rtol=1e-12)
    lists = np.array([[0, 2], [1, 0], [2, 3], [3, 0]])
    qe = query_expansion(v, lists)
    np.testing.assert_allclose(qe.toarray(), np.stack([want[lists[i]].mean(0) for i in range(4)]), rtol=1e-12)
    assert gaussian_weights(pattern, d, dtype=np.float32).dtype == np.float32


def test_pair_values_reads_lists_and_computes_the_rest():
    x = _points(n=40, d=4, seed=4)
    d2 = _dense_sq(x)
    idx = np.argsort(d2, axis=1, kind="stable")[:, :5]
    val = np.take_along_axis(d2, idx, 1)
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, 40, 300), rng.integers(0, 40, 300)
    asked = []

    def compute(r, c):
        asked.append(len(r))
        return d2[r, c]

    np.testing.assert_allclose(pair_values(rows, cols, idx, val, compute), d2[rows, cols])
    listed = np.array([c in idx[r] for r, c in zip(rows, cols)])
    assert sum(asked) == int((~listed).sum())  # only the pairs off the lists were computed


@pytest.mark.parametrize("k1,k2", [(8, 4), (5, 1), (12, 6)])
def test_encoding_matches_literal_v(k1, k2):
    x = _points(n=60, d=6, seed=k1)
    d2 = _dense_sq(x)
    dist = d2 / d2.max(1, keepdims=True)
    rank = np.argsort(dist, axis=1, kind="stable")
    k_main, k_half = k1 + 1, int(np.around(k1 / 2)) + 1
    lists = rank[:, : max(k_main, k2)]
    v = k_reciprocal_encoding(lists, k_main, k_half, k2, lambda r, c: dist[r, c])
    ref = literal_v(dist, rank, k_main, k_half, k2)
    np.testing.assert_allclose(v.toarray(), ref, atol=1e-12)
    np.testing.assert_allclose(np.asarray(v.sum(1)).ravel(), 1.0, atol=1e-12)


def test_exact_knn_torch_path_on_cpu_tensors():
    # the CUDA code path (torch top-k per block, merged lists), run on CPU tensors
    from reidkit.neighbors import _exact_pass_torch, _restable

    x = torch.from_numpy(_points(n=75, d=5, seed=7))
    sq = (x * x).sum(1)
    nq = 20
    qg = np.empty((nq, 55), dtype=np.float32)
    d, i, rowmax = _exact_pass_torch(x, sq, nq, 9, 16, qg)
    d, i = _restable(d, i)
    d2 = _dense_sq(x.numpy())
    want = np.argsort(d2, axis=1, kind="stable")[:, :9]
    np.testing.assert_array_equal(i.numpy(), want)
    np.testing.assert_allclose(d.numpy(), np.take_along_axis(d2, want, 1), atol=1e-4)
    np.testing.assert_allclose(rowmax.numpy(), d2.max(1), rtol=1e-5)
    np.testing.assert_allclose(qg, d2[:nq, nq:], atol=1e-4)


def test_pair_function_sqeuclidean_and_dot():
    from reidkit.neighbors import pair_function

    x = _points(n=30, d=7, seed=8)
    rows, cols = np.arange(30).repeat(30), np.tile(np.arange(30), 30)
    sq = pair_function(torch.from_numpy(x), "sqeuclidean")(rows, cols)
    np.testing.assert_allclose(sq.reshape(30, 30), _dense_sq(x), atol=1e-4)
    dots = pair_function(torch.from_numpy(x), "dot")(rows, cols)
    np.testing.assert_allclose(dots.reshape(30, 30), x.astype(np.float64) @ x.T.astype(np.float64), atol=1e-5)
    with pytest.raises(ReIDError):
        pair_function(torch.from_numpy(x), "cosine")
