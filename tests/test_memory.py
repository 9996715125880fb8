"""Tests for the contrastive memories and DEC against their formulas, written out by hand."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reidkit.errors import ReIDError
from reidkit.losses.dec import DECHead, dec_loss, student_t_assignment, target_distribution
from reidkit.losses.memory import ClusterMemory, HybridMemory, InstanceMemory, cluster_centroids


def norm(v):
    return v / v.norm()


def batch(b=12, d=8, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    f = F.normalize(torch.randn(b, d, generator=g), dim=1)
    y = torch.randint(0, c, (b,), generator=g)
    return f, y


def test_cluster_centroids_and_reset():
    f, y = batch()
    y[0] = -1  # an outlier is ignored
    mem = ClusterMemory(8, 1)
    mem.reset(f, y)
    for k in range(int(y.max()) + 1):
        torch.testing.assert_close(mem.features[k], norm(f[y == k].mean(0)))
    torch.testing.assert_close(cluster_centroids(f, y), mem.features)


def test_cluster_memory_mean_update_is_sequential_formula():
    f, y = batch()
    mem = ClusterMemory(8, 4, momentum=0.1)
    mem.reset(*batch(20, seed=1))
    ref = mem.features.clone()
    for x, k in zip(f, y):  # the original loop: M[y] <- normalise(m M[y] + (1 - m) f)
        ref[k] = norm(0.1 * ref[k] + 0.9 * x)
    mem.update(f, y)
    torch.testing.assert_close(mem.features, ref)


def test_cluster_memory_hard_update():
    f, y = batch()
    mem = ClusterMemory(8, 4, momentum=0.3, mode="hard")
    mem.reset(*batch(20, seed=1))
    ref = mem.features.clone()
    for k in y.unique():
        idx = torch.nonzero(y == k).ravel()
        sims = f[idx] @ ref[k]
        hard = f[idx[int(torch.argmin(sims))]]
        ref[k] = norm(0.3 * ref[k] + 0.7 * hard)
    mem.update(f, y)
    torch.testing.assert_close(mem.features, ref)


def test_cluster_memory_loss_and_update_in_backward():
    f, y = batch()
    mem = ClusterMemory(8, 4, temp=0.05)
    mem.reset(*batch(20, seed=1))
    before = mem.features.clone()
    feats = (3 * f).requires_grad_()  # unnormalised input: the memory normalises it
    loss = mem(feats, y)
    expect = F.cross_entropy(F.normalize(feats, dim=1) @ before.T / 0.05, y)
    torch.testing.assert_close(loss, expect)
    torch.testing.assert_close(mem.features, before)  # forward does not touch the memory
    loss.backward()
    g_ref = torch.autograd.grad(F.cross_entropy(F.normalize(feats, dim=1) @ before.T / 0.05, y), feats)[0]
    torch.testing.assert_close(feats.grad, g_ref)  # gradient against the pre-update entries
    after = ClusterMemory(8, 4)
    after.features = before.clone()
    after.update(f, y)
    torch.testing.assert_close(mem.features, after.features)


def test_two_forwards_one_backward_and_manual_mode():
    f, y = batch()
    mem = ClusterMemory(8, 4)
    mem.reset(*batch(20, seed=1))
    a = f.clone().requires_grad_()
    (mem(a, y) + mem(a.flip(0), y.flip(0))).backward()  # no in-place version error
    manual = ClusterMemory(8, 4, update_in_backward=False)
    manual.reset(*batch(20, seed=1))
    before = manual.features.clone()
    manual(f.clone().requires_grad_(), y).backward()
    torch.testing.assert_close(manual.features, before)
    with pytest.raises(ReIDError):
        manual(f, torch.full_like(y, -1))


def test_hybrid_memory_updates_and_loss_weighting():
    f, y = batch()
    mem = HybridMemory(8, 4, temp=0.05, momentum=0.1, weight=0.5)
    mem.reset(*batch(20, seed=1))
    assert mem.features.shape == (8, 8)
    ref = mem.features.clone()
    for k in y.unique():
        idx = torch.nonzero(y == k).ravel()
        hard = f[idx[int(torch.argmin(f[idx] @ ref[k]))]]
        ref[k] = norm(0.1 * ref[k] + 0.9 * hard)
        ref[4 + k] = norm(0.1 * ref[4 + k] + 0.9 * f[idx].mean(0))
    before = mem.features.clone()
    loss = mem(f.clone().requires_grad_(), y)
    logits = f @ before.T / 0.05
    ce_hard = F.cross_entropy(logits[:, :4], y)
    ce_mean = F.cross_entropy(logits[:, 4:], y)
    torch.testing.assert_close(loss, 0.5 * ce_hard + 0.5 * ce_mean)
    w = HybridMemory(8, 4, weight=0.3)
    w.features = before.clone()
    torch.testing.assert_close(w(f, y), 0.3 * ce_hard + 0.7 * ce_mean)
    loss.backward()  # update in backward
    torch.testing.assert_close(mem.features, ref)


def test_instance_memory():
    g = torch.Generator().manual_seed(2)
    bank = torch.randn(10, 6, generator=g)
    labels = np.array([0, 0, 1, 1, 1, -1, 2, 2, -1, 0])
    mem = InstanceMemory(6, 10, temp=0.05, momentum=0.2)
    mem.reset(bank, labels)
    assert mem.num_classes == 5  # 3 clusters + 2 singleton outliers
    assert mem.labels[5] != mem.labels[8] and mem.labels[5] >= 3
    nb = F.normalize(bank, dim=1)
    cents = torch.stack([nb[mem.labels == k].mean(0) for k in range(5)])
    torch.testing.assert_close(mem.centroids(), cents)
    f = F.normalize(torch.randn(4, 6, generator=g), dim=1)
    idx = torch.tensor([1, 5, 7, 1])
    loss = mem(f.clone().requires_grad_(), idx)
    torch.testing.assert_close(loss, F.cross_entropy(f @ cents.T / 0.05, mem.labels[idx]))
    ref = nb.clone()
    for x, i in zip(f, idx):
        ref[i] = norm(0.2 * ref[i] + 0.8 * x)
    loss.backward()
    torch.testing.assert_close(mem.features, ref)


def test_dec_formulas_and_gradient():
    g = torch.Generator().manual_seed(3)
    z = torch.randn(7, 3, generator=g)
    mu = torch.randn(4, 3, generator=g)
    for alpha in (1.0, 2.5):
        q = student_t_assignment(z, mu, alpha)
        num = torch.tensor(
            [
                [(1 + float(((z[i] - mu[j]) ** 2).sum()) / alpha) ** (-(alpha + 1) / 2) for j in range(4)]
                for i in range(7)
            ]
        )
        torch.testing.assert_close(q, num / num.sum(1, keepdim=True))
        torch.testing.assert_close(q.sum(1), torch.ones(7))
    q = student_t_assignment(z, mu)
    p = target_distribution(q)
    fj = q.sum(0)
    for i in range(7):
        w = [float(q[i, j] ** 2 / fj[j]) for j in range(4)]
        torch.testing.assert_close(p[i], torch.tensor(w) / sum(w))
    kl = sum(float(p[i, j] * np.log(p[i, j] / q[i, j])) for i in range(7) for j in range(4)) / 7
    assert float(dec_loss(q, p)) == pytest.approx(kl, rel=1e-5)
    torch.testing.assert_close(dec_loss(q, p), F.kl_div(q.log(), p, reduction="batchmean"))
    head = DECHead(4, 3)
    head.init_centres(z, seed=0)
    qh = head(z)
    dec_loss(qh, target_distribution(qh)).backward()
    assert head.centres.grad is not None and head.centres.grad.abs().sum() > 0
