"""One contract, every gallery backend: the embedded folder, Milvus Lite and a plug-in (tests/data/memory_backend.py,
loaded as a user loads one: ``--plugin FILE`` / reidkit.plugins.load_plugin).

Build, add, delete by id / path / tracklet / camera, search with filters, tracklets, state keys, re-adding the same
entries (idempotent ids replace, counter ids add), reopen, a writer killed mid-write (what the backend claims), and
the capabilities that ingestion, the cluster and the CLI read instead of the ``--db`` string.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import procs
import pytest
from factories import tiny_checkpoint

from reidkit.errors import OptionError, ReIDError
from reidkit.plugins import load_plugin
from reidkit.retrieval.backends import FILES_OUTSIDE, resolve
from reidkit.retrieval.gallery import Gallery

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "tests" / "data" / "memory_backend.py"
BACKENDS = ["embedded", "milvus", "memory"]
DIM = 8


def _has_milvus() -> bool:
    try:
        import milvus_lite  # noqa: F401
        import pymilvus  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(params=BACKENDS)
def backend(request):
    if request.param == "milvus" and not _has_milvus():
        pytest.skip("pymilvus / milvus-lite not installed")
    if request.param == "memory":
        load_plugin(str(PLUGIN))
    return request.param


_SEQ = iter(range(10**6))


def _db(root: Path, backend: str, name: str = "g") -> str:
    if backend == "embedded":
        return str(root / name)
    if backend == "milvus":
        return f"milvus:{root / (name + '.db')}"
    return f"memory:{name}{next(_SEQ)}-{os.getpid()}"


class _Ext:
    """A stand-in extractor: the identity a gallery records (search here goes by features, no model runs)."""

    def __init__(self) -> None:
        from reidkit.inference import ModelIdentity

        self.identity = ModelIdentity("conformance", "", DIM, (64, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        self.device, self.batch_size, self.engine = "cpu", 4, "torch"


def _unit(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _entries(n: int = 12) -> list[dict]:
    out = []
    for i in range(n):
        cam = f"c{i % 3 + 1}"
        if i % 2:
            out.append(
                {
                    "path": f"/v/{cam}.mp4",
                    "kind": "tracklet",
                    "tracklet": f"{cam}:{i}",
                    "camera": cam,
                    "camid": i % 3,
                    "frame_start": 10 * i,
                    "frame_end": 10 * i + 9,
                    "t_start": float(i),
                    "t_end": i + 0.5,
                    "meta": {"n": i},
                }
            )
        else:
            out.append({"path": f"/img/{i:04d}_{cam}.jpg", "camid": i % 3, "camera": cam})
    return out


def _close(db: str, backend: str) -> None:
    if backend == "milvus":  # Milvus Lite: one process per file; let another process (or a reopen) have it
        from reidkit.retrieval.backends.milvus import client

        client.close_client(db)


@pytest.fixture
def filled(backend, tmp_path):
    db = _db(tmp_path, backend)
    g = Gallery.create(db, _Ext())
    feats, entries = _unit(12, 0), _entries()
    ids = g.add_entries(feats, entries, state={"video:a": {"next": 3}})
    return g, db, dict(zip(ids, range(12))), feats, entries


def _brute(feats, entries, q, keep, k):
    """Expected ids (as entry indices) of a filtered search: the exact cosine ranking."""
    idx = [i for i in range(len(entries)) if keep(entries[i])]
    return sorted(idx, key=lambda i: -float(feats[i] @ q))[:k]


def test_build_add_search_with_filters(filled):
    g, _db_, by_id, feats, entries = filled
    assert len(g.entries()) == 12 and len(g.entries(kind="tracklet")) == 6
    q = _unit(1, 7)[0]
    cases = [
        ({}, lambda e: True),
        ({"camera": "c2"}, lambda e: e["camera"] == "c2"),
        ({"kind": "image"}, lambda e: e.get("kind", "image") == "image"),
        ({"exclude_camera": "c1"}, lambda e: e["camera"] != "c1"),
        ({"exclude_camid": 2}, lambda e: e["camid"] != 2),
        ({"t_min": 3.2, "t_max": 7.1}, lambda e: "t_start" in e and e["t_end"] >= 3.2 and e["t_start"] <= 7.1),
    ]
    for kw, keep in cases:
        got = [by_id[r["id"]] for r in g.search_features(q[None], k=4, **kw)[0]]
        assert got == _brute(feats, entries, q, keep, 4), kw
    hit = g.search_features(feats[3][None], k=1)[0][0]  # a stored tracklet finds itself, with every field
    assert (by_id[hit["id"]], hit["tracklet"], hit["frame_end"], hit["meta"]) == (3, "c1:3", 39, {"n": 3})
    assert hit["score"] == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(g.features([hit["id"]]), feats[3:4], atol=1e-6)


def test_tracklets_and_state_keys(filled):
    g, *_ = filled
    assert sorted(e["tracklet"] for e in g.entries(camera="c2", kind="tracklet")) == ["c2:1", "c2:7"]
    assert [e["path"] for e in g.entries(tracklet="c3:5")] == ["/v/c3.mp4"]
    assert g.get_state("video:a") == {"next": 3} and g.get_state("nothing") is None
    g.add_entries(np.zeros((0, DIM)), [], state={"video:a": None, "video:b": [1, "x"]})
    assert g.get_state("video:a") is None and g.get_state("video:b") == [1, "x"]


def test_delete_by_id_path_tracklet_camera(filled):
    g, _db_, by_id, _feats, entries = filled
    inv = {v: k for k, v in by_id.items()}
    assert g.delete(ids=[inv[0], inv[1]]) == 2
    assert g.delete(path="/img/0002_c3.jpg") == 1
    assert g.delete(tracklet="c1:3") == 1
    assert g.delete(camera="c2") == 3  # c2: entries 1 (gone), 4, 7, 10
    left = sorted(by_id[e["id"]] for e in g.entries())
    assert left == [5, 6, 8, 9, 11]
    assert g.delete(camera="c1", tracklet="c3:5") == 0  # ALL criteria must hold
    with pytest.raises(OptionError, match="no entry has camera 'c9'"):
        g.delete(camera="c9")
    q = _unit(1, 3)[0]
    assert [by_id[r["id"]] for r in g.search_features(q[None], k=10)[0]] == sorted(
        left, key=lambda i: -float(_feats[i] @ q)
    )


def test_readding_the_same_entries(filled):
    """Content-derived ids: the same entries again replace themselves; counter ids: the write is refused whole
    (an image path or tracklet key is stored once)."""
    g, _db_, by_id, feats, entries = filled
    if g.capabilities.idempotent_ids:
        assert sorted(g.add_entries(feats, entries)) == sorted(by_id)
    else:
        with pytest.raises(ReIDError, match="already in the gallery"):
            g.add_entries(feats[10:], entries[10:])
    assert len(g.entries()) == 12 and sorted(e["id"] for e in g.entries()) == sorted(by_id)


def test_reopen_after_close(filled):
    g, db, by_id, feats, _entries_ = filled
    before = g.search_features(feats[:2], k=5)
    key = g.stored_key()
    del g
    _close(db, resolve(db).name)
    g2 = Gallery.open(db)
    assert g2.stored_key() == key and len(g2.entries()) == 12
    assert g2.search_features(feats[:2], k=5) == before
    assert g2.get_state("video:a") == {"next": 3}
    assert g2.describe() and Gallery.exists(db)


def _long_tracklet(frames: int, key: str = "cam1.t7") -> dict:
    """A tracklet entry as reidkit.video.pipeline makes one (a box per frame, thumbnails, the colour descriptor)."""
    rng = np.random.default_rng(3)
    xy = np.round(rng.uniform(0, 600, (frames, 4)), 2)
    boxes = [[f + 1, *map(float, xy[f]), round(float(rng.uniform(0.3, 1)), 4)] for f in range(frames)]
    meta = {
        "video": "/v/cam1.mp4",
        "video_key": "cam1",
        "track_id": 7,
        "fps": 25.0,
        "boxes": boxes,
        "thumbs": [f"{key}_0.jpg", f"{key}_1.jpg"],
        "thumb_frames": [1, frames],
        "quality": [0.5, 0.75],
        "detector": "hog",
        "colour": [round(float(v), 4) for v in rng.uniform(0, 1, 432)],  # reidkit.video.colour's ~1.7 KB
    }
    return {
        "kind": "tracklet",
        "tracklet": key,
        "camera": "cam1",
        "frame_start": 1,
        "frame_end": frames,
        "t_start": 0.0,
        "t_end": (frames - 1) / 25.0,
        "meta": meta,
    }


def test_a_long_tracklet_is_stored_whole(backend, tmp_path, monkeypatch):
    """A tracklet of 4000 frames (its meta ~200 KB of JSON, over a Milvus server's 65536-byte JSON field) committed
    as `reidkit video` commits one reads back whole: entries, record, `tracklets show`, `tracklets export`, reopen;
    re-added short, then deleted, it leaves nothing behind."""
    from reidkit.video.identities import export_tracklets
    from reidkit.video.pipeline import Chunk, commit
    from reidkit.video.search import appearances

    monkeypatch.chdir(tmp_path)  # the plug-in's side files
    db = _db(tmp_path, backend)
    g = Gallery.create(db, _Ext())
    long, short = _long_tracklet(4000), _long_tracklet(3, "cam1.t8")
    assert len(json.dumps(long["meta"])) > 150_000
    thumbs = {n: b"\xff\xd8 jpeg" for e in (long, short) for n in e["meta"]["thumbs"]}
    chunk = Chunk("cam1", "cam1", _unit(2, 1), [long, short], thumbs, {"next": 4000, "done": True})
    tid, sid = commit(g, chunk)
    for e in (long, short):
        e["path"] = str(Path(g.files_dir) / "thumbs" / e["meta"]["thumbs"][0])  # commit names the first thumbnail

    def meta_texts():  # Milvus: the state rows holding meta text (reidkit.retrieval.backends.milvus.client)
        from reidkit.retrieval.backends.milvus import client

        cols = client._Collections(db, client._parse(db), "reidkit")
        rows = cols.call("query", cols.client.query, cols.state_name, filter="part >= 0", output_fields=["key"])
        return sorted({r["key"] for r in rows if r["key"].startswith(client._META_KEY)})

    def stored(gal):
        return {
            e["tracklet"]: {k: v for k, v in (e["meta"] or {}).items() if k != "thumb_stats"} for e in gal.entries()
        }

    assert stored(g) == {"cam1.t7": long["meta"], "cam1.t8": short["meta"]}
    assert g.record(tid)["meta"]["boxes"] == long["meta"]["boxes"]
    shown = appearances(g, "cam1.t7")["appearances"]
    assert [[a["frame"], *a["box"], a["conf"]] for a in shown] == long["meta"]["boxes"]
    lines = export_tracklets(g, tmp_path / "mot")["cam1"].read_text().splitlines()
    mine = [line for line in lines if line.split(",")[1] == str(tid)]
    assert len(lines) == 4003 and [int(line.split(",")[0]) for line in mine] == list(range(1, 4001))
    assert g.get_state("video:cam1") == {"next": 4000, "done": True}
    if backend == "milvus":  # the JSON field itself stays under a server's limit (Milvus Lite does not enforce it)
        from reidkit.retrieval.backends.milvus import client

        cols = client._Collections(db, client._parse(db), "reidkit")
        raw = cols.call("query", cols.client.query, "reidkit", filter="id >= 0", output_fields=["meta"])
        assert max(len(json.dumps(r["meta"], separators=(",", ":")).encode()) for r in raw) <= 65536
    del g
    _close(db, backend)
    g = Gallery.open(db)
    assert stored(g) == {"cam1.t7": long["meta"], "cam1.t8": short["meta"]}
    if g.capabilities.idempotent_ids:  # the same tracklet again, its meta short now, then long again
        g.add_entries(_unit(1, 2), [{**long, "meta": short["meta"]}])
        assert stored(g)["cam1.t7"] == short["meta"]
        assert backend != "milvus" or meta_texts() == []
        g.add_entries(_unit(1, 2), [long])
        assert stored(g)["cam1.t7"] == long["meta"]
    assert g.delete(tracklet="cam1.t7") == 1 and list(stored(g)) == ["cam1.t8"]
    assert backend != "milvus" or meta_texts() == []


_WRITER = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[2])
from test_backend_conformance import _entries, _unit
from reidkit.retrieval.gallery import Gallery
g = Gallery.open(sys.argv[1])
new = [{**e, **{k: e[k] + ".new" for k in ("path", "tracklet") if k in e}} for e in _entries()]
g.add_entries(_unit(12, 5), new, state={"video:a": {"next": 9}})
print("done", len(g.entries()))
"""


def test_writer_killed_mid_write(filled, tmp_path):
    """Crash-consistent: the killed write leaves the state before it, whole. Idempotent ids: re-running the write
    gives every entry exactly once. A backend that claims neither keeps nothing across processes to check."""
    g, db, *_ = filled
    caps = g.capabilities
    if not (caps.crash_consistent or caps.idempotent_ids):
        pytest.skip(f"{resolve(db).name}: claims no crash-consistency and no idempotent ids")
    del g
    _close(db, resolve(db).name)
    script = tmp_path / "writer.py"
    script.write_text(_WRITER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "REIDKIT_TEST_CRASH_AT": "before_commit"}
    args = [sys.executable, str(script), db, str(REPO / "tests")]
    p = procs.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 137 and "done" not in p.stdout, p.stderr
    if caps.crash_consistent:
        g = Gallery.open(db)
        assert len(g.entries()) == 12 and g.get_state("video:a") == {"next": 3}
        del g
        _close(db, resolve(db).name)
    env.pop("REIDKIT_TEST_CRASH_AT")
    p = procs.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "done 24" in p.stdout, p.stderr
    g = Gallery.open(db)
    assert len(g.entries()) == 24 and g.get_state("video:a") == {"next": 9}
    assert g.backend.check()["entries"] == 24


_HOLDER = """
import sys, time
from reidkit.retrieval.gallery import Gallery
from reidkit.retrieval.backends import resolve
b = resolve(sys.argv[1])
if b.name == "embedded":  # a writer in the middle of its write holds the folder's writer lock
    from reidkit.retrieval.backends.sqlite.generations import WriterLock
    hold = WriterLock(b.db).__enter__()
else:  # a Milvus Lite file is held by the process that opened it
    hold = Gallery.open(sys.argv[1])
print("holding", flush=True)
time.sleep(60)
"""


def test_one_writer_backends_refuse_a_second_writer(filled, tmp_path):
    """A backend that admits one writer process refuses the second (after waiting); the cluster then commits
    from the driver only (reidkit.video.cluster reads many_writers)."""
    g, db, *_ = filled
    if g.capabilities.many_writers:
        pytest.skip("admits many writers")
    if g.backend.name == "memory":
        pytest.skip("memory: no second process can see it")
    del g
    _close(db, resolve(db).name)
    script = tmp_path / "holder.py"
    script.write_text(_HOLDER)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    holder = subprocess.Popen([sys.executable, str(script), db], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(ReIDError, match="another process|one process at a time"):
            Gallery.open(db).add_entries(_unit(1, 9), [{"path": "/img/late.jpg"}], lock_timeout=0.5)
    finally:
        holder.kill()
        holder.wait()


def test_capabilities_read_by_ingestion_and_cli(backend, tmp_path):
    """--files is refused where side files live inside the gallery and recorded where they live outside; ingestion
    takes a per-video lock only where ids are not idempotent."""
    db = _db(tmp_path, backend)
    b = resolve(db)
    expected = {
        "embedded": (False, False, "inside", True),
        "milvus": (False, True, "outside", False),
        "memory": (False, False, "outside", False),
    }[backend]
    c = b.capabilities
    assert (c.many_writers, c.idempotent_ids, c.files, c.crash_consistent) == expected
    from reidkit.commands.retrieval import check_files_option

    if c.files == FILES_OUTSIDE:
        check_files_option(db, str(tmp_path / "files"))
        g = Gallery.create(db, _Ext())
        from reidkit.video.ingest import _use_files

        _use_files(g, str(tmp_path / "files"), default_files=None)
        assert Path(g.files_dir) == tmp_path / "files"
        assert b.default_files(tmp_path / "v.mp4").parent == tmp_path
    else:
        with pytest.raises(OptionError, match="applies to milvus:.* galleries only"):
            check_files_option(db, str(tmp_path / "files"))
        assert b.default_files(tmp_path / "v.mp4") is None
    assert resolve("milvus:http://127.0.0.1:19530").capabilities.many_writers  # a server: many writers


def test_unknown_scheme_is_one_error_naming_db(capsys):
    load_plugin(str(PLUGIN))
    with pytest.raises(
        OptionError, match=r"^db: memroy:x: unknown gallery backend 'memroy:' \(did you mean memory:\?\)"
    ):
        resolve("memroy:x")
    from reidkit.cli import main

    assert main(["index", "check", "--db", "milvs:./g.db"]) == 2
    err = capsys.readouterr().err
    assert "--db: milvs:./g.db: unknown gallery backend 'milvs:' (did you mean milvus:?)" in err


def test_plugin_backend_on_the_cli(tmp_path, capsys):
    """`reidkit --plugin tests/data/memory_backend.py index build --db memory:NAME` then `search` (one process: the
    gallery lives in its memory) answer as the embedded default does on the same crops."""

    from reidkit.cli import main
    from reidkit.data.synthetic import generate

    syn = generate(tmp_path / "syn", ids=4, images_per_id=3, cams=2, seed=0, workers=1)
    weights = tiny_checkpoint(tmp_path / "tiny.pth")
    query = sorted((syn / "query").glob("*.jpg"))[0]
    answers = {}
    for db in (f"memory:cli{os.getpid()}", str(tmp_path / "emb")):
        plug = ["--plugin", str(PLUGIN)]
        assert (
            main(
                [
                    *plug,
                    "index",
                    "build",
                    "--images",
                    str(syn / "bounding_box_test"),
                    "--db",
                    db,
                    "--weights",
                    str(weights),
                    "--batch-size",
                    "8",
                ]
            )
            == 0
        )
        capsys.readouterr()
        assert main([*plug, "search", "--db", db, "--image", str(query), "--topk", "5", "--json"]) == 0
        res = json.loads(capsys.readouterr().out)["results"]
        answers[db.split(":")[0]] = [(Path(r["path"]).name, round(r["score"], 4)) for r in res]
        assert main([*plug, "index", "check", "--db", db]) == 0
        assert main([*plug, "index", "add", "--images", str(syn / "bounding_box_test"), "--db", db]) == 0
        assert "index add: 0 images added" in capsys.readouterr().out  # every image already there
    assert answers["memory"] == answers[str(tmp_path / "emb")] and len(answers["memory"]) == 5
