"""Losses checked against values computed by hand from their formulas."""

import math

import pytest
import torch

from reidkit.errors import ReIDError
from reidkit.losses import (
    CenterLoss,
    LossConfig,
    UncertaintyWeighting,
    build_criterion,
    cross_entropy_ls,
    rescale_center_grad,
    triplet_loss,
)


def softplus(v):
    return math.log1p(math.exp(v))


# ----------------------------------------------------------------------------- cross-entropy


def test_cross_entropy_label_smoothing_by_hand():
    logits = torch.tensor([[math.log(2.0), 0.0]])  # softmax = [2/3, 1/3]
    labels = torch.tensor([0])
    # q = (1 - 0.1) * [1, 0] + 0.1 / 2 = [0.95, 0.05]
    want = -(0.95 * math.log(2 / 3) + 0.05 * math.log(1 / 3))
    assert cross_entropy_ls(logits, labels, eps=0.1).item() == pytest.approx(want, rel=1e-6)
    assert cross_entropy_ls(logits, labels, eps=0.0).item() == pytest.approx(-math.log(2 / 3), rel=1e-6)


def test_cross_entropy_batch_mean_and_bad_eps():
    logits = torch.tensor([[0.0, 0.0, 0.0], [math.log(2.0), 0.0, 0.0]])
    labels = torch.tensor([2, 0])
    q = [0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3]
    row0 = -math.log(1 / 3)  # uniform prediction: any q gives log 3
    p1 = [0.5, 0.25, 0.25]
    row1 = -sum(qi * math.log(pi) for qi, pi in zip(q, p1))
    assert cross_entropy_ls(logits, labels).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    with pytest.raises(ReIDError, match="label_smooth"):
        cross_entropy_ls(logits, labels, eps=1.0)


# ----------------------------------------------------------------------------- triplet

# Four points on a line: x = 0, 1 (id 0) and 3, 6 (id 1).
X1D = torch.tensor([[0.0], [1.0], [3.0], [6.0]])
L1D = torch.tensor([0, 0, 1, 1])
# Hardest positive / negative per anchor, by hand: d_ap = [1, 1, 3, 3], d_an = [3, 2, 2, 5]
GAPS = [1 - 3, 1 - 2, 3 - 2, 3 - 5]
D_AP = [1, 1, 3, 3]


def test_triplet_margin_by_hand():
    want = sum(max(0.0, g + 0.3) for g in GAPS) / 4  # = 1.3 / 4
    assert want == pytest.approx(0.325)
    assert triplet_loss(X1D, L1D, margin=0.3).item() == pytest.approx(want, abs=1e-6)


def test_triplet_soft_by_hand():
    want = sum(softplus(g) for g in GAPS) / 4
    assert triplet_loss(X1D, L1D, soft=True).item() == pytest.approx(want, abs=1e-6)


def test_triplet_ap_plus_by_hand():
    want = sum(a + max(0.0, g + 0.3) for a, g in zip(D_AP, GAPS)) / 4  # = 9.3 / 4
    assert triplet_loss(X1D, L1D, variant="ap_plus").item() == pytest.approx(want, abs=1e-6)
    want_soft = sum(a + softplus(g) for a, g in zip(D_AP, GAPS)) / 4
    assert triplet_loss(X1D, L1D, soft=True, variant="ap_plus").item() == pytest.approx(want_soft, abs=1e-6)


def test_triplet_cosine_by_hand():
    # Unit vectors at 0 and 60 degrees (id 0), 90 and 180 degrees (id 1); d = 1 - cos(angle).
    ang = [0.0, 60.0, 90.0, 180.0]
    x = torch.tensor([[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in ang]) * 2.0
    c30 = 1 - math.sqrt(3) / 2
    # anchor 0: d_ap 0.5, d_an 1 -> 0; anchor 1: 0.5 vs c30; anchor 2: 1 vs c30; anchor 3: 1 vs 1.5 -> 0
    want = ((0.5 - c30 + 0.3) + (1.0 - c30 + 0.3)) / 4
    got = triplet_loss(x, L1D, distance="cosine")
    assert got.item() == pytest.approx(want, abs=1e-6)


def test_triplet_normalize_option():
    x = X1D.repeat(1, 2) + torch.tensor([[0.0, 1.0]])
    want = triplet_loss(torch.nn.functional.normalize(x, dim=1), L1D)
    assert triplet_loss(x, L1D, normalize=True).item() == pytest.approx(want.item(), abs=1e-6)


def test_triplet_single_image_identity_excluded():
    x = torch.tensor([[0.0], [2.0], [1.0]])
    labels = torch.tensor([0, 0, 1])
    # Anchors 0 and 1: d_ap 2, d_an 1 -> 1.3 each; anchor 2 has no positive and is left out.
    assert triplet_loss(x, labels).item() == pytest.approx(1.3, abs=1e-6)


def test_triplet_no_valid_anchor_raises():
    with pytest.raises(ReIDError, match="no valid anchor"):
        triplet_loss(torch.randn(4, 3), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ReIDError, match="no valid anchor"):
        triplet_loss(torch.randn(4, 3), torch.tensor([5, 5, 5, 5]))
    with pytest.raises(ReIDError, match="triplet_distance"):
        triplet_loss(X1D, L1D, distance="manhattan")


def test_triplet_zero_distance_gradient_is_finite():
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0], [0.5, 0.5]], requires_grad=True)
    loss = triplet_loss(x, torch.tensor([0, 0, 1, 1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


# ----------------------------------------------------------------------------- center, weighting


def _center_example():
    center = CenterLoss(2, 2)
    center.centers.data = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    feats = torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]])
    return center, feats, torch.tensor([0, 0, 1])


