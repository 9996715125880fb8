"""Heads: pooling, BNNeck, embedding head, margin classifiers (checked against their formulas)."""

import math

import pytest
import torch
from torch import nn

from reidkit.errors import ReIDError
from reidkit.models.heads import (
    ArcFace,
    AvgMaxPool,
    CircleClassifier,
    CosFace,
    EmbeddingHead,
    GeM,
    LinearClassifier,
    ReIDHead,
    build_classifier,
    build_pooling,
)


def _fmap(b=4, c=8, h=4, w=2):
    return torch.rand(b, c, h, w) + 0.1


# ----------------------------------------------------------------------------- pooling


def test_gem_p_learnable_and_init():
    gem = GeM()
    assert gem.p.requires_grad and gem.p.item() == pytest.approx(3.0)
    gem(_fmap()).sum().backward()
    assert gem.p.grad is not None and torch.isfinite(gem.p.grad).all()


def test_gem_p1_is_avg_and_large_p_approaches_max():
    x = _fmap().double()
    gem = GeM(p=1.0).double()
    assert torch.allclose(gem(x), x.mean(dim=(2, 3)), atol=1e-6)
    gem_big = GeM(p=200.0).double()
    mx = x.amax(dim=(2, 3))
    assert torch.allclose(gem_big(x), mx, rtol=0.02)
    # Monotone in p: moving away from the mean toward the max.
    assert (GeM(p=3.0).double()(x) > x.mean(dim=(2, 3))).all()


def test_avgmax_sum_and_concat():
    x = _fmap()
    avg, mx = x.mean(dim=(2, 3)), x.amax(dim=(2, 3))
    assert torch.allclose(AvgMaxPool("sum")(x), avg + mx)
    assert torch.allclose(AvgMaxPool("concat")(x), torch.cat([avg, mx], 1))
    assert build_pooling("avgmax")(x).shape == (4, 8)  # the registry's avgmax is the sum


def test_unknown_pooling_lists_valid():
    with pytest.raises(ReIDError, match="model.pooling.*avg, max, gem, avgmax"):
        build_pooling("median")


# ----------------------------------------------------------------------------- BNNeck


def test_bnneck_inits_and_classifier_without_bias():
    head = ReIDHead(8, 5)
    bn = head.neck.bn
    assert torch.equal(bn.weight.data, torch.ones(8)) and torch.equal(bn.bias.data, torch.zeros(8))
    assert not bn.bias.requires_grad
    assert isinstance(head.classifier, LinearClassifier) and head.classifier.fc.bias is None
    assert head.classifier.fc.weight.std().item() == pytest.approx(0.001, rel=0.5)


def test_bnneck_training_returns_feat_and_logits_and_bias_gets_no_grad():
    head = ReIDHead(8, 5).train()
    x = _fmap()
    out = head(x)
    assert set(out) == {"feat", "logits"}
    assert out["feat"].shape == (4, 8) and out["logits"].shape == (4, 5)
    assert torch.allclose(out["feat"], x.mean(dim=(2, 3)))  # pre-BN feature
    (out["logits"].sum() + out["feat"].sum()).backward()
    assert head.neck.bn.bias.grad is None
    assert head.neck.bn.weight.grad is not None
    assert torch.equal(head.neck.bn.bias.data, torch.zeros(8))


def test_bnneck_eval_after_and_before():
    x = _fmap()
    torch.manual_seed(1)
    after = ReIDHead(8, 5, neck_feat="after")
    after.train()(x)  # updates running stats so the two features differ
    after.eval()
    pooled = x.mean(dim=(2, 3))
    bn = after.neck.bn
    expected = (pooled - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)
    assert torch.allclose(after(x), expected, atol=1e-5)
    before = ReIDHead(8, 5, neck_feat="before").eval()
    assert torch.allclose(before(x), pooled)


def test_no_neck_and_embedding_head_shapes():
    x = _fmap()
    none = ReIDHead(8, 5, neck="none").train()
    out = none(x)
    assert torch.allclose(out["feat"], x.mean(dim=(2, 3))) and out["logits"].shape == (4, 5)
    assert none.eval()(x).shape == (4, 8)
    emb = ReIDHead(8, 5, neck="embedding", embedding_hidden=16, embedding_dim=6, dropout=0.2).train()
    out = emb(x)
    assert out["feat"].shape == (4, 6) and out["logits"].shape == (4, 5)
    assert emb.feat_dim == 6 and emb.eval()(x).shape == (4, 6)
    e = EmbeddingHead(8, 16, 6, dropout=0.5)
    assert isinstance(e.dropout, nn.Dropout) and e.fc1.out_features == 16 and e.fc2.out_features == 6


def test_unknown_neck_and_classifier():
    with pytest.raises(ReIDError, match="model.neck"):
        ReIDHead(8, 5, neck="bn")
    with pytest.raises(ReIDError, match="model.classifier.*linear, arcface, cosface, circle"):
        build_classifier("softmax", 8, 5)


# ----------------------------------------------------------------------------- margin classifiers


def _two_class(cls, **kw):
    clf = cls(2, 2, scale=30.0, margin=0.35, **kw)
    clf.weight.data = torch.eye(2)
    return clf


