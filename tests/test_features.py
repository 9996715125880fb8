"""Feature extraction (flip TTA, neck_feat, paths), the extract CLI and evaluate()."""

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from factories import tiny_checkpoint
import torch
from PIL import Image

from reidkit.errors import ReIDError
from reidkit.inference.features import extract_features


class Tiny(torch.nn.Module):
    """Not flip-invariant: a linear map of the flattened image; "before" is its negation."""

    def __init__(self, h=8, w=4, dim=5):
        super().__init__()
        self.fc = torch.nn.Linear(3 * h * w, dim)
        self.mean, self.std = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]
        self.feat_dim, self.uses_camera = dim, False

    def forward_features(self, x, cams=None):
        return x

    def forward_head(self, fmap, which="after", labels=None):
        f = self.fc(fmap.flatten(1))
        return f if which == "after" else -f

    def forward(self, x, cams=None):
        return self.forward_head(self.forward_features(x))


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


def test_neck_feat_chosen_by_forward_head_and_mode_restored():
    model, imgs = Tiny(), _images()
    model.train()
    a, _ = _manual(model, imgs)
    out = extract_features(model, imgs, flip=False, normalize=False, neck_feat="before")
    torch.testing.assert_close(out, -a, atol=1e-5, rtol=1e-5)
    assert model.training  # the caller's mode comes back
    with pytest.raises(ReIDError, match="neck_feat"):
        extract_features(model, imgs, neck_feat="middle")


def test_neck_feat_on_reid_model_never_mutates_it():
    """neck_feat="before" gives the pre-BN pooled feature through forward_head; the head is untouched."""
    from reidkit.models.build import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="resnet18", pretrained=False), 4).eval()
    with torch.no_grad():
        model.head.neck.bn.running_mean.uniform_(-0.2, 0.2)
    imgs = _images(3, 32, 16)
    x = (
        torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255.0 - torch.tensor(model.mean).view(1, 3, 1, 1)
    ) / torch.tensor(model.std).view(1, 3, 1, 1)
    with torch.no_grad():
        pooled = model.backbone.forward_features(x).mean(dim=(2, 3))
        after = model(x)
    before = extract_features(model, imgs, flip=False, normalize=False, neck_feat="before")
    torch.testing.assert_close(before, pooled, atol=1e-5, rtol=1e-5)
    same = extract_features(model, imgs, flip=False, normalize=False, neck_feat="after")
    torch.testing.assert_close(same, after, atol=1e-5, rtol=1e-5)
    assert model.head.neck_feat == "after" and not torch.allclose(before, after)


class _NoHead(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3 * 8 * 4, 5)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_neck_feat_on_model_without_forward_head_is_refused():
    with pytest.raises(ReIDError, match="forward_head"):
        extract_features(_NoHead(), _images(), neck_feat="before")
    assert extract_features(_NoHead(), _images()).shape == (6, 5)  # plain call needs no cams keyword


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
    assert (
        main(
            [
                "extract",
                "--weights",
                str(weights),
                "--images",
                str(tmp_path / "crops"),
                "--out",
                str(out),
                "--batch-size",
                "2",
            ]
        )
        == 0
    )
    with np.load(out) as z:
        assert z["features"].shape == (3, model.feat_dim)
        np.testing.assert_allclose(np.linalg.norm(z["features"], axis=1), 1.0, atol=1e-5)
        assert [Path(p).name for p in z["paths"]] == sorted(names)
        np.testing.assert_array_equal(z["camids"], [0, 2, 1])
        np.testing.assert_array_equal(z["pids"], [1, 2, 7])
    assert main(["extract", "--weights", str(weights), "--images", str(tmp_path / "nothing"), "--out", str(out)]) == 2


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

    weights = tiny_checkpoint(tmp_path / "m.pth", seed=None, classes=3, size=(32, 16), pooling="avg")
    onnx_file = export_model(weights, "onnx", tmp_path / "m.onnx")
    folder = tmp_path / "crops"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name in ["0001_c1s1_000001_00.jpg", "0002_c2s1_000002_00.jpg", "0003_c1s2_000003_00.png"]:
        Image.fromarray(rng.integers(0, 256, (40, 20, 3), dtype=np.uint8)).save(folder / name)
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert (
        main(["extract", "--weights", str(weights), "--images", str(folder), "--out", str(a), "--device", "cpu"]) == 0
    )
    assert main(["extract", "--onnx", str(onnx_file), "--images", str(folder), "--out", str(b)]) == 0
    with np.load(a) as za, np.load(b) as zb:
        np.testing.assert_allclose(zb["features"], za["features"], atol=1e-4, rtol=0)
        assert list(za["paths"]) == list(zb["paths"])
        np.testing.assert_array_equal(za["camids"], zb["camids"])
    # exactly one model source
    with pytest.raises(SystemExit):
        main(["extract", "--weights", str(weights), "--onnx", str(onnx_file), "--images", str(folder), "--out", str(b)])
    with pytest.raises(SystemExit):
        main(["extract", "--images", str(folder), "--out", str(b)])
    assert main(["extract", "--onnx", str(tmp_path / "missing.onnx"), "--images", str(folder), "--out", str(b)]) == 2
    assert main(["extract", "--onnx", str(weights), "--images", str(folder), "--out", str(b)]) == 2


