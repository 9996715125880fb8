"""Feature extraction (flip TTA, neck_feat, paths), the extract CLI and evaluate()."""
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from reidkit.errors import ReIDError
from reidkit.evaluation.features import extract_features


class Tiny(torch.nn.Module):
    """Not flip-invariant: a linear map of the flattened image."""

    def __init__(self, h=8, w=4, dim=5):
        super().__init__()
        self.fc = torch.nn.Linear(3 * h * w, dim)
        self.mean, self.std = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
        self.neck_feat = "after"

    def forward(self, x):
        f = self.fc(x.flatten(1))
        return f if self.neck_feat == "after" else -f


def _images(n=6, h=8, w=4, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def _manual(model, imgs):
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0
    x = (x - 0.5) / 0.25
    with torch.no_grad():
        return model(x), model(torch.flip(x, dims=[3]))


def test_flip_is_mean_of_both_passes():
    model, imgs = Tiny(), _images()
    a, b = _manual(model, imgs)
    out = extract_features(model, imgs, batch_size=4, flip=True, normalize=False)
    torch.testing.assert_close(out, (a + b) / 2, atol=1e-5, rtol=1e-5)
    plain = extract_features(model, imgs, flip=False, normalize=True)
    torch.testing.assert_close(plain, torch.nn.functional.normalize(a, dim=1), atol=1e-5, rtol=1e-5)


def test_neck_feat_set_temporarily_and_mode_restored():
    model, imgs = Tiny(), _images()
    model.train()
    a, _ = _manual(model, imgs)
    out = extract_features(model, imgs, flip=False, normalize=False, neck_feat="before")
    torch.testing.assert_close(out, -a, atol=1e-5, rtol=1e-5)
    assert model.neck_feat == "after" and model.training


def test_paths_are_read_and_resized(tmp_path):
    imgs = _images(3, 16, 8)
    paths = []
    for i, im in enumerate(imgs):
        p = tmp_path / f"{i}.png"
        Image.fromarray(im).save(p)
        paths.append(str(p))
    model = Tiny(16, 8)
    from_paths = extract_features(model, paths, size=(16, 8), flip=False)
    from_array = extract_features(model, imgs, flip=False)
    torch.testing.assert_close(from_paths, from_array, atol=1e-5, rtol=1e-5)
    with pytest.raises(ReIDError):
        extract_features(model, paths + [str(tmp_path / "missing.png")], size=(16, 8))


def test_bad_images():
    with pytest.raises(ReIDError):
        extract_features(Tiny(), np.zeros((2, 8, 4), np.uint8))
    with pytest.raises(ReIDError):
        extract_features(Tiny(), np.zeros((2, 8, 4, 3), np.float32))


def test_extract_cli(tmp_path):
    from reidkit.cli import main
    from reidkit.models.build import ModelConfig, build_model, save_model

    cfg = ModelConfig(backbone="resnet18", pretrained=False)
    model = build_model(cfg, num_classes=3)
    weights = save_model(tmp_path / "m.pth", model, cfg, 3, input_size=(32, 16))
    folder = tmp_path / "crops" / "sub"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = ["0001_c1s1_000001_00.jpg", "0002_c3s1_000002_00.jpg", "0007_c2s2_000003_01.png"]
    for name in names:
        Image.fromarray(rng.integers(0, 256, (40, 20, 3), dtype=np.uint8)).save(folder / name)
    out = tmp_path / "features.npz"
    assert main(["extract", "--weights", str(weights), "--images", str(tmp_path / "crops"),
                 "--out", str(out), "--batch-size", "2"]) == 0
    with np.load(out) as z:
        assert z["features"].shape == (3, model.feat_dim)
        np.testing.assert_allclose(np.linalg.norm(z["features"], axis=1), 1.0, atol=1e-5)
        assert [Path(p).name for p in z["paths"]] == sorted(names)
        np.testing.assert_array_equal(z["camids"], [0, 2, 1])
        np.testing.assert_array_equal(z["pids"], [1, 2, 7])
    assert main(["extract", "--weights", str(weights), "--images", str(tmp_path / "nothing"),
                 "--out", str(out)]) == 2


def test_amp_autocast_dtypes():
    model, imgs = Tiny(), _images()
    ref = extract_features(model, imgs, flip=True)
    for dtype in ("bf16", "fp16"):
        out = extract_features(model, imgs, flip=True, amp=True, amp_dtype=dtype, device="cpu")
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, ref, atol=5e-2, rtol=0)
    with pytest.raises(ReIDError):
        extract_features(model, imgs, amp=True, amp_dtype="int8")


