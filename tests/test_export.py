"""Export: ONNX and TorchScript parity with PyTorch (dynamic batch), metadata, ONNX in extract_features and galleries."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from reidkit.cli import main
from reidkit.errors import ReIDError
from reidkit.export import OnnxFeatureModel, export_model, load_torchscript, parity, read_export_metadata

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from reidkit.models.build import ModelConfig, build_model, save_model

    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="resnet18", pretrained=False, pooling="gem", neck="bnneck")
    model = build_model(cfg, 6)
    # Non-trivial BN statistics, so the exported graph's folded BN is actually exercised.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d | torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    weights = save_model(root / "tiny.pth", model, cfg, 6, (64, 32))
    onnx_path = export_model(weights, "onnx", root / "tiny.onnx")
    return {"root": root, "weights": weights, "onnx": onnx_path}


def test_onnx_parity_dynamic_batch_and_metadata(ckpt):
    from reidkit.models.loading import load_model

    model = load_model(ckpt["weights"])
    runner = OnnxFeatureModel(ckpt["onnx"])
    assert runner.input_size == [64, 32] and runner.feat_dim == model.feat_dim == 512
    assert runner.mean == pytest.approx(model.mean) and runner.std == pytest.approx(model.std)
    gen = torch.Generator().manual_seed(1)
    for b in (1, 3):
        x = torch.randn(b, 3, 64, 32, generator=gen)
        with torch.no_grad():
            ref = model(x)
        got = runner(x)
        assert got.shape == (b, 512)
        assert float((ref - got).abs().max()) <= 1e-4
    meta = read_export_metadata(ckpt["onnx"])
    assert meta["input_size"] == [64, 32] and meta["feat_dim"] == 512
    from reidkit.export import file_sha256

    assert meta["weights_sha256"] == file_sha256(ckpt["weights"])
    import onnx

    graph = onnx.load(str(ckpt["onnx"])).graph
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    with pytest.raises(ReIDError, match="input size 64x32"):
        runner(torch.zeros(1, 3, 128, 64))


def test_onnx_model_in_extract_features(ckpt):
    from reidkit.inference.features import extract_features
    from reidkit.models.loading import load_model

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(5, 64, 32, 3), dtype=np.uint8)
    model = load_model(ckpt["weights"])
    from reidkit.export import load_feature_model

    runner = load_feature_model(ckpt["onnx"])
    assert isinstance(runner, OnnxFeatureModel)
    ref = extract_features(
        model, imgs, batch_size=2, flip=True, device="cpu", mean=model.mean, std=model.std, size=(64, 32)
    )
    got = extract_features(
        runner, imgs, batch_size=2, flip=True, device="cpu", mean=runner.mean, std=runner.std, size=(64, 32)
    )
    assert float((ref - got).abs().max()) <= 1e-4


def test_torchscript_parity(ckpt):
    ts = export_model(ckpt["weights"], "torchscript", ckpt["root"] / "tiny.ts")
    with pytest.raises(ReIDError, match="TorchScript program"):
        load_torchscript(ts)  # a program: refused without trust
    module, meta = load_torchscript(ts, trust=True)
    assert meta["input_size"] == [64, 32] and meta["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert parity(ckpt["weights"], ts, batch_sizes=(1, 3), trust=True) <= 1e-4


def test_cli_export_and_errors(ckpt, tmp_path, capsys):
    out = tmp_path / "cli.onnx"
    assert main(["export", "--weights", str(ckpt["weights"]), "--format", "onnx", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert out.is_file() and "max abs diff" in text
    diff = float(text.rsplit("max abs diff", 1)[1].split()[0])
    assert diff <= 1e-4
    assert main(["export", "--weights", str(tmp_path / "missing.pth"), "--out", str(out)]) == 2
    assert "not found" in capsys.readouterr().err
    with pytest.raises(ReIDError, match="format"):
        export_model(ckpt["weights"], "tflite", tmp_path / "x")
    plain = tmp_path / "plain.onnx"
    shutil.copy(ckpt["onnx"], plain)
    import onnx

    proto = onnx.load(str(plain))
    del proto.metadata_props[:]
    onnx.save(proto, str(plain))
    with pytest.raises(ReIDError, match="not a reidkit export"):
        OnnxFeatureModel(plain)


def test_gallery_accepts_onnx_export_of_its_checkpoint(ckpt, tmp_path):
    """A gallery built with the .pth can be queried with its ONNX export (same weights hash)."""
    from reidkit.retrieval.gallery import Gallery

    rng = np.random.default_rng(1)
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, size=(64, 32, 3), dtype=np.uint8)).save(
            folder / f"{i:04d}_c1s1_{i:06d}_01.png"
        )
    g = Gallery.build(folder, tmp_path / "db", weights=ckpt["weights"])
    via_onnx = Gallery.open(tmp_path / "db", weights=ckpt["onnx"])
    probe = folder / "0003_c1s1_000003_01.png"
    a, b = g.search(str(probe), k=3), via_onnx.search(str(probe), k=3)
    assert [r["id"] for r in a] == [r["id"] for r in b] and a[0]["path"].endswith(probe.name)
    assert abs(a[1]["score"] - b[1]["score"]) < 1e-4


def test_exported_runners_implement_the_feature_model_protocol(ckpt):
    from reidkit.inference.features import FeatureModel
    from reidkit.export import TorchScriptFeatureModel, load_feature_model
    from reidkit.models.loading import load_model

    ts = export_model(ckpt["weights"], "torchscript", ckpt["root"] / "proto.ts")
    onnx_runner, ts_runner = load_feature_model(ckpt["onnx"]), load_feature_model(ts, trust_checkpoint=True)
    assert isinstance(ts_runner, TorchScriptFeatureModel)
    for runner in (onnx_runner, ts_runner, load_model(ckpt["weights"])):
        assert isinstance(runner, FeatureModel)
        assert runner.uses_camera is False and runner.feat_dim == 512 and runner.eval() is runner
    for runner in (onnx_runner, ts_runner):
        # Honest: no faked nn.Module surface.
        assert not any(hasattr(runner, a) for a in ("parameters", "modules", "to", "train"))
    x = torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(ts_runner(x), onnx_runner(x), atol=1e-4, rtol=0)


def _write_crops(folder, n=3, seed=2):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (64, 32, 3), dtype=np.uint8)).save(
            folder / f"{i + 1:04d}_c{i % 2 + 1}s1_{i:06d}_00.png"
        )
    return folder


def test_extract_cli_accepts_torchscript_weights(ckpt, tmp_path, capsys):
    ts = export_model(ckpt["weights"], "torchscript", tmp_path / "model.ts")
    folder = _write_crops(tmp_path / "crops")
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert (
        main(
            ["extract", "--weights", str(ckpt["weights"]), "--images", str(folder), "--out", str(a), "--device", "cpu"]
        )
        == 0
    )
    capsys.readouterr()
    # TorchScript is a program: refused without --trust-checkpoint (one error naming the file and the flag)
    assert main(["extract", "--weights", str(ts), "--images", str(folder), "--out", str(b)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and str(ts) in err and "--trust-checkpoint" in err and not b.exists()
    assert main(["extract", "--weights", str(ts), "--images", str(folder), "--out", str(b), "--trust-checkpoint"]) == 0
    assert "TorchScript program" in capsys.readouterr().err  # the warning
    with np.load(a) as za, np.load(b) as zb:
        np.testing.assert_allclose(zb["features"], za["features"], atol=1e-4, rtol=0)
        assert list(za["paths"]) == list(zb["paths"])
    from reidkit.models.loading import load_model

    with pytest.raises(ReIDError, match="TorchScript export, not a training checkpoint"):
        load_model(ts)
    # A file that is neither a checkpoint nor an export still gives one clear error.
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    capsys.readouterr()
    assert main(["extract", "--weights", str(junk), "--images", str(folder), "--out", str(b)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(junk) in err and "Traceback" not in err


def test_cli_export_unwritable_out(ckpt, tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    for out in (blocker / "m.onnx", tmp_path):
        capsys.readouterr()
        assert main(["export", "--weights", str(ckpt["weights"]), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and str(out) in err and "Traceback" not in err


class _CamBackbone(torch.nn.Module):
    """A stand-in for a ViT with SIE: a per-camera embedding added to the feature map."""

    uses_camera = True
    out_channels = 8
    num_cameras = 3

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.cam = torch.nn.Embedding(3, 8)

    def forward_features(self, x, cams=None):
        f = self.conv(x)
        return f if cams is None else f + self.cam(cams)[:, :, None, None]


@pytest.fixture(scope="module")
def cam_model():
    from reidkit.models.build import ReIDModel
    from reidkit.models.heads import ReIDHead

    torch.manual_seed(0)
    model = ReIDModel(_CamBackbone(), ReIDHead(8, 2), [0.5] * 3, [0.25] * 3).eval()
    model.input_size = [32, 16]
    return model


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_camera_aware_export_takes_camids(cam_model, tmp_path, fmt):
    import onnx

    from reidkit.inference.features import extract_features
    from reidkit.export import load_feature_model

    weights = tmp_path / "stand_in.bin"  # only hashed into the metadata
    weights.write_bytes(b"stand-in")
    out = export_model(weights, fmt, tmp_path / ("cam.onnx" if fmt == "onnx" else "cam.ts"), model=cam_model)
    if fmt == "onnx":
        graph = onnx.load(str(out)).graph
        assert [i.name for i in graph.input] == ["images", "camids"]
        assert graph.input[1].type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert graph.input[1].type.tensor_type.shape.dim[0].dim_param == "batch"
    runner = load_feature_model(out, trust_checkpoint=True)
    assert runner.uses_camera and read_export_metadata(out)["uses_camera"] is True
    assert parity(weights, out, batch_sizes=(1, 3), model=cam_model, trust=True) <= 1e-4
    x = torch.randn(3, 3, 32, 16, generator=torch.Generator().manual_seed(1))
    cams = torch.tensor([0, 2, 1])
    with torch.no_grad():
        ref = cam_model(x, cams=cams)
    torch.testing.assert_close(runner(x, cams), ref, atol=1e-4, rtol=0)
    assert not torch.allclose(runner(x, torch.tensor([1, 1, 1])), ref, atol=1e-3)  # the ids matter
    with pytest.raises(ReIDError, match="camera id"):
        runner(x)
    imgs = np.random.default_rng(0).integers(0, 256, (4, 32, 16, 3), dtype=np.uint8)
    kw = dict(flip=True, device="cpu", size=(32, 16), camids=[0, 1, 2, 0], batch_size=3)
    torch.testing.assert_close(
        extract_features(runner, imgs, **kw), extract_features(cam_model, imgs, **kw), atol=1e-4, rtol=0
    )
