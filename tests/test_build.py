"""Model assembly: build_model (baseline necks, MGN), checkpoints, parameter groups."""

import dataclasses
import os

import pytest
import torch

from reidkit.errors import ReIDError
from reidkit.losses import LossConfig, build_criterion
from reidkit.engine.optim import param_groups
from reidkit.models.build import ModelConfig, ReIDModel, build_model, save_model
from reidkit.models.loading import load_model

X = torch.randn(4, 3, 32, 16)  # tiny inputs keep the CPU tests fast
X64 = torch.randn(4, 3, 64, 32)  # MGN: tall enough for 3 stripes
LABELS = torch.tensor([0, 0, 1, 1])


def _cfg(**kw):
    return ModelConfig(backbone="resnet18", pretrained=False, **kw)


def test_model_config_bot_defaults():
    c = ModelConfig()
    assert (c.arch, c.backbone, c.pretrained, c.last_stride, c.pooling) == ("baseline", "resnet50", True, 1, "avg")
    assert (c.neck, c.neck_feat, c.classifier, c.gem_p) == ("bnneck", "after", "linear", 3.0)
    assert (c.embedding_dim, c.embedding_hidden, c.dropout, c.cls_scale, c.cls_margin) == (128, 1024, 0.0, 30.0, 0.35)


def test_baseline_bnneck_train_and_eval():
    model = build_model(_cfg(), num_classes=5)
    assert isinstance(model, ReIDModel) and model.feat_dim == 512
    assert list(model.mean) == pytest.approx([0.485, 0.456, 0.406])
    assert list(model.std) == pytest.approx([0.229, 0.224, 0.225])
    out = model.train()(X)
    assert out["feat"].shape == (4, 512) and out["logits"].shape == (4, 5)
    with torch.no_grad():
        feat = model.eval()(X)
    assert feat.shape == (4, 512)
    # last_stride 1: 32x16 input gives a 2x1 map; 2 gives 1x1.
    model.eval()
    assert model.backbone.forward_features(X[:1]).shape[-2:] == (2, 1)
    model2 = build_model(_cfg(last_stride=2), 5).eval()
    assert model2.backbone.forward_features(X[:1]).shape[-2:] == (1, 1)


@pytest.mark.parametrize("neck,dim", [("none", 512), ("embedding", 32)])
def test_baseline_other_necks(neck, dim):
    model = build_model(_cfg(neck=neck, embedding_dim=32, embedding_hidden=64), num_classes=5)
    assert model.feat_dim == dim
    out = model.train()(X)
    assert out["feat"].shape == (4, dim) and out["logits"].shape == (4, 5)
    with torch.no_grad():
        assert model.eval()(X).shape == (4, dim)


def test_gem_avgmax_and_margin_classifier_in_model():
    model = build_model(_cfg(pooling="gem", classifier="cosface"), 5).train()
    out = model(X, LABELS)
    assert out["logits"].shape == (4, 5)
    assert build_model(_cfg(pooling="avgmax"), 5).feat_dim == 512


@pytest.mark.parametrize(
    "kw,pattern",
    [
        ({"backbone": "resnet7"}, "model.backbone.*resnet50"),
        ({"pooling": "median"}, "model.pooling.*avg, max, gem, avgmax"),
        ({"neck": "bn"}, "model.neck.*bnneck, none, embedding"),
        ({"classifier": "softmax"}, "model.classifier.*linear, arcface, cosface, circle"),
        ({"arch": "pcb"}, "model.arch.*baseline, mgn"),
        ({"neck_feat": "middle"}, "model.neck_feat"),
    ],
)
def test_validation_errors(kw, pattern):
    with pytest.raises(ReIDError, match=pattern):
        build_model(ModelConfig(**{"pretrained": False, **kw}), 5)


def test_mgn_resnet50_shapes():
    model = build_model(ModelConfig(arch="mgn", backbone="resnet50", pretrained=False), num_classes=7)
    assert model.feat_dim == 2048
    x = X64[:2]
    maps = model.backbone.forward_features(x[:1])
    # Global branch keeps layer4's stride 2; the part branches use stride 1.
    assert maps[0].shape[-2:] == (2, 1) and maps[1].shape[-2:] == (4, 2) and maps[2].shape[-2:] == (4, 2)
    out = model.train()(x)
    assert out["feat"].shape == (2, 2048)
    assert len(out["logits_list"]) == 8 and all(lg.shape == (2, 7) for lg in out["logits_list"])
    assert len(out["feats"]) == 3 and all(f.shape == (2, 256) for f in out["feats"])
    assert torch.equal(out["feat"][:, :768], torch.cat(out["feats"], 1))
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 2048)
    # The three branches start from the same weights but are separate copies.
    tr = model.backbone
    assert torch.equal(tr.branch_global[1][0].conv1.weight, tr.branch_p2[1][0].conv1.weight)
    assert tr.branch_global[1][0].conv1.weight is not tr.branch_p2[1][0].conv1.weight