def test_center_loss_value_and_centre_gradient():
    center, feats, labels = _center_example()
    loss = center(feats, labels)
    # 1/2 * (|(1,2)|^2 + |(3,4)|^2 + |(-1,-1)|^2) / 3 = 1/2 * 32 / 3
    assert loss.item() == pytest.approx(16 / 3, rel=1e-6)
    loss.backward()
    # d/dc_j = -(1/B) sum_{i: y_i = j} (x_i - c_j)
    want = torch.tensor([[-4 / 3, -2.0], [1 / 3, 1 / 3]])
    assert torch.allclose(center.centers.grad, want, atol=1e-6)
    rescale_center_grad(center, 0.5)
    assert torch.allclose(center.centers.grad, want * 2, atol=1e-6)


def test_uncertainty_weighting_formula():
    w = UncertaintyWeighting(["softmax", "triplet"])
    assert torch.equal(w.log_vars.data, torch.zeros(2))
    w.log_vars.data = torch.tensor([0.5, -1.0])
    total = w({"softmax": torch.tensor(2.0), "triplet": torch.tensor(3.0)})
    want = math.exp(-0.5) * 2 + 0.5 + math.exp(1.0) * 3 - 1.0
    assert total.item() == pytest.approx(want, rel=1e-6)
    total.backward()
    # d/ds_i = 1 - exp(-s_i) L_i
    assert w.log_vars.grad[0].item() == pytest.approx(1 - math.exp(-0.5) * 2, rel=1e-5)
    assert w.log_vars.grad[1].item() == pytest.approx(1 - math.exp(1.0) * 3, rel=1e-5)


# ----------------------------------------------------------------------------- criterion


def _outputs():
    feat = X1D.repeat(1, 2).requires_grad_(True)
    logits = torch.tensor([[math.log(2.0), 0.0]] * 4)
    return {"feat": feat, "logits": logits}


def test_criterion_bot_defaults_sum():
    cfg = LossConfig()
    assert cfg.names == ["softmax", "triplet"] and cfg.label_smooth == 0.1 and cfg.center_weight == 5e-4
    crit = build_criterion(cfg, num_classes=2, feat_dim=2)
    assert crit.center is None
    out = _outputs()
    labels = torch.tensor([0, 0, 1, 1])
    total, parts = crit(out, labels)
    ce = cross_entropy_ls(out["logits"], labels, 0.1)
    tri = triplet_loss(out["feat"], labels, 0.3)
    assert set(parts) == {"softmax", "triplet"} and not parts["triplet"].requires_grad
    assert total.item() == pytest.approx((ce + tri).item(), rel=1e-6)


def test_criterion_weights_center_and_rescale():
    cfg = LossConfig(names=["softmax", "triplet", "center"], id_weight=0.5, metric_weight=2.0)
    crit = build_criterion(cfg, num_classes=2, feat_dim=2)
    assert isinstance(crit.center, CenterLoss) and crit.center.centers.shape == (2, 2)
    out, labels = _outputs(), torch.tensor([0, 0, 1, 1])
    total, parts = crit(out, labels)
    want = 0.5 * parts["softmax"] + 2.0 * parts["triplet"] + 5e-4 * parts["center"]
    assert total.item() == pytest.approx(want.item(), rel=1e-6)
    total.backward()
    g = crit.center.centers.grad.clone()
    crit.rescale_center_grad()
    assert torch.allclose(crit.center.centers.grad, g / 5e-4)


