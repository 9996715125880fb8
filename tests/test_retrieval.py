"""Gallery index: build, add without rebuild, model identity checks, camera exclusion, re-ranking, IVF/HNSW, CLI."""
from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from reidkit.cli import main
from reidkit.errors import ReIDError
from reidkit.retrieval.index import Gallery, make_faiss_index, parse_camera_frame


def _tiny_weights(path: Path, seed: int) -> Path:
    import torch

    from reidkit.models.build import ModelConfig, build_model, save_model

    torch.manual_seed(seed)
    cfg = ModelConfig(backbone="resnet18", pretrained=False, pooling="gem")
    return save_model(path, build_model(cfg, 8), cfg, 8, (64, 32))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A synthetic Market tree, a gallery folder with an exact copy of a query planted in another camera."""
    from reidkit.data.synthetic import generate

    root = tmp_path_factory.mktemp("retrieval")
    syn = generate(root / "syn", ids=8, images_per_id=4, cams=3, seed=0, workers=1)
    gal = root / "gallery"
    shutil.copytree(syn / "bounding_box_test", gal)
    query = sorted((syn / "query").glob("*.jpg"))[0]
    qcam = parse_camera_frame(query)[0]
    pcam = (qcam + 1) % 3  # a different camera, so excluding the query's camera keeps the plant
    planted = gal / f"9999_c{pcam + 1}s1_000001_01.jpg"
    shutil.copy(query, planted)
    (gal / "0000_c1s1_000002_01.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")  # corrupt
    weights = _tiny_weights(root / "tiny.pth", seed=1)
    other = _tiny_weights(root / "other.pth", seed=2)
    db = root / "db"
    gallery = Gallery.build(gal, db, weights=weights)
    return {"root": root, "syn": syn, "gal": gal, "query": query, "qcam": qcam, "planted": planted,
            "pcam": pcam, "weights": weights, "other": other, "db": db, "gallery": gallery}


def test_parse_camera_frame():
    assert parse_camera_frame("/x/0002_c1s1_000451_03.jpg") == (0, 451)
    assert parse_camera_frame("0001_c2_f0046182.jpg") == (1, 46182)
    assert parse_camera_frame("-1_c6s2_000010_01.jpg") == (5, 10)
    assert parse_camera_frame("cropped_person.png") == (None, None)


def test_build_counts_corrupt_and_stores_metadata(data):
    g: Gallery = data["gallery"]
    n_files = len(list(data["gal"].glob("*.jpg")))
    assert len(g) == n_files - 1
    assert g.last_report["corrupt"] == 1
    with sqlite3.connect(data["db"] / "meta.sqlite") as conn:
        row = conn.execute("SELECT camid, frame, width, height FROM images WHERE path = ?",
                           (str(data["planted"].resolve()),)).fetchone()
        model = conn.execute("SELECT identity, feat_dim, input_h, input_w FROM model").fetchone()
        ids = [r[0] for r in conn.execute("SELECT id FROM images ORDER BY id")]
    assert row == (data["pcam"], 1, 64, 128)
    from reidkit.export import file_sha256

    assert model == ("sha256:" + file_sha256(data["weights"])[:16], 512, 64, 32)
    assert ids == list(range(len(g)))
    assert (data["db"] / "index.faiss").is_file()


def test_search_returns_planted_first(data):
    g = Gallery.open(data["db"], extractor=data["gallery"].extractor)
    res = g.search(str(data["query"]), k=5)
    assert res[0]["path"] == str(data["planted"].resolve())
    assert res[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert res[0]["camid"] == data["pcam"]
    scores = [r["score"] for r in res]
    assert scores == sorted(scores, reverse=True) and len(res) == 5
    # by feature, and by decoded image, the same answer
    feat = g.features([res[0]["id"]])[0]
    assert g.search(feat, k=1)[0]["id"] == res[0]["id"]
    from reidkit.data.pipeline import read_image

    assert g.search(read_image(data["query"]), k=1)[0]["id"] == res[0]["id"]


def test_exclude_camera_and_rerank(data):
    g = data["gallery"]
    kept = g.search(str(data["query"]), k=50, exclude_camid=data["qcam"])
    assert kept and all(r["camid"] != data["qcam"] for r in kept)
    assert kept[0]["path"] == str(data["planted"].resolve())
    dropped = g.search(str(data["query"]), k=50, exclude_camid=data["pcam"])
    assert all(r["camid"] != data["pcam"] for r in dropped)
    assert str(data["planted"].resolve()) not in {r["path"] for r in dropped}
    rr = g.search(str(data["query"]), k=5, rerank=True)
    assert rr[0]["path"] == str(data["planted"].resolve())
    dists = [r["rerank_distance"] for r in rr]
    assert dists == sorted(dists)


def test_add_without_rebuild_and_model_mismatch(data, tmp_path):
    db = tmp_path / "db"
    shutil.copytree(data["db"], db)
    ext = data["gallery"].extractor
    g = Gallery.open(db, extractor=ext)
    before = {i: g.record(i)["path"] for i in range(len(g))}
    old_feats = g.features(list(before))
    again = g.add(data["gal"])  # everything already present; the corrupt file is retried and skipped again
    assert again["added"] == 0 and again["corrupt"] == 1
    assert again["skipped_existing"] == len(list(data["gal"].glob("*.jpg"))) - 1
    rep = g.add(data["syn"] / "query")
    n_new = len(list((data["syn"] / "query").glob("*.jpg")))
    assert rep["added"] == n_new and rep["total"] == len(before) + n_new
    reopened = Gallery.open(db, extractor=ext)
    assert len(reopened) == len(before) + n_new
    assert {i: reopened.record(i)["path"] for i in before} == before
    np.testing.assert_array_equal(reopened.features(list(before)), old_feats)
    # the query itself is now in the gallery under a new id
    top = reopened.search(str(data["query"]), k=2)
    assert {r["path"] for r in top} == {str(data["query"].resolve()), str(data["planted"].resolve())}

    with pytest.raises(ReIDError, match=r"sha256:[0-9a-f]{12}.*sha256:[0-9a-f]{12}") as err:
        Gallery.open(db, weights=data["other"])
    assert "other.pth" in str(err.value) and "tiny.pth" in str(err.value)
    with pytest.raises(ReIDError, match="model mismatch"):
        Gallery.open(db).add(data["syn"] / "bounding_box_train", weights=data["other"])
    assert len(Gallery.open(db)) == len(before) + n_new
    with pytest.raises(ReIDError, match="imagenet:efficientnet_lite0"):
        Gallery.open(db).check_identity(_imagenet_identity())


def _imagenet_identity():
    from reidkit.retrieval.index import IMAGENET_IDENTITY, ModelIdentity

    return ModelIdentity(IMAGENET_IDENTITY, "imagenet", 1280, (256, 128), (0.5,) * 3, (0.5,) * 3)


def _clustered(n: int, d: int, centers: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, d)).astype(np.float32)
    x = c[rng.integers(centers, size=n)] + 0.6 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_find_most_exact_neighbours(kind):
    x = _clustered(4000, 64, 40, seed=0)
    q = _clustered(100, 64, 40, seed=1)
    exact = make_faiss_index("flat", 64)
    exact.add(x)
    approx = make_faiss_index(kind, 64, train=x)
    approx.add(x)
    if kind == "ivf":
        approx.nprobe = 16
    else:
        approx.hnsw.efSearch = 128
    _, truth = exact.search(q, 10)
    _, got = approx.search(q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, got)])
    assert recall >= 0.9, recall


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_gallery_with_approximate_index(data, tmp_path, kind):
    g = Gallery.build(data["gal"], tmp_path / kind, index=kind, extractor=data["gallery"].extractor)
    assert g.info["index_kind"] == kind
    res = Gallery.open(tmp_path / kind, extractor=g.extractor).search(str(data["query"]), k=3, rerank=True)
    assert res[0]["path"] == str(data["planted"].resolve())


def test_cli_build_search_refuse(data, tmp_path, capsys):
    db = tmp_path / "clidb"
    assert main(["index", "build", "--images", str(data["gal"]), "--db", str(db),
                 "--weights", str(data["weights"])]) == 0
    out = capsys.readouterr().out
    assert "1 unreadable skipped" in out
    assert main(["index", "build", "--images", str(data["gal"]), "--db", str(db)]) == 2
    assert "already holds a gallery" in capsys.readouterr().err
    assert main(["search", "--db", str(db), "--image", str(data["query"]), "--topk", "3",
                 "--exclude-same-camera", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)["results"]
    assert res[0]["path"] == str(data["planted"].resolve()) and len(res) == 3
    assert all(r["camid"] != data["qcam"] for r in res)
    assert main(["search", "--db", str(db), "--image", str(data["query"]), "--topk", "2"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["rank", "id", "score"] and table[1].endswith(data["planted"].name)
    assert main(["search", "--db", str(db), "--image", str(data["query"]), "--weights", str(data["other"])]) == 2
    assert "model mismatch" in capsys.readouterr().err
    assert main(["index", "add", "--db", str(tmp_path / "nope"), "--images", str(data["gal"])]) == 2
    assert "is not a gallery" in capsys.readouterr().err


def test_imagenet_default_extractor(data, tmp_path):
    """No --weights: the offline ImageNet EfficientNet-Lite0 (GeM) embeds and finds the plant."""
    small = tmp_path / "small"
    small.mkdir()
    for p in sorted(data["gal"].glob("0*.jpg"))[:8] + [data["planted"]]:
        shutil.copy(p, small / p.name)
    db = tmp_path / "imagenet_db"
    g = Gallery.build(small, db)
    assert g.identity.name == "imagenet:efficientnet_lite0" and g.identity.feat_dim == 1280
    assert g.identity.input_size == (256, 128)
    res = g.search(str(data["query"]), k=3)
    assert res[0]["path"] == str((small / data["planted"].name).resolve())
    assert res[0]["score"] > res[1]["score"]
    with pytest.raises(ReIDError, match=r"imagenet:efficientnet_lite0.*sha256:"):
        Gallery.open(db, extractor=data["gallery"].extractor)
