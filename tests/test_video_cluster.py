"""Videos on a Dask LocalCluster (127.0.0.1, 2 worker processes) give the sequential run's tracklets,
a worker killed mid-video is retried and the gallery holds each tracklet once; two `reidkit video`
processes on one new gallery: the second waits, then skips."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import procs
import pytest
from factories import tiny_checkpoint

W, H, FRAMES = 128, 96, 36


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    from reidkit.data.scene import generate_scene

    root = tmp_path_factory.mktemp("vcluster")
    sc = generate_scene(root / "scene", cams=3, ids=3, frames=FRAMES, size=(H, W), fps=10, seed=1, speed=1.5)

    weights = tiny_checkpoint(root / "tiny.pth")
    kw = {"detections": [str(g) for g in sc.gt], "weights": str(weights), "chunk": 6, "progress": None}
    return {"root": root, "scene": sc, "kw": kw}


def _tracklets(db) -> dict:
    from reidkit.retrieval.gallery import Gallery

    g = Gallery.open(db)
    es = g.entries(kind="tracklet")
    keys = [e["tracklet"] for e in es]
    assert len(keys) == len(set(keys))  # each tracklet exactly once
    return {
        e["tracklet"]: (
            e["camera"],
            e["frame_start"],
            e["frame_end"],
            e["meta"]["boxes"],
            e["meta"]["thumbs"],
            g.features([e["id"]])[0],
        )
        for e in es
    }


def _same(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want) and want
    for k, w in want.items():
        assert got[k][:5] == w[:5]
        np.testing.assert_allclose(got[k][5], w[5], atol=1e-5)


@pytest.fixture(scope="module")
def sequential(scene):
    from reidkit.video.ingest import ingest

    db = scene["root"] / "seq"
    ingest(db, [str(v) for v in scene["scene"].videos], streams=1, **scene["kw"])
    return _tracklets(db)


@pytest.fixture(scope="module")
def client(scene, dask_forkserver):
    distributed = pytest.importorskip("distributed")
    from reidkit.utils.dask import local_cluster
    from reidkit.video.cluster import CRASH_ENV

    flag = scene["root"] / "crash.flag"
    # the worker processes' own environment (the nanny sets it in each worker it starts or restarts)
    cluster = local_cluster(2, env={CRASH_ENV: str(flag)})  # 127.0.0.1, one thread a worker, no port 8787
    c = distributed.Client(cluster, timeout=60)
    yield {"client": c, "flag": flag}
    c.close()
    cluster.close()


def test_cluster_gives_the_sequential_tracklets(scene, sequential, client):
    from reidkit.video.cluster import ingest_on_cluster

    db = scene["root"] / "dask"
    rep = ingest_on_cluster(
        db, [str(v) for v in scene["scene"].videos], client=client["client"], segment=2, **scene["kw"]
    )
    assert [v["skipped"] for v in rep["videos"]] == [False] * 3
    _same(_tracklets(db), sequential)
    # a re-run finds every video done
    rep = ingest_on_cluster(db, [str(v) for v in scene["scene"].videos], client=client["client"], **scene["kw"])
    assert [v["skipped"] for v in rep["videos"]] == [True] * 3


def test_killed_worker_is_retried_and_nothing_doubles(scene, sequential, client):
    from reidkit.video.cluster import ingest_on_cluster

    flag = client["flag"]
    flag.write_text("armed")  # the first task to rename it exits its worker process after its first chunk
    db = scene["root"] / "dask_killed"
    ingest_on_cluster(db, [str(v) for v in scene["scene"].videos], client=client["client"], segment=3, **scene["kw"])
    assert not flag.exists() and (flag.parent / (flag.name + ".fired")).exists()  # a worker did die
    _same(_tracklets(db), sequential)


def test_two_processes_on_one_new_gallery(scene, sequential, tmp_path):
    db = tmp_path / "db"
    kw = scene["kw"]
    argv = [
        "video",
        *[str(v) for v in scene["scene"].videos],
        "--db",
        str(db),
        "--weights",
        kw["weights"],
        "--chunk",
        "6",
        "--appearance",
        "all",
        "--engine",
        "onnx",
    ]  # float: the sequential run's features
    for d in kw["detections"]:
        argv += ["--detections", d]
    code = "import sys; from reidkit.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "REIDKIT_LOCK_TIMEOUT": "120"}
    running = [
        procs.Popen(
            [sys.executable, "-c", code, *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = []
    t0 = time.monotonic()
    for p in running:
        out, err = p.communicate(timeout=max(10.0, 400 - (time.monotonic() - t0)))
        outs.append((p.returncode, out, err))
    for rc, out, err in outs:
        assert rc == 0, err
        assert "already holds" not in err and "UNIQUE" not in err
    # every video was done by one of them and skipped (after waiting) by the other
    skipped = sum(err.count("already ingested") for _rc, _o, err in outs)
    assert skipped == 3, [e for _r, _o, e in outs]
    _same(_tracklets(db), sequential)


def _answers(db, query) -> list:
    from reidkit.retrieval.gallery import Gallery
    from reidkit.video.search import search_tracklets

    hits = search_tracklets(Gallery.open(db), image=query, k=5)["results"]
    assert hits
    return [(h["tracklet"], round(float(h["score"]), 4)) for h in hits]


def test_cluster_into_milvus_lite_and_embedded_agree(scene, sequential, client):
    """`reidkit video a b c --db milvus:./f.db --workers 2` and the embedded gallery give the sequential
    run's tracklets, and a tracklet search answers the same on both."""
    pytest.importorskip("milvus_lite")
    from reidkit.video.cluster import ingest_on_cluster

    videos = [str(v) for v in scene["scene"].videos]
    mdb = f"milvus:{scene['root'] / 'f.db'}"
    ingest_on_cluster(mdb, videos, client=client["client"], segment=2, **scene["kw"])
    _same(_tracklets(mdb), sequential)
    thumbs = sorted((scene["root"] / "seq" / "thumbs").glob("*.jpg"))
    assert thumbs
    assert _answers(mdb, str(thumbs[0])) == _answers(scene["root"] / "seq", str(thumbs[0]))
