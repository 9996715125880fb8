"""Tests for reidkit.cluster: sparse Jaccard vs a literal dense implementation, DBSCAN labels."""

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn import metrics

import reidkit.cluster.pseudo as pseudo_mod
from reidkit.cluster import cluster_report, eps_by_rho, jaccard_distance, kmeans, pseudo_labels
from reidkit.errors import ReIDError


def dense_jaccard(x, k1, k2, include_self=False):
    """The paper's steps over a full N x N matrix (float64), self forced first in each list."""
    x = np.asarray(x, dtype=np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    n = len(x)
    d = 2 - 2 * x @ x.T
    d_rank = d.copy()
    np.fill_diagonal(d_rank, -np.inf)
    rank = np.argsort(d_rank, axis=1, kind="stable")
    k = k1 if include_self else k1 + 1
    kh = int(np.around(k1 / 2)) + 1

    def reciprocal(i, kk):
        fwd = rank[i, :kk]
        back = rank[fwd, :kk]
        return fwd[np.any(back == i, axis=1)]

    v = np.zeros((n, n))
    for i in range(n):
        r = reciprocal(i, k)
        e = r.copy()
        for c in r:
            rc = reciprocal(c, kh)
            if len(np.intersect1d(rc, r)) > 2 / 3 * len(rc):
                e = np.append(e, rc)
        e = np.unique(e)
        w = np.exp(-d[i, e])
        v[i, e] = w / w.sum()
    if k2 > 1:
        v = np.stack([v[rank[i, :k2]].mean(0) for i in range(n)])
    jac = np.zeros((n, n))
    for i in range(n):
        jac[i] = 1 - np.minimum(v[i], v).sum(1) / np.maximum(v[i], v).sum(1)
    return jac


def to_dense(s):
    coo = s.tocoo()
    out = np.ones(s.shape)
    out[coo.row, coo.col] = coo.data
    return out


def blobs(n, ids, dim, noise, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((ids, dim))
    lab = rng.integers(0, ids, n)
    return centres[lab] + noise * rng.standard_normal((n, dim)), lab


@pytest.mark.parametrize(
    "n,k1,k2,include_self,dim,search",
    [
        (150, 20, 6, False, 32, "faiss"),
        (200, 30, 6, True, 16, "torch"),
        (120, 10, 1, False, 8, "faiss"),
        (60, 30, 6, False, 64, "torch"),
        (25, 30, 6, True, 4, "faiss"),  # fewer items than k1: every list is all items
    ],
)
def test_jaccard_matches_dense(n, k1, k2, include_self, dim, search):
    x, _ = blobs(n, 10, dim, 0.8, seed=n)
    s = jaccard_distance(x, k1, k2, search=search, include_self_in_k1=include_self)
    ref = dense_jaccard(x, k1, k2, include_self)
    assert isinstance(s, sp.csr_matrix) and s.dtype == np.float32
    np.testing.assert_allclose(to_dense(s), ref, atol=1e-5)
    assert s.nnz == int((ref < 1).sum())  # exactly the overlapping pairs are stored
    assert (s.diagonal() == 0).all() and (s.tocoo().row == s.tocoo().col).sum() == n


def test_include_self_changes_the_lists():
    x, _ = blobs(120, 6, 8, 1.0, seed=3)
    a = to_dense(jaccard_distance(x, 10, 4, include_self_in_k1=False))
    b = to_dense(jaccard_distance(x, 10, 4, include_self_in_k1=True))
    np.testing.assert_allclose(b, dense_jaccard(x, 10, 4, include_self=True), atol=1e-5)
    assert np.abs(a - b).max() > 1e-3


def test_jaccard_duplicates_and_errors():
    x, _ = blobs(60, 4, 8, 0.5, seed=1)
    x[1] = x[0]  # an exact duplicate: self must still come first in its own list
    s = jaccard_distance(x, 10, 3)
    np.testing.assert_allclose(to_dense(s), dense_jaccard(x, 10, 3), atol=1e-5)
    assert 1 in s[0].indices and s[0, 1] < 1e-6  # stored, although (nearly) zero
    with pytest.raises(ReIDError):
        jaccard_distance(x, k1=0)
    with pytest.raises(ReIDError):
        jaccard_distance(x, search="annoy")
    with pytest.raises(ReIDError):
        jaccard_distance(np.zeros((0, 4)))


def test_eps_by_rho_matches_direct():
    x, _ = blobs(300, 30, 16, 0.3, seed=2)
    s = jaccard_distance(x, 10, 3)
    dense = to_dense(s)
    upper = np.sort(dense[np.triu_indices(300, 1)])
    for rho in (1.6e-3, 0.05, 0.6):  # 0.6 reaches into the implicit 1.0s
        m = max(1, int(np.round(rho * len(upper))))
        assert eps_by_rho(s, rho) == pytest.approx(upper[:m].mean(), abs=1e-6)
    assert (upper < 1).sum() < 0.6 * len(upper)  # the 0.6 case really reaches the 1.0s


def test_streamed_rho_equals_full_matrix(monkeypatch):
    x, lab = blobs(300, 10, 16, 0.8, seed=4)
    full = jaccard_distance(x, 20, 6)
    eps_full = eps_by_rho(full, 2e-2)
    ref = pseudo_labels(None, eps=eps_full, dist=full)
    monkeypatch.setattr(pseudo_mod, "_SHRINK_SLACK", 0)  # exercise the shrinking path
    monkeypatch.setattr("reidkit.cluster.jaccard._TRIPLE_BUDGET", 2000)  # many row chunks
    got, eps = pseudo_labels(x, k1=20, rho=2e-2, return_eps=True)
    assert eps == pytest.approx(eps_full, abs=1e-6)
    np.testing.assert_array_equal(got, ref)


def test_pseudo_labels_recover_blobs_and_outlier_modes():
    x, lab = blobs(400, 8, 32, 0.35, seed=5)
    rng = np.random.default_rng(0)
    x = np.concatenate([x, 3 * rng.standard_normal((6, 32))])  # isolated points
    lab = np.concatenate([lab, -1 - np.arange(6)])
    drop = pseudo_labels(x, eps=0.6, k1=20, k2=6, outliers="drop")
    inl = lab >= 0
    assert metrics.adjusted_rand_score(lab[inl], drop[inl]) > 0.95
    out = drop < 0
    assert out.sum() >= 1
    c = int(drop.max()) + 1
    noise = pseudo_labels(x, eps=0.6, k1=20, k2=6, outliers="noise")
    np.testing.assert_array_equal(noise[~out], drop[~out])
    assert (noise[out] == c).all()
    single = pseudo_labels(x, eps=0.6, k1=20, k2=6, outliers="singleton")
    np.testing.assert_array_equal(single[~out], drop[~out])
    np.testing.assert_array_equal(single[out], c + np.arange(out.sum()))
    with pytest.raises(ReIDError):
        pseudo_labels(x, eps=0.6, outliers="keep")
    with pytest.raises(ReIDError):
        pseudo_labels(x, eps=-1.0)


def test_dbscan_sparse_zero_distances_are_neighbours():
    # three identical points at explicit distance 0 must form a cluster (min_samples=3);
    # a pair absent from the matrix is "beyond eps" even though sparse zeros read as 0.
    r = [0, 0, 1, 1, 2, 2, 3]
    c = [1, 2, 0, 2, 0, 1, 3]
    v = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    d = sp.csr_matrix((np.array(v, np.float32), (r, c)), shape=(5, 5))
    assert d.nnz == 7
    lab = pseudo_labels(None, eps=0.1, min_samples=3, dist=d)
    assert lab[0] == lab[1] == lab[2] >= 0
    assert lab[3] == -1 and lab[4] == -1


def test_cluster_report_against_sklearn():
    labels = np.array([0, 0, 1, 1, 1, -1, 2, 2, -1, 0])
    true = np.array([5, 5, 6, 6, 5, 7, 8, 8, 9, 6])
    rep = cluster_report(labels, true)
    assert rep["n_clusters"] == 3 and rep["n_outliers"] == 2
    assert rep["outlier_fraction"] == pytest.approx(0.2)
    single = np.array([0, 0, 1, 1, 1, 3, 2, 2, 4, 0])
    assert rep["nmi"] == pytest.approx(metrics.normalized_mutual_info_score(true, single))
    assert rep["ari"] == pytest.approx(metrics.adjusted_rand_score(true, single))
    assert rep["purity"] == pytest.approx((2 + 2 + 2) / 8)
    assert "nmi" not in cluster_report(labels)


def test_kmeans_helper():
    x, lab = blobs(200, 4, 8, 0.1, seed=6)
    cent, got = kmeans(x, 4, seed=0)
    assert cent.shape == (4, 8) and cent.dtype == np.float32
    assert metrics.adjusted_rand_score(lab, got) == pytest.approx(1.0)
    c2, g2 = kmeans(x, 4, seed=0)
    np.testing.assert_array_equal(got, g2)
    with pytest.raises(ReIDError):
        kmeans(x, 0)


def test_pseudo_labels_defaults_cluster_well_separated_identities():
    # issue 12 item 16: 300 well-separated identities x 12 images, the defaults only
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((300, 64))
    lab = np.repeat(np.arange(300), 12)
    x = centres[lab] + 0.3 * rng.standard_normal((3600, 64))
    got, eps = pseudo_labels(x, return_eps=True)
    assert eps == pseudo_mod.DEFAULT_EPS == 0.6
    assert cluster_report(got, lab)["ari"] > 0.95
    # the rho rule is still there, by name or by passing rho; on such data it picks a tiny eps
    small = x[:1200]
    by_name, eps_name = pseudo_labels(small, eps="rho", return_eps=True)
    by_rho, eps_rho = pseudo_labels(small, rho=1.6e-3, return_eps=True)
    assert eps_name == eps_rho < 0.1
    np.testing.assert_array_equal(by_name, by_rho)
    full = jaccard_distance(small, 30, 6)
    assert eps_name == pytest.approx(eps_by_rho(full, 1.6e-3), abs=1e-6)
    # a numeric eps ignores rho
    np.testing.assert_array_equal(pseudo_labels(small, eps=0.6, rho=0.5), pseudo_labels(small))
    with pytest.raises(ReIDError, match="eps.*'rho'"):
        pseudo_labels(small, eps="ssg")
    with pytest.raises(ReIDError, match="eps"):
        pseudo_labels(small, eps=0.0)


def test_cluster_round_is_a_pure_function_of_features():
    """Features in, a Round out: per-space DBSCAN, the outlier policies, contiguous ids, fixed eps."""
    import torch

    from reidkit.cluster.rounds import RoundSettings, cluster_round, relabel_round

    gen = torch.Generator().manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(3, 16, generator=gen), dim=1)
    x = centres.repeat_interleave(6, 0) + 0.02 * torch.randn(18, 16, generator=gen)
    feats = {"global": torch.nn.functional.normalize(x, dim=1)}
    s = RoundSettings(eps=0.5, k1=6, k2=3, min_samples=3, search="torch")
    rnd = cluster_round(feats, s, epoch=3, true_labels=np.repeat([1, 2, 3], 6))
    assert rnd.report["epoch"] == 3 and rnd.report["n_clusters"] == 3 and rnd.report["purity"] == 1.0
    assert sorted(set(rnd.labels.tolist())) == [0, 1, 2] and rnd.report["kept"] == 18
    assert cluster_round(feats, s).labels.tolist() == rnd.labels.tolist()  # no hidden state
    # the outlier policies across spaces: an outlier in any space is left out; ids stay contiguous
    spaces = {"global": np.array([0, 0, 2, 2, 5, 5, -1]), "upper": np.array([0, 0, -1, 1, 1, 1, 1])}
    train, keep = relabel_round(spaces, "drop")
    assert train.tolist() == [0, 0, -1, 1, 2, 2, -1] and keep.sum() == 5
    assert relabel_round(spaces, "noise")[0].tolist() == [0, 0, 1, 1, 2, 2, 3]
    assert relabel_round(spaces, "singleton")[0].tolist() == [0, 0, 1, 1, 2, 2, 3]
    two = {"global": np.array([0, -1, -1, 1])}
    assert relabel_round(two, "singleton")[0].tolist() == [0, 2, 3, 1]
    assert relabel_round(two, "noise")[0].tolist() == [0, 2, 2, 1]
    # the rho rule once, then the fixed eps of that space
    rho = RoundSettings(eps=None, rho=0.05, k1=6, k2=3, min_samples=3, search="torch")
    first = cluster_round(feats, rho)
    again = cluster_round(feats, rho, fixed_eps={"global": 0.01})
    assert first.eps["global"] != 0.01 and again.eps["global"] == 0.01
