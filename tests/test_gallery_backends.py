"""The gallery contract on both backends, from one parametrised fixture: the embedded default (a folder:
SQLite generations + faiss cache) and Milvus (``milvus:<file>.db``: Milvus Lite in-process).

Build, add, delete by id / tracklet / camera / path, search with filters (camera, kind, time), re-ranking,
tracklet entries and state, the service's answers and its follower, a killed and re-run writer; and the
issue's must-show: the CLI on ``--db milvus:./g.db`` answers exactly as the embedded default on the same crops.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import procs
import pytest
from factories import tiny_checkpoint

pytest.importorskip("pymilvus")
pytest.importorskip("milvus_lite")

from reidkit.errors import ReIDError  # noqa: E402
from reidkit.retrieval.folder import parse_camera_frame  # noqa: E402
from reidkit.retrieval.gallery import Gallery  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BACKENDS = ["embedded", "milvus"]


def _db(root: Path, backend: str, name: str) -> str:
    return str(root / name) if backend == "embedded" else f"milvus:{root / (name + '.db')}"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Tiny model, a synthetic crop folder with an exact copy of a query planted in another camera."""

    from reidkit.data.synthetic import generate

    root = tmp_path_factory.mktemp("backends")
    syn = generate(root / "syn", ids=6, images_per_id=3, cams=3, seed=0, workers=1)
    gal = root / "gallery"
    shutil.copytree(syn / "bounding_box_test", gal)
    query = sorted((syn / "query").glob("*.jpg"))[0]
    qcam = parse_camera_frame(query)[0]
    pcam = (qcam + 1) % 3
    planted = gal / f"9999_c{pcam + 1}s1_000001_01.jpg"
    shutil.copy(query, planted)
    more = root / "more"
    more.mkdir()
    for p in sorted((syn / "query").glob("*.jpg"))[1:4]:
        shutil.copy(p, more / p.name)
    weights = tiny_checkpoint(root / "tiny.pth", classes=8)
    from reidkit.inference import FeatureExtractor

    return {
        "root": root,
        "gal": gal,
        "more": more,
        "query": query,
        "qcam": qcam,
        "pcam": pcam,
        "planted": str(planted.resolve()),
        "weights": weights,
        "galleries": {},
        "ext": FeatureExtractor.load(weights),
    }


def _built(data, backend: str) -> Gallery:
    """The same crops built into `backend` once per module."""
    if backend not in data["galleries"]:
        data["galleries"][backend] = Gallery.build(
            data["gal"], _db(data["root"], backend, "built"), extractor=data["ext"]
        )
    return data["galleries"][backend]


@pytest.fixture(params=BACKENDS)
def gallery(request, data) -> Gallery:
    return _built(data, request.param)


def _fresh(data, backend: str, name: str) -> Gallery:
    return Gallery.build(data["gal"], _db(data["root"], backend, name), extractor=data["ext"])