def test_extract_cli_onnx_matches_weights(tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from reidkit.cli import main
    from reidkit.export import export_model
    from reidkit.models.build import ModelConfig, build_model, save_model

    cfg = ModelConfig(backbone="resnet18", pretrained=False)
    weights = save_model(tmp_path / "m.pth", build_model(cfg, num_classes=3), cfg, 3, input_size=(32, 16))
    onnx_file = export_model(weights, "onnx", tmp_path / "m.onnx")
    folder = tmp_path / "crops"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name in ["0001_c1s1_000001_00.jpg", "0002_c2s1_000002_00.jpg", "0003_c1s2_000003_00.png"]:
        Image.fromarray(rng.integers(0, 256, (40, 20, 3), dtype=np.uint8)).save(folder / name)
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert main(["extract", "--weights", str(weights), "--images", str(folder), "--out", str(a),
                 "--device", "cpu"]) == 0
    assert main(["extract", "--onnx", str(onnx_file), "--images", str(folder), "--out", str(b)]) == 0
    with np.load(a) as za, np.load(b) as zb:
        np.testing.assert_allclose(zb["features"], za["features"], atol=1e-4, rtol=0)
        assert list(za["paths"]) == list(zb["paths"])
        np.testing.assert_array_equal(za["camids"], zb["camids"])
    # exactly one model source
    with pytest.raises(SystemExit):
        main(["extract", "--weights", str(weights), "--onnx", str(onnx_file), "--images", str(folder),
              "--out", str(b)])
    with pytest.raises(SystemExit):
        main(["extract", "--images", str(folder), "--out", str(b)])
    assert main(["extract", "--onnx", str(tmp_path / "missing.onnx"), "--images", str(folder),
                 "--out", str(b)]) == 2
    assert main(["extract", "--onnx", str(weights), "--images", str(folder), "--out", str(b)]) == 2


def _records(pids, cams, tag):
    from reidkit.data.datasets import Record

    return [Record(path=f"/x/{tag}{i}.jpg", pid=p, camid=c, dataset="toy") for i, (p, c) in enumerate(zip(pids, cams))]


def test_evaluate_from_features_writes_metrics(tmp_path):
    from reidkit.evaluation.evaluator import evaluate

    ds = SimpleNamespace(name="toy", query=_records([1, 2], [0, 0], "q"),
                         gallery=_records([2, 1, 0, 1], [1, 1, 1, 1], "g"))
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    g = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.0, 1.0], [-1.0, 0.0]])
    res = evaluate({"query": q, "gallery": g}, ds, out_dir=tmp_path)
    # query 1: ranked g0 (pid 2, wrong), g1 (match), g2, g3 (match) -> AP (1/2 + 2/4)/2 = 0.5
    # query 2: ranked g2 (pid 0), g1 (pid 1), g0 (match) -> AP 1/3 ; both rank-1 misses
    assert res["mAP"] == pytest.approx(100 * (0.5 + 1 / 3) / 2)
    assert res["rank1"] == 0.0 and res["rank5"] == 100.0
    assert res["mINP"] == pytest.approx(100 * (2 / 4 + 1 / 3) / 2)
    assert res["score"] == pytest.approx(res["mAP"] / 2)
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["mAP"] == 41.67 and written["num_query"] == 2 and written["units"] == "percent"
    rr = evaluate({"query": q, "gallery": g}, ds, rerank=True, k1=2, k2=1)
    assert 0.0 <= rr["mAP"] <= 100.0
    with pytest.raises(ReIDError):
        evaluate({"query": q[:1], "gallery": g}, ds)
