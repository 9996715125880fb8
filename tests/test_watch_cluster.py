"""`reidkit watch --cluster` on a Dask LocalCluster (127.0.0.1) with ffmpeg streams on loopback (issue 32): the
single-process watch's tracklets, and a killed worker's camera moved to another worker with no tracklet committed
twice and none of the committed ones lost."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from factories import free_port, serve_stream, tiny_checkpoint, wait_health

from reidkit.retrieval.gallery import Gallery
from reidkit.video.cameras import Camera

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs Debian's ffmpeg to serve streams")
FRAMES, FPS = 60, 20.0


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from reidkit.data.scene import generate_scene

    root = tmp_path_factory.mktemp("wcluster")
    scene = generate_scene(root / "scene", cams=2, ids=4, frames=FRAMES, fps=FPS, speed=1.0, topology="chain")
    weights = tiny_checkpoint(root / "tiny.pth")
    return {"root": root, "scene": scene, "weights": str(weights)}


@pytest.fixture(scope="module")
def client(world, dask_forkserver):
    distributed = pytest.importorskip("distributed")
    from reidkit.utils.dask import local_cluster

    cluster = local_cluster(3)  # 127.0.0.1, one thread a worker, no port 8787
    c = distributed.Client(cluster, timeout=60)
    yield c
    c.close()
    cluster.close()


class Camera24x7:
    """A camera that is always there: ffmpeg serving `video` to one client at a time, served again whenever a
    client went away (or the video played out)."""

    def __init__(self, video, port):
        self.video, self.port, self.stopped, self.proc = video, port, threading.Event(), None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stopped.is_set():
            self.proc = serve_stream(self.video, self.port)
            while self.proc.poll() is None and not self.stopped.is_set():
                time.sleep(0.1)

    def stop(self):
        self.stopped.set()
        if self.proc is not None:
            self.proc.kill()
        self.thread.join(timeout=10)


def _run(target, **kw):
    result = {}

    def body():
        try:
            result.update(target(**kw))
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test
            result["error"] = exc

    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t, result


def _rows(db):
    g = Gallery.open(db)
    es = g.entries(kind="tracklet")
    return [(e["camera"], int(e["frame_start"]), int(e["frame_end"])) for e in es], [e["tracklet"] for e in es], g


KW = {"engine": "onnx", "commit_every": 0.5, "identities_every": 600, "buffer": 100000}


@pytest.fixture(scope="module")
def reference(world):
    """The single-process watch of the same videos as files played at their own rate (nothing skipped)."""
    from reidkit.video.watch import watch

    sc, db = world["scene"], world["root"] / "ref"
    files = [Camera(c, str(v), FPS, str(g)) for c, v, g in zip(sc.cameras, sc.videos, sc.gt)]
    status = watch(db, files, weights=world["weights"], **KW)
    rows, _, _ = _rows(db)
    assert rows and all(c["skipped"] == 0 for c in status["cameras"].values())
    return rows


def _on_cluster(world, client, db, tmp_path):
    """`watch --cluster` of the scene's videos served live by ffmpeg until every frame is processed; its status."""
    from reidkit.video.watch_cluster import watch_on_cluster

    sc = world["scene"]
    ports = [free_port() for _ in sc.cameras]
    servers = [serve_stream(v, p) for v, p in zip(sc.videos, ports)]
    cams = [Camera(c, f"http://127.0.0.1:{p}/", FPS, str(g)) for c, p, g in zip(sc.cameras, ports, sc.gt)]
    stop, status_port = threading.Event(), free_port()
    t, result = _run(
        watch_on_cluster,
        db=db,
        cameras=cams,
        client=client,
        stop=stop,
        status_port=status_port,
        weights=world["weights"],
        **KW,
    )
    try:
        h = wait_health(status_port, t, lambda h: all(c["processed"] >= FRAMES for c in h["cameras"].values()), 180)
        workers = {c["worker"] for c in h["cameras"].values()}
        assert len(workers) == len(cams), f"one camera to one worker: {h['cameras']}"
    finally:
        stop.set()
        t.join(timeout=180)
        for s in servers:
            s.kill()
    assert "error" not in result, result.get("error")
    for cam in sc.cameras:
        c = result["cameras"][cam]
        assert c["received"] == FRAMES and c["processed"] == FRAMES and c["skipped"] == 0, c
        assert c["attempts"] == 1 and c["session"] == 1
    return result


def test_cameras_on_dask_workers_give_the_single_process_watch_tracklets(world, client, reference, tmp_path):
    _on_cluster(world, client, str(tmp_path / "db"), tmp_path)  # the driver commits (one writer: the folder)
    got, keys, _ = _rows(tmp_path / "db")
    assert len(keys) == len(set(keys))
    assert Counter(got) == Counter(reference), f"cluster: {sorted(got)}\nsingle process: {sorted(reference)}"


