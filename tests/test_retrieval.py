"""Gallery index: build, add without rebuild, model identity checks, camera exclusion, re-ranking, IVF/IVF-PQ/HNSW,
entries beyond images (tracklets, state, delete), check/repair of old galleries, CLI and its bad inputs."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from factories import tiny_checkpoint

from reidkit.cli import main
from reidkit.errors import ReIDError
from reidkit.retrieval.gallery import Gallery
from reidkit.retrieval.ann import make_faiss_index, refine_exact, set_search_params
from reidkit.retrieval.folder import parse_camera_frame


def _tiny_weights(path: Path, seed: int) -> Path:
    return tiny_checkpoint(path, seed=seed, classes=8)


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
    return {
        "root": root,
        "syn": syn,
        "gal": gal,
        "query": query,
        "qcam": qcam,
        "planted": planted,
        "pcam": pcam,
        "weights": weights,
        "other": other,
        "db": db,
        "gallery": gallery,
    }


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
        row = conn.execute(
            "SELECT camid, frame_start, width, height, kind FROM entries WHERE path = ?",
            (str(data["planted"].resolve()),),
        ).fetchone()
        model = conn.execute("SELECT identity, feat_dim, input_h, input_w FROM model").fetchone()
        ids = [r[0] for r in conn.execute("SELECT id FROM entries ORDER BY id")]
        n_vec = conn.execute("SELECT COUNT(*) FROM vectors WHERE length(vec) = 512 * 4").fetchone()[0]
        gen = conn.execute("SELECT value FROM info WHERE key = 'generation'").fetchone()[0]
    assert row == (data["pcam"], 1, 64, 128, "image")
    assert n_vec == len(g) and gen == "1" and g.generation == 1
    from reidkit.export import file_sha256

    assert model == ("sha256:" + file_sha256(data["weights"])[:16], 512, 64, 32)
    assert ids == list(range(len(g)))
    assert (data["db"] / "index.g1.faiss").is_file()
    # the stored vectors are the features the index searches
    np.testing.assert_allclose(g.features([0]), g.index.reconstruct(0)[None], atol=1e-6)


def test_search_options_follow_search_features_parameters():
    """Gallery.search_features builds SearchOptions from its parameters in order: the two lists stay the same."""
    import dataclasses
    import inspect

    from reidkit.retrieval.search import SearchOptions

    params = list(inspect.signature(Gallery.search_features).parameters.values())[2:]
    fields = dataclasses.fields(SearchOptions)
    assert [(p.name, p.default) for p in params] == [(f.name, f.default) for f in fields]


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
    from reidkit.inference import IMAGENET_IDENTITY, ModelIdentity

    return ModelIdentity(IMAGENET_IDENTITY, "imagenet", 1280, (256, 128), (0.5,) * 3, (0.5,) * 3)


def _clustered(n: int, d: int, centers: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, d)).astype(np.float32)
    x = c[rng.integers(centers, size=n)] + 0.6 * rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("kind", ["ivf", "ivfpq", "hnsw"])
def test_approximate_indexes_find_most_exact_neighbours(kind):
    x = _clustered(4000, 64, 40, seed=0)
    q = _clustered(100, 64, 40, seed=1)
    exact = make_faiss_index("flat", 64)
    exact.add_with_ids(x, np.arange(len(x)))
    approx = make_faiss_index(kind, 64, train=x)
    approx.add_with_ids(x, np.arange(len(x)))
    set_search_params(approx, nprobe=16, ef_search=128)
    _, truth = exact.search(q, 10)
    if kind == "ivfpq":  # PQ candidates re-scored with the exact vectors, as the gallery does from its store
        _, cand = approx.search(q, 80)
        _, got = refine_exact(q, cand, lambda ids: x[ids], 10)
    else:
        _, got = approx.search(q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(truth, got)])
    assert recall >= 0.9, recall


def test_refine_exact_matches_brute_force_over_candidates():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, 8)).astype(np.float32)
    q = rng.standard_normal((2, 8)).astype(np.float32)
    cand = np.array([[4, 9, 17, -1, 30], [1, 2, -1, -1, -1]])
    scores, ids = refine_exact(q, cand, lambda i: x[i], 3)
    for b in range(2):
        c = cand[b][cand[b] >= 0]
        order = sorted(c.tolist(), key=lambda i: -float(x[i] @ q[b]))[:3]
        assert ids[b][: len(order)].tolist() == order
        np.testing.assert_allclose(scores[b][: len(order)], [x[i] @ q[b] for i in order], rtol=1e-6)
    assert ids[1][2] == -1 and scores[1][2] == -np.inf  # fewer candidates than k: padded


@pytest.mark.parametrize("kind", ["ivf", "ivfpq", "hnsw", "approx"])
def test_gallery_with_approximate_index(data, tmp_path, kind):
    from reidkit.retrieval.ann import DEFAULT_APPROX_INDEX

    g = Gallery.build(data["gal"], tmp_path / kind, index=kind, extractor=data["gallery"].extractor)
    assert g.info["index_kind"] == (DEFAULT_APPROX_INDEX if kind == "approx" else kind)
    res = Gallery.open(tmp_path / kind, extractor=g.extractor).search(str(data["query"]), k=3, rerank=True)
    assert res[0]["path"] == str(data["planted"].resolve())


def test_cli_build_search_refuse(data, tmp_path, capsys):
    db = tmp_path / "clidb"
    assert (
        main(["index", "build", "--images", str(data["gal"]), "--db", str(db), "--weights", str(data["weights"])]) == 0
    )
    out = capsys.readouterr().out
    assert "1 unreadable skipped" in out
    assert main(["index", "build", "--images", str(data["gal"]), "--db", str(db)]) == 2
    assert "already holds a gallery" in capsys.readouterr().err
    assert (
        main(
            ["search", "--db", str(db), "--image", str(data["query"]), "--topk", "3", "--exclude-same-camera", "--json"]
        )
        == 0
    )
    res = json.loads(capsys.readouterr().out)["results"]
    assert res[0]["path"] == str(data["planted"].resolve()) and len(res) == 3
    assert all(r["camid"] != data["qcam"] for r in res)
    assert main(["search", "--db", str(db), "--image", str(data["query"]), "--topk", "2"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["rank", "id", "score"] and table[1].endswith(data["planted"].name)
    want_cam = f"c{res[0]['camid'] + 1}"  # the file's own camera name (Market 'c1' is camid 0)
    assert table[1].split()[3] == want_cam
    assert main(["search", "--db", str(db), "--image", str(data["query"]), "--topk", "3", "--rerank"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0].split()[2] == "rr-dist"  # prints the distance the order follows
    dists = [float(r.split()[2]) for r in rows[1:]]
    assert dists == sorted(dists)
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


# ----------------------------------------------------------------------------- bad input and formats


def _one_error(err: str, *needles: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["serve", "--db", "/nonexistent/db", "--port", "99999"], ["--port", "99999"]),
        (["serve", "--db", "/nonexistent/db", "--port", "0"], ["--port"]),
        (["serve", "--db", "/nonexistent/db", "--workers", "0"], ["--workers", "got 0"]),
        (["serve", "--db", "/nonexistent/db", "--max-upload-mb", "0"], ["--max-upload-mb"]),
        (
            ["index", "build", "--images", "IMAGES", "--db", "DB", "--index", "ivf", "--nlist", "0"],
            ["--nlist", "got 0"],
        ),
        (
            ["index", "build", "--images", "IMAGES", "--db", "DB", "--index", "ivf", "--nprobe", "0"],
            ["--nprobe", "got 0"],
        ),
        (["index", "build", "--images", "IMAGES", "--db", "DB", "--index", "ivfpq", "--pq-m", "0"], ["--pq-m"]),
        (
            ["index", "build", "--images", "IMAGES", "--db", "DB", "--index", "ivfpq", "--pq-m", "7"],
            ["--pq-m 7", "512"],
        ),
        (
            ["index", "build", "--images", "IMAGES", "--db", "DB", "--index", "ivf", "--nlist", "100000"],
            ["--nlist 100000"],
        ),
        (["search", "--db", "DB0", "--image", "QUERY", "--nprobe", "0"], ["--nprobe", "got 0"]),
        (["index", "check", "--db", "/nonexistent/db"], ["/nonexistent/db", "not a gallery"]),
        (["index", "delete", "--db", "DB0"], ["delete"]),
    ],
)
def test_bad_cli_input(data, tmp_path, capsys, argv, needles):
    """Exit 2, one `error:` line naming the option or path, no traceback; number checks come before any model load."""
    subst = {
        "IMAGES": str(data["gal"]),
        "DB": str(tmp_path / "new"),
        "DB0": str(data["db"]),
        "QUERY": str(data["query"]),
    }
    argv = [subst.get(a, a) for a in argv]
    if argv[:2] == ["index", "build"]:
        argv += ["--weights", str(data["weights"])]
    assert main(argv) == 2
    _one_error(capsys.readouterr().err, *needles)
    assert not (tmp_path / "new").exists() or not any((tmp_path / "new").iterdir())


def test_zero_byte_image_skipped_counted_or_strict(data, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in sorted(data["gal"].glob("0*.jpg"))[1:5]:
        shutil.copy(p, folder / p.name)
    (folder / "0099_c1s1_000001_01.jpg").write_bytes(b"")
    db = tmp_path / "db"
    assert main(["index", "build", "--images", str(folder), "--db", str(db), "--weights", str(data["weights"])]) == 0
    out = capsys.readouterr().out
    assert "4 images added" in out and "1 unreadable skipped" in out and "0099_c1s1_000001_01.jpg" in out
    assert (
        main(
            [
                "index",
                "build",
                "--images",
                str(folder),
                "--db",
                str(tmp_path / "strict"),
                "--strict",
                "--weights",
                str(data["weights"]),
            ]
        )
        == 2
    )
    _one_error(capsys.readouterr().err, "0099_c1s1_000001_01.jpg", "zero-byte", "strict")
    assert not (tmp_path / "strict").exists()
    assert not list(tmp_path.glob(".strict.*"))  # the temp build folder is removed


def test_library_errors_name_the_thing_not_a_cli_flag(data, tmp_path, capsys):
    """issue 21: the Python API names the images folder, the image or the weights, never `--images:` /
    `--weights:`; the CLI still prints one error line naming the file."""
    from reidkit.inference import FeatureExtractor

    empty, bad, zero = tmp_path / "empty", tmp_path / "bad", tmp_path / "zero"
    for d in (empty, bad, zero):
        d.mkdir()
    (bad / "0001_c1s1_000001_01.jpg").write_bytes(b"not an image")
    shutil.copy(data["query"], zero / "0001_c1s1_000001_01.jpg")
    (zero / "0002_c1s1_000001_01.jpg").write_bytes(b"")
    cases = [
        (
            lambda: Gallery.build(tmp_path / "nowhere", tmp_path / "db1", weights=data["weights"]),
            f"images folder {tmp_path / 'nowhere'} is not a folder",
        ),
        (lambda: Gallery.build(empty, tmp_path / "db2", weights=data["weights"]), f"images folder {empty}: no image"),
        (
            lambda: Gallery.build(bad, tmp_path / "db3", weights=data["weights"]),
            f"images folder {bad}: none of its 1 images could be read",
        ),
        (
            lambda: Gallery.build(zero, tmp_path / "db4", weights=data["weights"], strict=True),
            f"image {zero / '0002_c1s1_000001_01.jpg'} cannot be read (a zero-byte file)",
        ),
        (lambda: FeatureExtractor.load(tmp_path / "missing.pth"), f"weights {tmp_path / 'missing.pth'} is not a file"),
        (lambda: FeatureExtractor.load("resnet50_nosuch"), "weights 'resnet50_nosuch' is neither a file nor"),
    ]
    for call, start in cases:
        with pytest.raises(ReIDError) as info:
            call()
        assert str(info.value).startswith(start), (start, str(info.value))
    assert (
        main(
            [
                "index",
                "build",
                "--images",
                str(tmp_path / "nowhere"),
                "--db",
                str(tmp_path / "db5"),
                "--weights",
                str(data["weights"]),
            ]
        )
        == 2
    )
    _one_error(capsys.readouterr().err, str(tmp_path / "nowhere"))


def test_pgm_ppm_gif_crops_are_indexed(data, tmp_path):
    from PIL import Image

    folder = tmp_path / "mixed"
    folder.mkdir()
    src = sorted(data["gal"].glob("0*.jpg"))[1:7]
    exts = [".pgm", ".ppm", ".gif", ".pgm", ".ppm", ".gif"]
    for p, ext in zip(src, exts):
        im = Image.open(p)
        (im.convert("L") if ext == ".pgm" else im.convert("RGB")).save(folder / (p.stem + ext))
    g = Gallery.build(folder, tmp_path / "db", extractor=data["gallery"].extractor)
    assert len(g) == 6 and g.last_report["corrupt"] == 0
    assert sorted(Path(e["path"]).suffix for e in g.entries()) == sorted(exts)
    q = str(folder / (src[1].stem + ".ppm"))
    assert g.search(q, k=1)[0]["path"] == q


def test_entries_state_delete_and_fields(data, tmp_path):
    """The video-ingestion contract: tracklet entries with every field, state in the same commit, delete by key."""
    db = tmp_path / "db"
    shutil.copytree(data["db"], db)
    g = Gallery.open(db, extractor=data["gallery"].extractor)
    n0, gen0 = len(g), g.generation
    rng = np.random.default_rng(0)
    f = rng.standard_normal((3, 512)).astype(np.float32)
    ents = [
        {
            "path": "/videos/cam1.mp4",
            "kind": "tracklet",
            "tracklet": f"cam1:{i}",
            "camera": "cam1",
            "camid": 0,
            "frame_start": 10 * i,
            "frame_end": 10 * i + 9,
            "t_start": i / 2,
            "t_end": i / 2 + 0.4,
            "meta": {"boxes": [[1, 2, 3, 4]], "thumbs": [f"t{i}.jpg"]},
        }
        for i in range(3)
    ]
    ids = g.add_entries(f, ents, state={"video:cam1": {"frame": 30}})
    assert ids == list(range(n0, n0 + 3)) and g.generation == gen0 + 1 and len(g) == n0 + 3
    assert g.get_state("video:cam1") == {"frame": 30} and g.get_state("nope") is None
    hit = g.search(f[1], k=1, kind="tracklet")[0]
    assert hit == {
        "id": ids[1],
        "path": "/videos/cam1.mp4",
        "score": pytest.approx(1.0, abs=1e-5),
        "camid": 0,
        "camera": "cam1",
        "kind": "tracklet",
        "tracklet": "cam1:1",
        "frame_start": 10,
        "frame_end": 19,
        "t_start": 0.5,
        "t_end": pytest.approx(0.9),
        "meta": {"boxes": [[1, 2, 3, 4]], "thumbs": ["t1.jpg"]},
    }
    assert all(r["kind"] == "image" for r in g.search(f[1], k=5, kind="image"))
    assert all(r["camera"] != "cam1" for r in g.search(f[1], k=50, exclude_camera="cam1"))
    with pytest.raises(ReIDError, match="tracklet key is already in the gallery"):
        g.add_entries(f[:1], [{"path": "/x.mp4", "kind": "tracklet", "tracklet": "cam1:0"}])
    with pytest.raises(ReIDError, match=r"entries\[0\]: unknown key 'bogus'"):
        g.add_entries(f[:1], [{"path": "/x.mp4", "bogus": 1}])
    with pytest.raises(ReIDError, match=r"shape \(2, 512\)"):
        g.add_entries(f, ents[:2])
    assert len(g) == n0 + 3 and g.generation == gen0 + 1  # refused writes wrote nothing
    assert [e["tracklet"] for e in g.entries(kind="tracklet", camera="cam1")] == ["cam1:0", "cam1:1", "cam1:2"]
    assert g.delete(tracklet="cam1:1") == 1 and g.generation == gen0 + 2
    assert g.search(f[1], k=1, kind="tracklet")[0]["tracklet"] != "cam1:1"
    first = g.entries(kind="image")[0]
    assert g.delete(path=first["path"]) == 1 and g.record(first["id"]) is None
    assert g.delete(camera="cam1") == 2 and len(g) == n0 - 1
    assert g.delete(ids=[10**6]) == 0
    # ids are never reused after a delete
    assert g.add_entries(f[:1], [{"path": "/y.mp4", "kind": "tracklet", "tracklet": "y"}]) == [n0 + 3]
    with pytest.raises(ReIDError, match="refusing to delete the whole gallery"):
        g.delete()


def test_cli_delete_and_check(data, tmp_path, capsys):
    db = tmp_path / "db"
    shutil.copytree(data["db"], db)
    g = Gallery.open(db)
    cams = [e["camera"] for e in g.entries()]
    n_c1 = cams.count("c1")
    assert n_c1 > 0
    assert main(["index", "delete", "--db", str(db), "--camera", "c1"]) == 0
    assert f"{n_c1} {'entry' if n_c1 == 1 else 'entries'} deleted" in capsys.readouterr().out  # 1 entry
    assert main(["index", "check", "--db", str(db), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["consistent"] and rep["entries"] == len(cams) - n_c1 and rep["generation"] == 2
    assert rep["cache"] == "ok" and rep["leftover_files"] == []


def test_create_empty_gallery_then_add_entries(data, tmp_path):
    ext = data["gallery"].extractor
    g = Gallery.create(tmp_path / "video_db", ext)
    assert len(g) == 0 and g.generation == 1 and g.search_features(np.ones((1, 512), np.float32), k=3) == [[]]
    f = np.eye(512, dtype=np.float32)[:2]
    ids = g.add_entries(f, [{"path": "/v.mp4", "kind": "tracklet", "tracklet": f"t{i}"} for i in range(2)])
    assert ids == [0, 1] and g.search(f[1], k=1)[0]["tracklet"] == "t1"
    assert Gallery.open(tmp_path / "video_db").generation == 2
    with pytest.raises(ReIDError, match="already holds a gallery"):
        Gallery.create(tmp_path / "video_db", ext)
    with pytest.raises(ReIDError, match="needs training features"):
        Gallery.create(tmp_path / "other", ext, index="ivf")


def test_build_options_one_checked_object():
    """Gallery.build's settings are one frozen BuildOptions: keyword changes over it, "approx" resolved, every
    count checked (an OptionError naming the parameter, printed as the flag by the CLI), an unknown name refused."""
    import dataclasses

    from reidkit.errors import OptionError
    from reidkit.retrieval.ann import DEFAULT_APPROX_INDEX, DEFAULT_NPROBE
    from reidkit.retrieval.gallery import BuildOptions

    base = BuildOptions(index="hnsw", batch_size=8)
    o = BuildOptions.of(base, index="approx", nprobe=4)
    assert (o.index, o.nprobe, o.batch_size, base.index) == (DEFAULT_APPROX_INDEX, 4, 8, "hnsw")
    info = BuildOptions().index_info()
    assert info["index_kind"] == "flat" and info["nprobe"] == str(DEFAULT_NPROBE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.index = "flat"
    with pytest.raises(OptionError, match=r"^nlist: must be >= 1, got 0$"):
        BuildOptions.of(base, nlist=0)
    with pytest.raises(OptionError, match=r"^index: expected one of"):
        BuildOptions.of(index="kd-tree")
    with pytest.raises(TypeError, match="unknown gallery build options: nlists"):
        BuildOptions.of(nlists=4)