def test_criterion_mgn_lists_averaged():
    crit = build_criterion(LossConfig(), num_classes=2, feat_dim=4)
    labels = torch.tensor([0, 0, 1, 1])
    f1, f2 = X1D.repeat(1, 2), X1D.repeat(1, 2) * 2
    lg1, lg2 = torch.zeros(4, 2), torch.tensor([[1.0, 0.0]] * 4)
    out = {"feat": torch.cat([f1, f2], 1), "logits": lg1, "feats": [f1, f2], "logits_list": [lg1, lg2]}
    _, parts = crit(out, labels)
    ce = (cross_entropy_ls(lg1, labels) + cross_entropy_ls(lg2, labels)) / 2
    tri = (triplet_loss(f1, labels) + triplet_loss(f2, labels)) / 2
    assert parts["softmax"].item() == pytest.approx(ce.item(), rel=1e-6)
    assert parts["triplet"].item() == pytest.approx(tri.item(), rel=1e-6)


def test_criterion_learnable_weights():
    crit = build_criterion(LossConfig(learnable_weights=True), num_classes=2, feat_dim=2)
    assert crit.weighting is not None and len(list(crit.parameters())) == 1
    crit.weighting.log_vars.data = torch.tensor([1.0, -0.5])
    total, parts = crit(_outputs(), torch.tensor([0, 0, 1, 1]))
    want = math.exp(-1) * parts["softmax"] + 1.0 + math.exp(0.5) * parts["triplet"] - 0.5
    assert total.item() == pytest.approx(want.item(), rel=1e-6)


def test_criterion_unknown_name():
    with pytest.raises(ReIDError, match="loss.names.*softmax, triplet, center"):
        build_criterion(LossConfig(names=["softmax", "arcface"]), 2, 2)
    with pytest.raises(ReIDError, match="loss.triplet_variant"):
        build_criterion(LossConfig(triplet_variant="hard"), 2, 2)


# ----------------------------------------------------------------------------- batch hardest


def test_triplet_batch_hardest_by_hand():
    # positive pairs of X1D: (0, 1) at 1 and (3, 6) at 3 -> hardest positive 3;
    # negative pairs: 0-3 = 3, 0-6 = 6, 1-3 = 2, 1-6 = 5 -> hardest negative 2
    assert triplet_loss(X1D, L1D, margin=0.3, variant="batch_hardest").item() == pytest.approx(1.3, abs=1e-6)
    assert triplet_loss(X1D, L1D, soft=True, variant="batch_hardest").item() == pytest.approx(softplus(1.0), abs=1e-6)
    # a batch whose hardest pairs are easy: [3 - 10 + 0.3]_+ = 0 while batch-hard is not zero
    x = torch.tensor([[0.0], [3.0], [13.0], [16.0]])
    assert triplet_loss(x, L1D, margin=0.3, variant="batch_hardest").item() == 0.0
    crit = build_criterion(LossConfig(names=["triplet"], triplet_variant="batch_hardest"), 2, 1)
    _, parts = crit({"feat": X1D}, L1D)
    assert parts["triplet"].item() == pytest.approx(1.3, abs=1e-6)


# ----------------------------------------------------------------------------- registry


def test_register_user_loss_and_weights():
    from reidkit.losses import LOSSES, register_loss

    @register_loss("l2_feat")
    class L2Feat(torch.nn.Module):
        def __init__(self, cfg, num_classes, feat_dim):
            super().__init__()

        def forward(self, outputs, labels):
            return outputs["feat"].pow(2).mean()

    try:
        import reidkit

        assert reidkit.register_loss is register_loss and "l2_feat" in LOSSES
        out, labels = _outputs(), torch.tensor([0, 0, 1, 1])
        ce = cross_entropy_ls(out["logits"], labels, 0.1)
        l2 = out["feat"].pow(2).mean()
        crit = build_criterion(LossConfig(names=["softmax", "l2_feat"]), 2, 2)
        total, parts = crit(out, labels)
        assert set(parts) == {"softmax", "l2_feat"}
        assert parts["l2_feat"].item() == pytest.approx(l2.item(), rel=1e-6)
        assert total.item() == pytest.approx((ce + l2).item(), rel=1e-6)  # default weight 1.0
        cfg = LossConfig(names=["softmax", "l2_feat"], id_weight=0.5, weights={"l2_feat": 0.25})
        total, _ = build_criterion(cfg, 2, 2)(out, labels)
        assert total.item() == pytest.approx((0.5 * ce + 0.25 * l2).item(), rel=1e-6)
        # weights also override a built-in's BoT field
        cfg = LossConfig(names=["softmax", "l2_feat"], id_weight=0.5, weights={"softmax": 3.0})
        total, _ = build_criterion(cfg, 2, 2)(out, labels)
        assert total.item() == pytest.approx((3.0 * ce + l2).item(), rel=1e-6)
        # through the config loader with dotted overrides
        from reidkit.config import load_config

        c = load_config(None, ["loss.names=[softmax, l2_feat]", "loss.weights.l2_feat=2.0"])
        assert c.loss.names == ["softmax", "l2_feat"] and c.loss.weight("l2_feat") == 2.0
        with pytest.raises(ReIDError, match="loss.weights.center"):
            LossConfig(names=["softmax"], weights={"center": 1.0}).check()
        with pytest.raises(ReIDError, match="loss.weights.l2_feat"):
            LossConfig(names=["softmax", "l2_feat"], weights={"l2_feat": "big"}).check()
    finally:
        LOSSES.unregister("l2_feat")