def test_mgn_criterion_and_non_resnet_error():
    model = build_model(ModelConfig(arch="mgn", backbone="resnet18", pretrained=False), num_classes=2)
    crit = build_criterion(LossConfig(names=["softmax", "triplet", "center"]), 2, model.feat_dim)
    total, parts = crit(model.train()(X64), LABELS)
    total.backward()
    assert torch.isfinite(total) and set(parts) == {"softmax", "triplet", "center"}
    with pytest.raises(ReIDError, match="ResNet-family"):
        build_model(ModelConfig(arch="mgn", backbone="mobilenetv2", pretrained=False), 2)


def test_save_load_round_trip(tmp_path):
    cfg = _cfg(neck_feat="before", pooling="gem")
    model = build_model(cfg, num_classes=5)
    model.train()(X)  # move BN running stats away from their init
    path = save_model(tmp_path / "m" / "model.pt", model, cfg, 5, (32, 16), extra={"epoch": 3})
    assert os.listdir(tmp_path / "m") == ["model.pt"]  # no temp file left behind
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["model_cfg"] == dataclasses.asdict(cfg) and ckpt["num_classes"] == 5
    assert ckpt["input_size"] == [32, 16] and ckpt["epoch"] == 3 and len(ckpt["mean"]) == 3
    loaded = load_model(path)
    assert not loaded.training and loaded.input_size == [32, 16]
    with torch.no_grad():
        assert torch.equal(model.eval()(X), loaded(X))


@pytest.mark.parametrize(
    "over,size",
    [
        ({"backbone": "resnet18", "pooling": "gem", "neck_feat": "before"}, (64, 32)),
        ({"backbone": "resnet18", "bn_groups": 2, "classifier": "arcface"}, (64, 32)),
        ({"backbone": "osnet_x0_25"}, (64, 32)),
        ({"backbone": "swin_tiny", "semantic_weight": 0.5}, (64, 32)),
        ({"backbone": "vit_small_patch16", "stride_size": 12}, (256, 128)),
    ],
)
def test_load_builds_on_the_meta_device_and_equals_the_saved_model(tmp_path, monkeypatch, over, size):
    """A checkpoint's model is built without initialising weights (meta device, then the stored tensors):
    every tensor real, the same outputs as the model saved, and the global RNG untouched by loading."""
    import reidkit.models.build as build

    cfg = ModelConfig(pretrained=False, **over)
    model = build_model(cfg, 5)
    x = torch.randn(4, 3, *size)
    with torch.no_grad():
        model.train()(x, torch.tensor([0, 1, 2, 3]))  # BN statistics away from their init
    path = save_model(tmp_path / "m.pt", model, cfg, 5, size)
    fast = []
    real = build._built_with_weights
    monkeypatch.setattr(build, "_built_with_weights", lambda *a: fast.append(real(*a)) or fast[-1])
    rng = torch.get_rng_state()
    loaded = load_model(path)
    assert fast and fast[0] is not None, "loaded by initialising the model first"
    assert torch.equal(torch.get_rng_state(), rng)
    assert not any(t.is_meta for t in (*loaded.parameters(), *loaded.buffers()))
    ref, got = model.state_dict(), loaded.state_dict()
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), loaded(x))