def _records(pids, cams, tag):
    from reidkit.data.datasets import Record

    return [Record(path=f"/x/{tag}{i}.jpg", pid=p, camid=c, dataset="toy") for i, (p, c) in enumerate(zip(pids, cams))]


def test_evaluate_from_features_writes_metrics(tmp_path):
    from reidkit.evaluation.evaluator import evaluate

    ds = SimpleNamespace(
        name="toy", query=_records([1, 2], [0, 0], "q"), gallery=_records([2, 1, 0, 1], [1, 1, 1, 1], "g")
    )
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


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    # the one-line reports of steps finished before the error was found are no part of it
    rest = [ln for ln in err.splitlines() if not re.fullmatch(r".+: (?:[\d,]+ \w+ )?done in \d+\.\d s", ln)]
    assert len(rest) == 1 and rest[0].startswith("error: ") and "Traceback" not in err, err
    for n in needles:
        assert str(n) in err, (n, err)
    return err


@pytest.fixture()
def tiny_weights(tmp_path):

    return tiny_checkpoint(tmp_path / "m.pth", seed=None, classes=3, size=(32, 16), pooling="avg")


def _extract(weights, folder, out, *extra):
    from reidkit.cli import main

    return main(
        ["extract", "--weights", str(weights), "--images", str(folder), "--out", str(out), "--device", "cpu", *extra]
    )


def test_extract_skips_counts_and_reports_empty_images(tmp_path, tiny_weights, capsys):

    folder = tmp_path / "crops"
    folder.mkdir()
    rng = np.random.default_rng(0)
    good = ["0001_c1s1_000001_00.jpg", "0002_c2s1_000002_00.pgm"]  # PGM is read too
    Image.fromarray(rng.integers(0, 256, (40, 20, 3), dtype=np.uint8)).save(folder / good[0])
    Image.fromarray(rng.integers(0, 256, (40, 20), dtype=np.uint8)).save(folder / good[1])
    empty = folder / "0003_c1s1_000003_00.jpg"
    empty.write_bytes(b"")
    out = tmp_path / "f.npz"
    capsys.readouterr()
    assert _extract(tiny_weights, folder, out) == 0
    text = capsys.readouterr()
    assert "1 skipped" in text.out and str(empty) in text.err and "skipped 1" in text.err
    with np.load(out) as z:
        assert [Path(p).name for p in z["paths"]] == good and z["features"].shape == (2, 512)
        assert list(z["skipped"]) == [str(empty)]
        np.testing.assert_array_equal(z["camids"], [0, 1])
        np.testing.assert_array_equal(z["pids"], [1, 2])
    out.unlink()
    assert _extract(tiny_weights, folder, out, "--strict") == 2
    _one_line_error(capsys, empty, "--strict")
    assert not out.exists()