def test_build_search_filters_rerank(gallery, data):
    n_files = len(list(data["gal"].glob("*.jpg")))
    assert len(gallery) == n_files and gallery.last_report["added"] == n_files
    res = gallery.search(str(data["query"]), k=5)
    assert res[0]["path"] == data["planted"] and res[0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert res[0]["camid"] == data["pcam"] and res[0]["camera"] == f"c{data['pcam'] + 1}"
    assert [r["score"] for r in res] == sorted((r["score"] for r in res), reverse=True)
    kept = gallery.search(str(data["query"]), k=50, exclude_camid=data["pcam"])
    assert kept and data["planted"] not in {r["path"] for r in kept}
    assert all(r["camid"] != data["pcam"] for r in kept)
    only = gallery.search(str(data["query"]), k=50, camera=f"c{data['pcam'] + 1}")
    assert only[0]["path"] == data["planted"] and {r["camera"] for r in only} == {f"c{data['pcam'] + 1}"}
    rr = gallery.search(str(data["query"]), k=5, rerank=True)
    assert rr[0]["path"] == data["planted"]
    assert [r["rerank_distance"] for r in rr] == sorted(r["rerank_distance"] for r in rr)
    ids = [e["id"] for e in gallery.entries()]
    assert len(ids) == len(gallery) and ids == sorted(ids)
    feats = gallery.features(ids[:3])
    assert [r[0]["id"] for r in gallery.search_features(feats, k=1)] == ids[:3]
    assert gallery.record(ids[0])["path"] == gallery.entries()[0]["path"]


def test_backends_agree(data):
    """Both backends rank the same crops the same way (exact search, same features)."""
    a = _built(data, "embedded").search(str(data["query"]), k=10)
    b = _built(data, "milvus").search(str(data["query"]), k=10)
    assert [r["path"] for r in a] == [r["path"] for r in b]
    np.testing.assert_allclose([r["score"] for r in a], [r["score"] for r in b], atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_add_delete_tracklets_state(data, backend):
    g = _fresh(data, backend, f"rw_{backend}")
    n0, gen0 = len(g), g.generation
    rep = g.add(data["more"])
    assert rep["added"] == 3 and len(g) == n0 + 3 and g.generation == gen0 + 1
    assert g.add(data["more"])["added"] == 0 and g.generation == gen0 + 1  # nothing new: no write
    dim = g.identity.feat_dim
    f = np.random.default_rng(0).standard_normal((4, dim)).astype(np.float32)
    ents = [
        {
            "path": "/videos/cam9.mp4",
            "kind": "tracklet",
            "tracklet": f"cam9:{i}",
            "camera": "cam9" if i < 3 else "cam8",
            "frame_start": 10 * i,
            "frame_end": 10 * i + 9,
            "t_start": float(i),
            "t_end": i + 0.5,
            "meta": {"boxes": [[1, 2, 3, 4]]},
        }
        for i in range(4)
    ]
    ids = g.add_entries(f, ents, state={"video:cam9": {"frame": 40}})
    assert len(set(ids)) == 4 and len(g) == n0 + 7 and g.get_state("video:cam9") == {"frame": 40}
    assert g.get_state("nope") is None
    hit = g.search(f[1], k=1, kind="tracklet")[0]
    assert hit["tracklet"] == "cam9:1" and hit["meta"] == {"boxes": [[1, 2, 3, 4]]} and hit["frame_end"] == 19
    assert all(r["kind"] == "image" for r in g.search(f[1], k=5, kind="image"))
    assert all(r["camera"] != "cam9" for r in g.search(f[1], k=50, exclude_camera="cam9"))
    timed = g.search(f[1], k=50, t_min=0.9, t_max=2.1)
    assert sorted(r["tracklet"] for r in timed) == ["cam9:1", "cam9:2"]
    assert [e["tracklet"] for e in g.entries(kind="tracklet", camera="cam9")] == [
        "cam9:0",
        "cam9:1",
        "cam9:2",
    ] or sorted(e["tracklet"] for e in g.entries(kind="tracklet", camera="cam9")) == ["cam9:0", "cam9:1", "cam9:2"]
    assert g.delete(tracklet="cam9:1") == 1 and len(g) == n0 + 6
    assert g.delete(camera="cam9") == 2 and g.delete(ids=[ids[3]]) == 1
    first = g.entries(kind="image")[0]
    assert g.delete(path=first["path"]) == 1 and g.record(first["id"]) is None
    with pytest.raises(ReIDError, match="no entry has camera 'nowhere'; the gallery's cameras: c1, c2, c3"):
        g.delete(camera="nowhere")
    with pytest.raises(ReIDError, match="refusing to delete the whole gallery"):
        g.delete()
    assert len(g) == n0 + 3 - 1
    rep = g.store.check()
    assert rep["consistent"] and rep["entries"] == len(g)


@pytest.mark.parametrize("backend", BACKENDS)
def test_delete_unknown_filter_lists_what_exists(data, backend, capsys, monkeypatch):
    """Issue 31: the README's `--camera cam3` on Market-style names (`c3`) deleted 0 entries with exit 0; an
    unknown camera, tracklet or path is one error naming the parameter and listing what exists (capped)."""
    from reidkit.errors import OptionError

    g = _fresh(data, backend, f"unk_{backend}")
    n0, gen0 = len(g), g.generation
    with pytest.raises(OptionError, match=r"^camera: no entry has camera 'cam3'; the gallery's cameras: c1, c2, c3$"):
        g.delete(camera="cam3")
    with pytest.raises(OptionError, match=r"^tracklet: no entry has tracklet 'x:1'; the gallery's tracklets: none$"):
        g.delete(tracklet="x:1")
    f = np.random.default_rng(0).standard_normal((25, g.identity.feat_dim)).astype(np.float32)
    g.add_entries(
        f, [{"path": "/v.mp4", "kind": "tracklet", "tracklet": f"t{i:02d}", "camera": "c1"} for i in range(25)]
    )
    with pytest.raises(OptionError) as e:
        g.delete(tracklet="t99")
    assert e.value.option == "tracklet"
    assert str(e.value).endswith(", ".join(f"t{i:02d}" for i in range(20)) + ", ... and 5 more")
    with pytest.raises(OptionError, match=r"^path: no entry has path '/nope.jpg'; the gallery's paths: .*/v\.mp4"):
        g.delete(path="/nope.jpg")
    assert g.delete(camera="c3", tracklet="t01") == 0  # each exists, no entry has both: nothing to name
    with pytest.raises(OptionError, match=r"^camera: no entry has camera 'cam3'; the gallery's cameras: c1, c2, c3$"):
        g.search(f[0], k=3, camera="cam3")  # a search's keep-one-camera filter too
    assert g.search(f[0], k=3, camera="c3", kind="tracklet") == []  # a camera that exists: just no match
    assert len(g) == n0 + 25 and g.generation == gen0 + 1
    monkeypatch.chdir(data["root"])
    from reidkit.cli import main

    capsys.readouterr()
    assert main(["index", "delete", "--db", str(g.db), "--camera", "cam3"]) == 2
    err = capsys.readouterr().err
    assert "error: --camera cam3" not in err and "error: --camera: no entry has camera 'cam3'" in err, err
    assert main(["index", "delete", "--db", str(g.db), "--tracklet", "t03"]) == 0
    assert "index delete: 1 entry deleted from" in capsys.readouterr().out
    assert main(["index", "delete", "--db", str(g.db), "--camera", "c1"]) == 0
    out = capsys.readouterr().out
    assert int(out.split("index delete: ")[1].split()[0]) > 24 and " entries deleted from" in out, out


@pytest.mark.parametrize("backend", BACKENDS)
def test_service_answers_and_follows(data, backend):
    from fastapi.testclient import TestClient

    from reidkit.retrieval.service import create_app

    g = _fresh(data, backend, f"svc_{backend}")
    app = create_app(Gallery.open(g.db, extractor=g.extractor), poll_s=0.1)
    with TestClient(app) as c:
        r = c.post("/search", files={"file": ("q.jpg", data["query"].read_bytes(), "image/jpeg")})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["results"][0]["path"] == data["planted"]
        assert c.get("/health").json()["gallery_size"] == len(g)
        g.delete(path=data["planted"])  # another writer (here: another Gallery object) changes the gallery
        follower_g = Gallery.open(g.db, extractor=g.extractor)
        assert not follower_g.changed()
        import time

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and c.get("/health").json()["gallery_size"] != len(g):
            time.sleep(0.1)
        assert c.get("/health").json()["gallery_size"] == len(g)
        res = c.post("/search", files={"file": ("q.jpg", data["query"].read_bytes(), "image/jpeg")}).json()["results"]
        assert data["planted"] not in {x["path"] for x in res}


_WRITER = r"""
import sys, numpy as np
from reidkit.retrieval.gallery import Gallery
g = Gallery.open(sys.argv[1])
dim = g.identity.feat_dim
done = g.get_state("video:x") or {"chunk": 0}
for chunk in range(done["chunk"], 4):
    f = np.random.default_rng(chunk).standard_normal((3, dim)).astype(np.float32)
    g.add_entries(f, [{"path": "/v/x.mp4", "kind": "tracklet", "tracklet": f"x:{chunk}:{j}", "camera": "x"}
                      for j in range(3)], state={"video:x": {"chunk": chunk + 1}})
print("done", len(g.entries(kind="tracklet")))
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_killed_writer_rerun_loses_and_duplicates_nothing(data, backend, tmp_path):
    """A writer killed inside a write (before its commit / state), re-run: every tracklet exactly once."""
    db = _db(tmp_path, backend, "kill")
    g = Gallery.create(db, data["ext"])
    del g
    if backend == "milvus":  # Milvus Lite: one process per file; let the writer subprocess have it
        from reidkit.retrieval.backends.milvus import client as milvus_client

        milvus_client.close_client(db)
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "REIDKIT_TEST_CRASH_AT": "before_commit"}
    p = procs.run([sys.executable, str(script), db], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 137 and "done" not in p.stdout, p.stderr  # killed in its first write, not finished
    env.pop("REIDKIT_TEST_CRASH_AT")
    p = procs.run([sys.executable, str(script), db], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "done 12" in p.stdout, p.stderr
    g = Gallery.open(db)
    trk = [e["tracklet"] for e in g.entries(kind="tracklet")]
    assert sorted(trk) == sorted(f"x:{c}:{j}" for c in range(4) for j in range(3))
    assert g.get_state("video:x") == {"chunk": 4}


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return procs.run(
        [sys.executable, "-m", "reidkit.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def _cli_here(args: list[str], cwd: Path, capsys, monkeypatch) -> subprocess.CompletedProcess:
    """The same CLI in this process (the embedded reference answers need no fresh process each)."""
    from reidkit.cli import main

    monkeypatch.chdir(cwd)
    capsys.readouterr()
    code = main(args)
    out, err = capsys.readouterr()
    monkeypatch.undo()
    return subprocess.CompletedProcess(args, code, out, err)


def test_must_show_cli_on_milvus_equals_embedded(data, tmp_path, capsys, monkeypatch):
    """`index build / search / index delete --db milvus:./g.db` (each a fresh `reidkit` process, as a user runs
    them) and the service answer as the embedded default (the reference, run by the CLI in this process)."""
    from fastapi.testclient import TestClient

    from reidkit.retrieval.service import create_app

    w = str(data["weights"])
    answers = {}
    for db in ("milvus:./g.db", "emb"):
        cli = _cli if db.startswith("milvus:") else lambda args, cwd: _cli_here(args, cwd, capsys, monkeypatch)
        p = cli(["index", "build", "--images", str(data["gal"]), "--db", db, "--weights", w], tmp_path)
        assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
        p = cli(["search", "--db", db, "--image", str(data["query"]), "--topk", "5", "--json"], tmp_path)
        assert p.returncode == 0, p.stderr
        answers[db] = json.loads(p.stdout)["results"]
        p = cli(["index", "delete", "--db", db, "--camera", "c2"], tmp_path)
        assert p.returncode == 0, p.stderr
        answers[db + " deleted"] = int(p.stdout.split("index delete: ")[1].split()[0])
    mil, emb = answers["milvus:./g.db"], answers["emb"]
    assert mil[0]["path"] == data["planted"] and len(mil) == 5
    assert [r["path"] for r in mil] == [r["path"] for r in emb]
    np.testing.assert_allclose([r["score"] for r in mil], [r["score"] for r in emb], atol=1e-5)
    assert answers["milvus:./g.db deleted"] == answers["emb deleted"] > 0
    p = _cli(["index", "check", "--db", "milvus:./g.db"], tmp_path)
    assert p.returncode == 0 and "consistent" in p.stdout, p.stderr

    served = {}
    for db in (f"milvus:{tmp_path / 'g.db'}", str(tmp_path / "emb")):
        with TestClient(create_app(db)) as c:
            r = c.post("/search", files={"file": ("q.jpg", data["query"].read_bytes(), "image/jpeg")})
            assert r.status_code == 200, r.text
            served[db] = r.json()["results"][:5]
    a, b = served.values()
    assert a[0]["path"] == data["planted"] if data["pcam"] != 1 else True  # c2 was deleted above
    assert [r["path"] for r in a] == [r["path"] for r in b]
    np.testing.assert_allclose([r["score"] for r in a], [r["score"] for r in b], atol=1e-5)
    assert all(r["camera"] != "c2" for r in a)


def test_missing_milvus_extra_is_one_error(monkeypatch, tmp_path, capsys):
    from reidkit.cli import main
    from reidkit.retrieval.backends.milvus import client as milvus_client

    monkeypatch.setitem(sys.modules, "pymilvus", None)
    monkeypatch.setattr(milvus_client, "_clients", {})
    with pytest.raises(ReIDError, match=r"pip install 'reidkit\[milvus\]'"):
        Gallery.open(f"milvus:{tmp_path / 'x.db'}")
    assert main(["index", "check", "--db", f"milvus:{tmp_path / 'x.db'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "pip install" in err and "Traceback" not in err


def test_collection_names_and_content_ids(tmp_path):
    from reidkit.retrieval.backends.milvus.client import entry_id

    a = entry_id({"kind": "tracklet", "tracklet": "cam1:7", "path": "/a.mp4"})
    assert a == entry_id({"kind": "tracklet", "tracklet": "cam1:7", "path": "/elsewhere.mp4"}) < 2**53
    assert entry_id({"kind": "image", "path": "/x.jpg"}) != entry_id({"kind": "image", "path": "/y.jpg"})
    with pytest.raises(ReIDError, match=r"^collection: "):
        Gallery.open(f"milvus:{tmp_path / 'x.db'}", collection="bad name;")
    with pytest.raises(ReIDError, match="applies to milvus"):
        Gallery.open(tmp_path, collection="people")