def test_on_a_gallery_of_many_writers_the_workers_commit(world, client, reference, tmp_path):
    """A backend whose Capabilities admit many writers (tests/data/shared_folder_backend.py, standing in for a
    Milvus server): the tasks commit their chunks themselves; the driver only counts them."""
    data = str(Path(__file__).resolve().parent / "data")
    code = f"import sys; sys.path.insert(0, {data!r}); import shared_folder_backend; shared_folder_backend.register()"
    exec(code, {})  # the driver and every worker know the scheme
    client.run(exec, code, {})
    from reidkit.retrieval.backends import resolve

    from reidkit.retrieval.backends import BACKENDS

    db = f"sharedfolder:{tmp_path / 'db'}"
    try:
        assert resolve(db).capabilities.many_writers
        result = _on_cluster(world, client, db, tmp_path)
        got, keys, _ = _rows(db)
    finally:  # this process's registry as the other tests know it
        BACKENDS.unregister("sharedfolder")
    assert len(keys) == len(set(keys))
    assert Counter(got) == Counter(reference), f"cluster: {sorted(got)}\nsingle process: {sorted(reference)}"
    assert sum(c["tracklets"] for c in result["cameras"].values()) == len(reference)


def test_a_killed_workers_camera_moves_and_nothing_is_duplicated_or_lost(world, client, tmp_path):
    from reidkit.video.watch_cluster import watch_on_cluster

    sc = world["scene"]
    ports = [free_port() for _ in sc.cameras]
    servers = [Camera24x7(v, p) for v, p in zip(sc.videos, ports)]
    cams = [Camera(c, f"http://127.0.0.1:{p}/", FPS, str(g)) for c, p, g in zip(sc.cameras, ports, sc.gt)]
    stop, status_port, said = threading.Event(), free_port(), []
    db = tmp_path / "db"
    t, result = _run(
        watch_on_cluster,
        db=str(db),
        cameras=cams,
        client=client,
        stop=stop,
        status_port=status_port,
        weights=world["weights"],
        engine="onnx",
        commit_every=0.5,
        identities_every=600,
        buffer=100000,
        progress=said.append,
    )
    try:
        # people in view and something committed on the first camera's worker, then that worker is SIGKILLed
        h = wait_health(
            status_port,
            t,
            lambda h: h["cameras"]["cam1"]["commits"] >= 2 and h["cameras"]["cam1"]["processed"] >= 30,
            180,
        )
        victim = h["cameras"]["cam1"]["worker"]
        pids = client.run(os.getpid)
        _, keys_before, _ = _rows(db)  # committed before the kill (more may come from the driver's queue)
        os.kill(pids[victim], signal.SIGKILL)
        h = wait_health(
            status_port,
            t,
            lambda h: h["cameras"]["cam1"]["attempts"] == 2 and h["cameras"]["cam1"]["processed"] >= 60 + 20,
            180,
        )
        assert h["cameras"]["cam1"]["worker"] != victim and h["cameras"]["cam1"]["session"] == 2
    finally:
        stop.set()
        t.join(timeout=180)
        for s in servers:
            s.stop()
    assert "error" not in result, result.get("error")
    _, keys, g = _rows(db)
    assert len(keys) == len(set(keys)), "a tracklet committed twice"
    assert set(keys_before) <= set(keys), "a committed tracklet was lost"
    # the killed session's open tracklets, as of its last commit, were committed once, by the driver
    recovered = [m for m in said if m.startswith("[cam1] session 1 was killed")]
    assert len(recovered) == 1 and "its 0 open" not in recovered[0], said
    s1 = [k for k in keys if k.startswith("cam1-live-s1.")]
    # (>=: a chunk of session 1 may have been in the driver's queue when the worker died)
    assert len(s1) >= sum(k.startswith("cam1-live-s1.") for k in keys_before) + int(recovered[0].split()[6]), said
    assert g.get_state("video:cam1-live-s1")["done"] and g.get_state("video:cam1-live-s2")["done"]
    assert any(k.startswith("cam1-live-s2.") for k in keys) and result["cameras"]["cam2"]["attempts"] == 1


def test_on_a_milvus_server_the_workers_commit(world, client, reference, tmp_path, monkeypatch):
    """A Milvus server (Milvus Lite's gRPC server on 127.0.0.1): its Capabilities admit many writers, so the tasks
    commit their chunks themselves (ids derived from the tracklet keys); the single-process watch's tracklets."""
    pytest.importorskip("pymilvus")
    pytest.importorskip("milvus_lite")
    from factories import milvus_lite_server

    from reidkit.retrieval.backends import resolve

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "share"))  # where the server gallery records its files
    server, db = milvus_lite_server(tmp_path / "server")
    try:
        assert resolve(db).capabilities.many_writers
        result = _on_cluster(world, client, db, tmp_path)
        got, keys, _ = _rows(db)
    finally:
        server.stdin.close()
        try:
            server.wait(timeout=30)
        except Exception:  # noqa: BLE001 - a server that does not stop is killed
            server.kill()
        from reidkit.retrieval.backends.milvus import client as milvus_client

        milvus_client._clients.clear()
    assert len(keys) == len(set(keys))
    assert Counter(got) == Counter(reference), f"cluster: {sorted(got)}\nsingle process: {sorted(reference)}"
    assert sum(c["tracklets"] for c in result["cameras"].values()) == len(reference)


def test_cluster_options_errors_are_one_line(tmp_path, capsys):
    from reidkit.cli import main as cli_main

    argv = ["watch", "rtsp://127.0.0.1:9/x", "--db", str(tmp_path / "db")]
    assert cli_main([*argv, "--cluster", "tcp://127.0.0.1:9", "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not both" in err and err.count("\n") == 1, err
    assert cli_main([*argv, "--workers", "0"]) == 2
    assert "workers" in capsys.readouterr().err
