"""TransReID arch: JPM shuffle, training dict (k + 1 branches), eval feature, SIE, criterion, checkpoint, recipe."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from factories import SYN_RECIPE, assert_loss_goes_down, train_recipe

from reidkit.errors import ReIDError
from reidkit.losses.criterion import LossConfig, build_criterion
from reidkit.losses import cross_entropy_ls
from reidkit.models.build import ModelConfig, build_model, save_model
from reidkit.models.loading import load_model
from reidkit.models.transreid import shuffle_tokens


def small_cfg(**kw) -> ModelConfig:
    base = dict(
        arch="transreid",
        backbone="vit_small_patch16",
        pretrained=False,
        stride_size=12,
        sie=True,
        num_cameras=3,
        jpm=True,
    )
    base.update(kw)
    return ModelConfig(**base)


def reference_shuffle(features: torch.Tensor, shift: int, group: int) -> torch.Tensor:
    """TransReID's shift + shuffle written out token by token (begin = 1)."""
    b, n1, c = features.shape
    order = list(range(shift, n1)) + list(range(1, shift))  # class token (index 0) left out
    if len(order) % group:
        order.append(order[-2])
    per = len(order) // group
    chunks = [order[g * per : (g + 1) * per] for g in range(group)]
    interleaved = [chunks[g][i] for i in range(per) for g in range(group)]
    return features[:, interleaved]


@pytest.mark.parametrize("n_tokens", [1 + 210, 1 + 128, 1 + 10, 1 + 9])
def test_shuffle_matches_transreid(n_tokens):
    x = torch.arange(n_tokens, dtype=torch.float32)[None, :, None].expand(2, -1, 3)
    assert torch.equal(shuffle_tokens(x, 5, 2), reference_shuffle(x, 5, 2))


def test_training_dict_has_k_plus_1_branches_and_the_criterion_uses_them():
    torch.manual_seed(0)
    m = build_model(small_cfg(), 6).train()
    assert m.arch == "transreid" and m.uses_camera and m.feat_dim == 5 * 384
    x, labels = torch.randn(8, 3, 64, 32), torch.arange(4).repeat_interleave(2)
    cams = torch.tensor([0, 1, 2] * 2 + [0, 1])
    out = m(x, labels, cams=cams)
    assert len(out["feats"]) == 5 and len(out["logits_list"]) == 5
    assert all(f.shape == (8, 384) for f in out["feats"]) and all(lg.shape == (8, 6) for lg in out["logits_list"])
    assert out["feat"].shape == (8, 5 * 384) and out["logits"] is out["logits_list"][0]
    crit = build_criterion(LossConfig(names=["softmax", "triplet"], label_smooth=0.0), 6, m.feat_dim)
    total, parts = crit(out, labels)
    # TransReID's weighting: 0.5 x the global branch + 0.5 x the mean of the k = 4 local branches.
    ces = [cross_entropy_ls(lg, labels, 0.0) for lg in out["logits_list"]]
    ce = 0.5 * ces[0] + 0.5 * torch.stack(ces[1:]).mean()
    assert out["branch_weights"] == [0.5, 0.125, 0.125, 0.125, 0.125]
    assert float(torch.as_tensor(parts["softmax"]).detach()) == pytest.approx(float(ce.detach()), rel=1e-5)
    total.backward()
    # Every branch learns: the local block and each local classifier get gradients.
    assert m.backbone.local_block.mlp.fc2.weight.grad.abs().sum() > 0
    assert all(c.fc.weight.grad.abs().sum() > 0 for c in m.head.classifiers)


def test_eval_feature_is_global_plus_locals_over_k_after_bn():
    torch.manual_seed(0)
    m = build_model(small_cfg(), 6).eval()
    x, cams = torch.randn(2, 3, 64, 32), torch.tensor([0, 2])
    with torch.no_grad():
        f = m(x, cams=cams)
        vit, trunk = m.backbone.vit, m.backbone
        tokens = vit.forward_tokens(x, cams, depth=len(vit.blocks) - 1)
        glob = vit.norm(vit.blocks[-1](tokens))[:, 0]
        patches = reference_shuffle(tokens, 5, 2)
        size = (tokens.shape[1] - 1) // 4
        parts = [m.head.necks[0](glob)]
        for i in range(4):
            seq = torch.cat([tokens[:, :1], patches[:, i * size : (i + 1) * size]], dim=1)
            parts.append(m.head.necks[i + 1](trunk.local_norm(trunk.local_block(seq))[:, 0]) / 4)
        ref = torch.cat(parts, dim=1)
    assert f.shape == (2, 5 * 384)
    assert torch.allclose(f, ref, atol=1e-5)
    assert torch.allclose(m.forward_head(m.forward_features(x, cams), "after"), f, atol=1e-6)
    before = build_model(small_cfg(neck_feat="before"), 6).eval()
    with torch.no_grad():
        assert before(x, cams=cams).shape == (2, 5 * 384)