def test_extract_unwritable_out(tmp_path, tiny_weights, capsys):

    folder = tmp_path / "crops"
    folder.mkdir()
    Image.fromarray(np.zeros((32, 16, 3), np.uint8)).save(folder / "a.png")
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    for out in (blocker / "f.npz", tmp_path):
        capsys.readouterr()
        assert _extract(tiny_weights, folder, out) == 2
        _one_line_error(capsys, out, "--out")


def _market(tmp_path):
    rng = np.random.default_rng(0)
    base = tmp_path / "data" / "Market-1501-v15.09.15"
    layout = {
        "bounding_box_train": ["0005_c1s1_000001_00", "0005_c2s1_000002_00"],
        "query": ["0001_c1s1_000010_00"],
        "bounding_box_test": ["0001_c1s1_000020_00", "0001_c2s1_000021_00", "0002_c2s1_000022_00"],
    }
    for folder, names in layout.items():
        (base / folder).mkdir(parents=True)
        for name in names:
            Image.fromarray(rng.integers(0, 256, (16, 8, 3), dtype=np.uint8)).save(base / folder / f"{name}.jpg")
    return tmp_path / "data"


def test_visrank_bad_features_and_unwritable_out(tmp_path, capsys):
    from reidkit.cli import main

    root = _market(tmp_path)
    args = ["--dataset", "market1501", "--root", str(root)]
    text = tmp_path / "features.txt"
    text.write_text("1 2 3\n")
    npy = tmp_path / "features.npy"
    np.save(npy, np.zeros((2, 2)))
    for bad, needle in ((text, "not an .npz archive"), (npy, "single .npy array")):
        capsys.readouterr()
        assert main(["visrank", "--features", str(bad), *args, "--out", str(tmp_path / "vis")]) == 2
        err = _one_line_error(capsys, bad, needle)
        assert "pickled" not in err  # numpy's misleading wording is not passed on
    good = tmp_path / "f.npz"
    np.savez(good, query=np.ones((1, 4)), gallery=np.ones((3, 4)))
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    for out in (blocker, blocker / "vis"):
        capsys.readouterr()
        assert main(["visrank", "--features", str(good), *args, "--out", str(out)]) == 2
        _one_line_error(capsys, out, "--out")


def test_visrank_rank1_hit_skips_same_camera_junk(tmp_path, capsys):
    """Nearest gallery image is the query's identity in the query's camera (junk): still a rank-1 hit."""
    from reidkit.cli import main

    root = _market(tmp_path)
    # gallery order: 0001 c1 (junk: same pid, same cam), 0001 c2 (true match), 0002 c2 (wrong)
    npz = tmp_path / "f.npz"
    np.savez(npz, query=np.array([[1.0, 0.0]]), gallery=np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]]))
    out = tmp_path / "vis"
    assert (
        main(
            [
                "visrank",
                "--features",
                str(npz),
                "--dataset",
                "market1501",
                "--root",
                str(root),
                "--out",
                str(out),
                "--metric",
                "euclidean",
            ]
        )
        == 0
    )
    assert "mAP 100.00  rank-1 100.00" in capsys.readouterr().out
    page = (out / "index.html").read_text()
    row = [line for line in page.splitlines() if "query_00000.png" in line][0]
    assert "<td>100.0</td><td>yes</td>" in row
    from reidkit.evaluation.visualize import rank1_hit

    assert rank1_hit(["junk", "match", "wrong"]) and not rank1_hit(["junk", "wrong", "match"])
    assert not rank1_hit(["junk"]) and rank1_hit(["match"])


def test_evaluation_extract_features_is_a_deprecated_alias_of_the_inference_loop():
    import reidkit
    import reidkit.evaluation as ev
    from reidkit.inference.features import extract_features as loop

    with pytest.warns(DeprecationWarning, match="moved to reidkit.inference.features.extract_features"):
        assert ev.extract_features is loop
    assert reidkit.extract_features is loop
    with pytest.raises(AttributeError):
        ev.no_such_name
