"""reidkit.inference.FeatureExtractor: engines (BatchNorm folded, ONNX Runtime with a cache by hash),
options per call, files with skips, and the model I/O modules importing one way."""

from __future__ import annotations

import sys

import numpy as np
import procs
import pytest
import torch
from PIL import Image

from reidkit.errors import ReIDError
from reidkit.inference import FeatureExtractor, ModelIdentity
from reidkit.models.fold import fold_batchnorm


def _tiny(backbone: str = "resnet18", **kw):
    from reidkit.models.build import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=backbone, pretrained=False, **kw), 4).eval()
    model.input_size = [64, 32]
    # BN statistics away from (0, 1) so a fold that dropped them would show
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
    return model


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from reidkit.models.build import save_model

    model = _tiny()
    return save_model(tmp_path_factory.mktemp("inf") / "tiny.pt", model, model.model_cfg or _cfg(), 4, (64, 32))


def _cfg():
    from reidkit.models.build import ModelConfig

    return ModelConfig(backbone="resnet18", pretrained=False)


@pytest.mark.parametrize("backbone", ["resnet18", "osnet_x0_25"])
def test_fold_batchnorm_is_pure_and_equal(backbone):
    model = _tiny(backbone)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the input is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    x = torch.randn(3, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref, got = model(x), folded(x)
    assert float((ref - got).abs().max()) <= 1e-5 * max(1.0, float(ref.abs().max()))


def test_fold_batchnorm_keeps_the_original_when_the_folded_output_is_not_finite(monkeypatch):
    import reidkit.models.fold as fold

    real = fold.fuse_conv_bn_weights

    def nan_weights(*args, **kwargs):
        w, b = real(*args, **kwargs)
        return torch.nn.Parameter(torch.full_like(w, float("nan"))), b

    monkeypatch.setattr(fold, "fuse_conv_bn_weights", nan_weights)
    model = _tiny("resnet18")
    with pytest.warns(UserWarning, match="kept unfolded"):
        kept = fold.fold_batchnorm(model)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in kept.modules())
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        assert torch.isfinite(kept(x)).all() and torch.equal(kept(x), model.eval()(x))


def test_onnx_engine_parity_and_cache_by_hash(weights, tmp_path, monkeypatch):
    import reidkit.export as export
    from reidkit.models.checkpoint import file_sha256

    monkeypatch.setenv("REIDKIT_HOME", str(tmp_path / "home"))
    imgs = np.random.default_rng(0).integers(0, 256, (5, 64, 32, 3), dtype=np.uint8)
    torch_fx = FeatureExtractor.load(weights, engine="torch")
    onnx_fx = FeatureExtractor.load(weights, engine="onnx", threads=1)
    assert torch_fx.engine == "torch" and onnx_fx.engine == "onnx"
    assert onnx_fx.identity == torch_fx.identity  # same weights, same identity: one gallery for both
    assert np.abs(onnx_fx.embed(imgs) - torch_fx.embed(imgs)).max() <= 1e-4
    cached = list((tmp_path / "home" / "onnx-cache").iterdir())
    assert [p.name for p in cached] == [f"{file_sha256(weights)}-64x32.onnx"]
    # a second load reuses the export: the exporter is not called again
    monkeypatch.setattr(export, "export_model_to", lambda *a, **k: pytest.fail("exported twice"))
    again = FeatureExtractor.load(weights, engine="onnx", threads=1)
    np.testing.assert_allclose(again.embed(imgs), onnx_fx.embed(imgs), atol=1e-6)
    sess = again.model.session.get_session_options()
    assert sess.intra_op_num_threads == 1
    assert sess.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_auto_engine_and_bad_engine(weights, tmp_path, monkeypatch):
    monkeypatch.setenv("REIDKIT_HOME", str(tmp_path))
    assert FeatureExtractor.load(weights, engine="auto", device="cpu").engine == "onnx"
    with pytest.raises(ReIDError, match="engine"):
        FeatureExtractor.load(weights, engine="tensorrt")


def test_auto_engine_falls_back_and_a_damaged_cache_is_remade(weights, tmp_path, monkeypatch, caplog):
    """auto: no writable ONNX cache -> PyTorch with one warning (explicit onnx: one error naming the cache);
    a damaged cache entry is exported again, with equal features."""
    import logging

    from reidkit.models.checkpoint import file_sha256

    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    monkeypatch.setenv("REIDKIT_HOME", str(blocker))  # onnx-cache would live under a file
    with caplog.at_level(logging.WARNING, logger="reidkit.inference"):
        fx = FeatureExtractor.load(weights, engine="auto", device="cpu")
    assert fx.engine == "torch" and "using PyTorch" in caplog.text
    with pytest.raises(ReIDError, match="onnx cache"):
        FeatureExtractor.load(weights, engine="onnx")
    monkeypatch.setenv("REIDKIT_HOME", str(tmp_path / "home"))
    imgs = np.random.default_rng(2).integers(0, 256, (3, 64, 32, 3), dtype=np.uint8)
    good = FeatureExtractor.load(weights, engine="onnx", threads=1).embed(imgs)
    cached = tmp_path / "home" / "onnx-cache" / f"{file_sha256(weights)}-64x32.onnx"
    cached.write_bytes(cached.read_bytes()[:1000])  # cut short
    again = FeatureExtractor.load(weights, engine="onnx", threads=1)
    np.testing.assert_allclose(again.embed(imgs), good, atol=1e-6)
    assert cached.stat().st_size > 1000