def test_unknown_loss_is_the_registry_did_you_mean_error():
    from reidkit.losses import LOSSES

    with pytest.raises(ReIDError) as e:
        LossConfig(names=["softmax", "tripelt"]).check()
    assert str(e.value) == LOSSES.unknown_message("tripelt")
    assert "did you mean 'triplet'" in str(e.value) and "loss.names" in str(e.value)


def test_registered_loss_must_build_a_module_returning_a_scalar():
    from reidkit.losses import LOSSES, register_loss

    register_loss("not_module", lambda cfg, n, d: lambda o, y: o["feat"].sum())
    register_loss("vector", lambda cfg, n, d: _Vector())
    try:
        with pytest.raises(ReIDError, match="not_module.*nn.Module"):
            build_criterion(LossConfig(names=["not_module"]), 2, 2)
        crit = build_criterion(LossConfig(names=["vector"]), 2, 2)
        with pytest.raises(ReIDError, match="'vector'.*scalar"):
            crit(_outputs(), torch.tensor([0, 0, 1, 1]))
    finally:
        LOSSES.unregister("not_module")
        LOSSES.unregister("vector")


class _Vector(torch.nn.Module):
    def forward(self, outputs, labels):
        return outputs["feat"].sum(1)


def test_criterion_state_keeps_the_centres_under_their_loss_name():
    crit = build_criterion(LossConfig(names=["softmax", "center"]), 3, 2)
    centres = torch.arange(6.0).view(3, 2)
    crit.load_state_dict({"terms.center.centers": centres})
    assert torch.equal(crit.center.centers.detach(), centres)
    with pytest.raises(RuntimeError, match="center.centers"):  # no layout of before the registry
        crit.load_state_dict({"center.centers": centres})


# ----------------------------------------------------------------------------- learnable weights


def test_learnable_weights_start_at_the_fixed_weights():
    cfg = LossConfig(
        names=["softmax", "triplet", "center"],
        id_weight=0.5,
        metric_weight=2.0,
        center_weight=5e-4,
        learnable_weights=True,
    )
    crit = build_criterion(cfg, num_classes=2, feat_dim=2)
    # s_i = -log(w_i), so exp(-s_i) = w_i
    want_s = [-math.log(0.5), -math.log(2.0), -math.log(5e-4)]
    assert crit.weighting.log_vars.tolist() == pytest.approx(want_s, rel=1e-6)
    for name, w in (("softmax", 0.5), ("triplet", 2.0), ("center", 5e-4)):
        assert crit.weight(name) == pytest.approx(w, rel=1e-6)
    assert crit.center_weight() == pytest.approx(5e-4, rel=1e-6)
    out, labels = _outputs(), torch.tensor([0, 0, 1, 1])
    total, parts = crit(out, labels)
    # Kendall et al.: sum exp(-s) L + s = sum w L - log w
    want = sum(w * parts[n] - math.log(w) for n, w in (("softmax", 0.5), ("triplet", 2.0), ("center", 5e-4)))
    assert total.item() == pytest.approx(float(want), rel=1e-5)
    u = UncertaintyWeighting(["a", "b"], {"b": 4.0})
    assert u.log_vars.tolist() == pytest.approx([0.0, -math.log(4.0)])
    with pytest.raises(ReIDError, match="loss.center_weight"):
        LossConfig(names=["softmax", "center"], center_weight=0.0, learnable_weights=True).check()


def test_trainable_modules_exclude_center_and_include_learnable_terms():
    from reidkit.losses import LOSSES, register_loss

    @register_loss("scaled")
    class Scaled(torch.nn.Module):
        def __init__(self, cfg, num_classes, feat_dim):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.tensor(2.0))

        def forward(self, outputs, labels):
            return self.scale * outputs["feat"].pow(2).mean()

    try:
        crit = build_criterion(LossConfig(names=["softmax", "center", "scaled"], learnable_weights=True), 2, 2)
        mods = crit.trainable_modules()
        assert mods[0] is crit.weighting and crit.terms["scaled"] in mods and crit.center not in mods
        assert build_criterion(LossConfig(), 2, 2).trainable_modules() == []
    finally:
        LOSSES.unregister("scaled")
