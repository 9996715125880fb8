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
    from reidkit.models.build import load_model

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
    from reidkit.evaluation.features import extract_features
    from reidkit.models.build import load_model

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(5, 64, 32, 3), dtype=np.uint8)
    model = load_model(ckpt["weights"])
    from reidkit.export import load_feature_model

    runner = load_feature_model(ckpt["onnx"])
    assert isinstance(runner, OnnxFeatureModel)
    ref = extract_features(model, imgs, batch_size=2, flip=True, device="cpu", mean=model.mean, std=model.std,
                           size=(64, 32))
    got = extract_features(runner, imgs, batch_size=2, flip=True, device="cpu", mean=runner.mean,
                           std=runner.std, size=(64, 32))
    assert float((ref - got).abs().max()) <= 1e-4


def test_torchscript_parity(ckpt):
    ts = export_model(ckpt["weights"], "torchscript", ckpt["root"] / "tiny.ts")
    module, meta = load_torchscript(ts)
    assert meta["input_size"] == [64, 32] and meta["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert parity(ckpt["weights"], ts, batch_sizes=(1, 3)) <= 1e-4


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
    from reidkit.retrieval.index import Gallery

    rng = np.random.default_rng(1)
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, size=(64, 32, 3), dtype=np.uint8)).save(folder / f"{i:04d}_c1s1_{i:06d}_01.png")
    g = Gallery.build(folder, tmp_path / "db", weights=ckpt["weights"])
    via_onnx = Gallery.open(tmp_path / "db", weights=ckpt["onnx"])
    probe = folder / "0003_c1s1_000003_01.png"
    a, b = g.search(str(probe), k=3), via_onnx.search(str(probe), k=3)
    assert [r["id"] for r in a] == [r["id"] for r in b] and a[0]["path"].endswith(probe.name)
    assert abs(a[1]["score"] - b[1]["score"]) < 1e-4