def test_load_training_checkpoint_with_more_keys(tmp_path):
    cfg = _cfg()
    model = build_model(cfg, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ckpt = {
        "model": model.state_dict(),
        "model_cfg": dataclasses.asdict(cfg),
        "num_classes": 3,
        "input_size": [64, 32],
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
        "optimizer": opt.state_dict(),
        "epoch": 10,
        "rng": {"numpy": __import__("numpy").random.get_state()},
    }
    torch.save(ckpt, tmp_path / "train.pt")
    loaded = load_model(tmp_path / "train.pt")
    assert loaded.mean == [0.5] * 3 and loaded.std == [0.25] * 3
    with torch.no_grad():
        assert torch.equal(model.eval()(X), loaded(X))


def test_load_missing_and_corrupt(tmp_path):
    with pytest.raises(ReIDError, match="nope.pt"):
        load_model(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ReIDError, match="bad.pt"):
        load_model(bad)
    torch.save({"model": {}}, tmp_path / "partial.pt")
    with pytest.raises(ReIDError, match="model_cfg"):
        load_model(tmp_path / "partial.pt")


def test_param_groups_cover_every_param_once():
    model = build_model(_cfg(pooling="gem"), 5)
    extra = torch.nn.Linear(2, 2)
    model.backbone.conv1.weight.requires_grad_(False)  # a frozen parameter is skipped
    groups = param_groups(
        model,
        1.0,
        5e-4,
        backbone_lr_factor=0.1,
        head_lr_factor=10.0,
        bias_lr_factor=2.0,
        no_decay_norm=True,
        extra_modules=[extra],
    )
    ids = [id(p) for g in groups for p in g["params"]]
    trainable = [p for p in list(model.parameters()) + list(extra.parameters()) if p.requires_grad]
    assert len(ids) == len(set(ids)) == len(trainable)
    assert set(ids) == {id(p) for p in trainable}
    assert id(model.head.neck.bn.bias) not in ids and id(model.backbone.conv1.weight) not in ids
    lookup = {id(p): g for g in groups for p in g["params"]}
    assert lookup[id(model.backbone.layer1[0].conv1.weight)]["lr"] == pytest.approx(0.1)
    assert lookup[id(model.backbone.layer1[0].conv1.weight)]["weight_decay"] == 5e-4
    bn = model.backbone.bn1
    assert lookup[id(bn.weight)]["weight_decay"] == 0.0 and lookup[id(bn.weight)]["lr"] == pytest.approx(0.1)
    assert lookup[id(bn.bias)]["lr"] == pytest.approx(0.2) and lookup[id(bn.bias)]["weight_decay"] == 0.0
    assert lookup[id(model.head.classifier.fc.weight)]["lr"] == pytest.approx(10.0)
    assert lookup[id(model.head.pool.p)]["weight_decay"] == 0.0
    assert lookup[id(extra.bias)]["lr"] == pytest.approx(20.0)
    torch.optim.Adam(groups)  # a valid optimiser spec
    plain = param_groups(model, 1.0, 5e-4)
    assert all(g["weight_decay"] == 5e-4 for g in plain)
    assert sum(len(g["params"]) for g in plain) == len([p for p in model.parameters() if p.requires_grad])


def test_end_to_end_step_with_center_loss():
    model = build_model(_cfg(), 2).train()
    crit = build_criterion(LossConfig(names=["softmax", "triplet", "center"]), 2, model.feat_dim)
    opt = torch.optim.Adam(param_groups(model, 3.5e-4, 5e-4))
    copt = torch.optim.SGD(crit.center.parameters(), lr=0.5)
    before = crit.center.centers.detach().clone()
    total, _ = crit(model(X), LABELS)
    total.backward()
    crit.rescale_center_grad()
    opt.step()
    copt.step()
    assert not torch.equal(before, crit.center.centers)
    assert torch.equal(model.head.neck.bn.bias, torch.zeros(512))


def test_model_forward_features_and_head_match_forward():
    torch.manual_seed(0)
    model = build_model(_cfg(neck_feat="after"), num_classes=3).eval()
    with torch.no_grad():
        fmap = model.forward_features(X)
        assert torch.equal(fmap, model.backbone.forward_features(X))
        assert torch.allclose(model.forward_head(fmap, "after"), model(X), atol=1e-6)
        assert torch.allclose(model.forward_head(fmap, "before"), fmap.mean(dim=(2, 3)), atol=1e-6)
        upper = model.forward_head(fmap[:, :, : fmap.shape[2] // 2], which="before")
        assert torch.allclose(upper, fmap[:, :, : fmap.shape[2] // 2].mean(dim=(2, 3)), atol=1e-6)
        assert model.forward_head(fmap, "logits").shape == (4, 3)
        assert model(X, cams=torch.zeros(4, dtype=torch.long)).shape == model(X).shape  # cams ignored
    assert model.uses_camera is False and model.head.neck_feat == "after"
    out = model.train()(X, LABELS)
    assert set(out) == {"feat", "logits"}


def test_mgn_forward_head():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="mgn", backbone="resnet18", pretrained=False), num_classes=3).eval()
    with torch.no_grad():
        maps = model.forward_features(X64[:2])
        ref = model(X64[:2])
        assert torch.allclose(model.forward_head(maps, "after"), ref)
        assert torch.allclose(model.forward_head(maps, "before"), ref)
        assert model.forward_head(maps, "logits").shape == (2, 3)
    with pytest.raises(ReIDError, match="which"):
        model.forward_head(maps, "pooled")


class _CamBackbone(torch.nn.Module):
    """A stand-in SIE backbone: adds a learned per-camera offset to the feature map."""

    uses_camera = True
    out_channels = 4

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.cam = torch.nn.Embedding(3, 4)

    def forward_features(self, x, cams=None):
        f = self.conv(x)
        return f if cams is None else f + self.cam(cams)[:, :, None, None]


def test_camera_aware_backbone_gets_cams():
    from reidkit.models.heads import ReIDHead

    torch.manual_seed(0)
    model = ReIDModel(_CamBackbone(), ReIDHead(4, 2), [0.5] * 3, [0.25] * 3).eval()
    assert model.uses_camera
    with torch.no_grad():
        a = model(X[:2], cams=torch.tensor([0, 1]))
        b = model(X[:2], cams=torch.tensor([1, 1]))
    assert torch.allclose(a[1], b[1]) and not torch.allclose(a[0], b[0])