def test_a_plain_module_runs_on_torch_under_auto(tmp_path, monkeypatch):
    """FeatureExtractor.from_model(any nn.Module).with_engine("auto" / "auto-int8") runs it on torch, BatchNorm
    folded, the features equal (it raised AttributeError: no .info to export by); "onnx" / "int8" are one
    OptionError naming engine."""
    from reidkit.errors import OptionError

    monkeypatch.setenv("REIDKIT_HOME", str(tmp_path))  # nothing is exported there
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1)
    )
    net[1].running_mean.uniform_(-0.2, 0.2)
    net[1].running_var.uniform_(0.5, 1.5)
    plain = torch.nn.Sequential(net, torch.nn.Flatten()).eval()
    fx = FeatureExtractor.from_model(plain, device="cpu", size=(32, 16))
    imgs = np.random.default_rng(0).integers(0, 256, (3, 32, 16, 3), dtype=np.uint8)
    ref = fx.embed(imgs, flip=False)
    for engine in ("auto", "auto-int8"):
        view = fx.with_engine(engine)
        assert view.engine == "torch" and view.model is not plain  # a folded copy; the model itself unchanged
        np.testing.assert_allclose(view.embed(imgs, flip=False), ref, atol=1e-5)
    for engine in ("onnx", "int8"):
        with pytest.raises(
            OptionError, match=rf"^engine={engine}: '{engine}' needs a reidkit model \(ReIDModel\), got Sequential"
        ):
            fx.with_engine(engine)
    assert not (tmp_path / "onnx-cache").exists()


def test_options_per_call_leave_the_extractor_unchanged(weights):
    fx = FeatureExtractor.load(weights, batch_size=2, flip=True)
    imgs = np.random.default_rng(1).integers(0, 256, (3, 64, 32, 3), dtype=np.uint8)
    flipped, plain = fx.embed(imgs), fx.embed(imgs, flip=False, batch_size=1)
    assert fx.flip is True and fx.batch_size == 2
    assert not np.allclose(flipped, plain, atol=1e-4)  # flip TTA changes the feature
    np.testing.assert_allclose(fx.embed(imgs, flip=False), plain, atol=1e-6)  # batch size does not
    assert isinstance(fx.identity, ModelIdentity) and fx.size == (64, 32) and fx.dim == 512


def test_embed_paths_skips_only_when_asked(weights, tmp_path):
    from reidkit.inference.features import load_images

    fx = FeatureExtractor.load(weights)
    paths = []
    for i in range(3):
        arr = (np.random.default_rng(i).random((70, 30, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ReIDError, match="bad.png"):
        fx.embed_paths([*paths, str(tmp_path / "bad.png")])
    skipped: list[str] = []
    got = fx.embed_paths([paths[0], str(tmp_path / "bad.png"), *paths[1:]], skipped=skipped, flip=False)
    assert skipped == [str(tmp_path / "bad.png")] and got.shape == (3, 512)
    ref = fx.embed(load_images(paths, fx.size)[0], flip=False)
    np.testing.assert_allclose(got, ref, atol=1e-6)


def test_model_io_imports_one_way():
    """checkpoint is a leaf; build imports neither export, interop nor loading; export does not import retrieval."""
    code = (
        "import sys\n"
        "import reidkit.models.checkpoint\n"
        "bad = [m for m in sys.modules if m.startswith('reidkit.') and m not in "
        "('reidkit.errors', 'reidkit._lazy', 'reidkit.models', 'reidkit.models.checkpoint') "
        "and not m.startswith('reidkit.utils')]\n"
        "assert not bad, bad\n"
        "import reidkit.models.build\n"
        "bad = [m for m in ('reidkit.export', 'reidkit.models.interop', 'reidkit.models.loading') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "import reidkit.export, reidkit.inference\n"
        "assert not [m for m in sys.modules if m.startswith(('reidkit.retrieval', 'reidkit.video'))]\n"
    )
    procs.run([sys.executable, "-c", code], check=True)


def test_index_build_and_add_run_the_engine_they_are_given(tmp_path, monkeypatch):
    """`index build --engine onnx` embeds with the cached export: the torch gallery's features within 1e-4."""
    from PIL import Image

    from reidkit.cli import main
    from reidkit.retrieval.gallery import Gallery

    monkeypatch.setenv("REIDKIT_HOME", str(tmp_path / "home"))
    crops = tmp_path / "crops"
    crops.mkdir()
    for i in range(4):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (64, 32, 3), dtype=np.uint8)).save(
            crops / f"{i:04d}_c{i % 2 + 1}s1_000001_00.jpg"
        )
    size = ["--size", "64", "32"]
    assert main(["index", "build", "--images", str(crops), "--db", str(tmp_path / "t"), *size]) == 0
    assert not (tmp_path / "home" / "onnx-cache").exists()  # torch (the default) exports nothing
    assert main(["index", "build", "--images", str(crops), "--db", str(tmp_path / "o"), *size, "--engine", "onnx"]) == 0
    assert (tmp_path / "home" / "onnx-cache" / "imagenet_efficientnet_lite0-64x32.onnx").is_file()

    def feats(db):
        g = Gallery.open(db)
        rows = sorted(g.entries(), key=lambda r: r["path"])
        return g.features([r["id"] for r in rows])

    np.testing.assert_allclose(feats(tmp_path / "o"), feats(tmp_path / "t"), atol=1e-4)
    g = Gallery.open(tmp_path / "t", engine="onnx")
    assert g.extractor.engine == "onnx"  # what `index add --engine onnx` embeds with
    assert main(["index", "add", "--images", str(crops), "--db", str(tmp_path / "t"), "--engine", "auto"]) == 0


def test_one_embed_paths_and_it_is_inference_s():
    from pathlib import Path

    import reidkit

    root = Path(reidkit.__file__).parent
    found = [p.relative_to(root).as_posix() for p in root.rglob("*.py") if "def embed_paths(" in p.read_text()]
    assert found == ["inference/__init__.py"]