def test_arcface_against_formula():
    clf = _two_class(ArcFace)
    t = 0.6  # feature at angle 0.6 rad from class 0, pi/2 - 0.6 from class 1
    x = torch.tensor([[3 * math.cos(t), 3 * math.sin(t)]])
    got = clf(x, torch.tensor([0]))
    want = torch.tensor([[30 * math.cos(t + 0.35), 30 * math.sin(t)]])
    assert torch.allclose(got, want, atol=1e-4)
    got1 = clf(x, torch.tensor([1]))
    assert torch.allclose(got1, torch.tensor([[30 * math.cos(t), 30 * math.cos(math.pi / 2 - t + 0.35)]]), atol=1e-4)
    # Eval without labels: plain scaled cosine.
    assert torch.allclose(clf.eval()(x), torch.tensor([[30 * math.cos(t), 30 * math.sin(t)]]), atol=1e-4)


def test_arcface_threshold_and_easy_margin():
    x = torch.tensor([[-1.0, 0.1]])  # theta to class 0 ~ 3.04 rad > pi - m
    cos0 = -1.0 / math.sqrt(1.01)
    cos1 = 0.1 / math.sqrt(1.01)
    got = _two_class(ArcFace)(x, torch.tensor([0]))
    assert got[0, 0].item() == pytest.approx(30 * (cos0 - math.sin(0.35) * 0.35), abs=1e-4)
    assert got[0, 1].item() == pytest.approx(30 * cos1, abs=1e-4)
    easy = _two_class(ArcFace, easy_margin=True)(x, torch.tensor([0]))
    assert easy[0, 0].item() == pytest.approx(30 * cos0, abs=1e-4)  # cos <= 0: no margin


def test_arcface_training_needs_labels():
    with pytest.raises(ReIDError, match="labels"):
        _two_class(ArcFace).train()(torch.ones(1, 2))


def test_cosface_against_formula():
    clf = _two_class(CosFace)
    x = torch.tensor([[1.0, 2.0]])
    c0, c1 = 1 / math.sqrt(5), 2 / math.sqrt(5)
    got = clf(x, torch.tensor([1]))
    assert torch.allclose(got, torch.tensor([[30 * c0, 30 * (c1 - 0.35)]]), atol=1e-4)


def test_circle_against_formula_and_gradient_flows():
    clf = _two_class(CircleClassifier)
    x = torch.tensor([[1.0, 2.0]], requires_grad=True)
    c0, c1 = 1 / math.sqrt(5), 2 / math.sqrt(5)
    m, s = 0.35, 30.0
    got = clf(x, torch.tensor([1]))
    want_p = s * max(0.0, 1 + m - c1) * (c1 - (1 - m))
    want_n = s * max(0.0, c0 + m) * (c0 - m)
    assert torch.allclose(got, torch.tensor([[want_n, want_p]]), atol=1e-4)
    got.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_margin_classifier_in_head():
    head = ReIDHead(8, 5, classifier="arcface").train()
    out = head(_fmap(), torch.tensor([0, 1, 2, 3]))
    assert out["logits"].shape == (4, 5) and out["logits"].abs().max() <= 30.0 + 1e-4


# ----------------------------------------------------------------------------- forward_head


def test_forward_head_outputs_by_argument():
    """Every `which` against its formula, in eval and training mode, without touching neck_feat."""
    x = _fmap()
    torch.manual_seed(2)
    head = ReIDHead(8, 5, neck_feat="after")
    head.train()(x)  # non-trivial running statistics
    head.eval()
    pooled = x.mean(dim=(2, 3))
    bn = head.neck.bn
    after = (pooled - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    assert torch.allclose(head.forward_head(x, "pooled"), pooled)
    assert torch.allclose(head.forward_head(x, "before"), pooled)
    assert torch.allclose(head.forward_head(x, "after"), after, atol=1e-5)
    assert torch.allclose(head.forward_head(x, "logits"), after @ head.classifier.fc.weight.T, atol=1e-5)
    assert head.neck_feat == "after" and torch.allclose(head(x), after, atol=1e-5)
    # A partial map (upper half) gives the pooled part feature (SSG's upper/lower spaces).
    assert torch.allclose(head.forward_head(x[:, :, :2], "before"), x[:, :, :2].mean(dim=(2, 3)))
    # Training mode: the same outputs as the training dict.
    head.train()
    torch.manual_seed(3)
    out = head(x)
    assert torch.allclose(head.forward_head(x, "before"), out["feat"])
    assert torch.allclose(head.forward_head(x, "logits"), out["logits"], atol=1e-5)
    with pytest.raises(ReIDError, match="which"):
        head.forward_head(x, "middle")


def test_forward_head_embedding_and_margin_logits():
    x = _fmap()
    emb = ReIDHead(8, 5, neck="embedding", embedding_hidden=16, embedding_dim=6).eval()
    feat = emb.neck(x.mean(dim=(2, 3)))
    assert torch.allclose(emb.forward_head(x, "before"), feat) and torch.allclose(emb.forward_head(x, "after"), feat)
    assert torch.allclose(emb.forward_head(x, "pooled"), x.mean(dim=(2, 3)))
    arc = ReIDHead(8, 5, classifier="arcface").train()
    labels = torch.tensor([0, 1, 2, 3])
    with pytest.raises(ReIDError, match="labels"):
        arc.forward_head(x, "logits")
    torch.manual_seed(0)
    got = arc.forward_head(x, "logits", labels)
    torch.manual_seed(0)
    assert torch.allclose(got, arc(x, labels)["logits"], atol=1e-5)