def test_vit_b_eval_output_is_5_x_768():
    m = build_model(
        ModelConfig(arch="transreid", backbone="vit_base_patch16", pretrained=False, stride_size=12, jpm=True), 4
    ).eval()
    with torch.no_grad():
        out = m(torch.randn(1, 3, 64, 32))
    assert out.shape == (1, 5 * 768) and m.feat_dim == 3840


def test_sie_changes_the_output_with_the_camera():
    torch.manual_seed(0)
    m = build_model(small_cfg(), 6).eval()
    x = torch.randn(1, 3, 64, 32).expand(2, -1, -1, -1)
    with torch.no_grad():
        f = m(x, cams=torch.tensor([0, 1]))
    assert (f[0] - f[1]).abs().max() > 1e-4


def test_without_jpm_it_is_the_class_token_with_one_bnneck():
    m = build_model(small_cfg(jpm=False, sie=False), 6).eval()
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        f = m(x)
        ref = m.head.necks[0](m.backbone.vit.forward_features(x)[:, :, 0, 0])
    assert f.shape == (2, 384) and torch.allclose(f, ref, atol=1e-6)
    m.train()
    out = m(x, torch.tensor([0, 1]))
    assert set(out) == {"feat", "logits"} and out["feat"].shape == (2, 384)


def test_checkpoint_round_trip_and_bad_backbone(tmp_path: Path):
    cfg = small_cfg()
    m = build_model(cfg, 6).eval()
    path = save_model(tmp_path / "m.pt", m, cfg, 6, (64, 32))
    back = load_model(path)
    x, cams = torch.randn(2, 3, 64, 32), torch.tensor([1, 2])
    with torch.no_grad():
        assert torch.allclose(back(x, cams=cams), m(x, cams=cams), atol=1e-6)
    assert back.uses_camera and back.model_cfg.num_cameras == 3
    with pytest.raises(ReIDError, match="ViT backbone"):
        build_model(ModelConfig(arch="transreid", backbone="resnet18", pretrained=False), 6)


def test_transreid_recipe_trains_and_the_loss_goes_down():
    """The paper's recipe (SIE, JPM, stride 12, SGD, soft triplet) at 64x32 with ViT-S for CPU time."""
    trainer, losses = train_recipe("transreid_vit_b.yaml", {"backbone": "vit_small_patch16"})
    net = trainer.net
    assert net.uses_camera and net.backbone.vit.num_cameras == 2 and net.backbone.jpm
    assert_loss_goes_down(losses)


def test_vit_s_bot_recipe_trains_and_the_loss_goes_down():
    assert_loss_goes_down(train_recipe("vit_s_bot.yaml")[1])


def test_train_api_validates_with_cameras_and_the_saved_model_reloads():
    """reidkit.train on the TransReID recipe: validation passes camera ids, model.pt rebuilds the SIE/JPM model."""
    import reidkit

    with tempfile.TemporaryDirectory() as tmp:
        cfg = {
            "_base_": "transreid_vit_b.yaml",
            "data": {
                "datasets": [{"name": "synthetic", "root": f"{tmp}/syn", "options": SYN_RECIPE}],
                "size": [64, 32],
            },
            "sampler": {"p": 4, "k": 4, "epoch_batches": 2},
            "model": {"pretrained": False, "backbone": "vit_small_patch16"},
            "solver": {"max_epochs": 1, "warmup_epochs": 0, "eval_period": 1, "log_period": 1},
            "device": "cpu",
            "output_dir": f"{tmp}/out",
        }
        metrics = reidkit.train(cfg)
        assert 0 < metrics["mean"]["mAP"] <= 100
        net = load_model(Path(tmp) / "out" / "model.pt")
        assert net.arch == "transreid" and net.uses_camera and net.model_cfg.num_cameras == 2
        assert net.model_cfg.stride_size == 12 and net.feat_dim == 5 * 384
        with torch.no_grad():
            f = net(torch.randn(1, 3, 64, 32).expand(2, -1, -1, -1), cams=torch.tensor([0, 1]))
        assert (f[0] - f[1]).abs().max() > 1e-5
