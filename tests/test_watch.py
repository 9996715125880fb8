"""`reidkit watch` on real streams served by ffmpeg on 127.0.0.1 (issue 32): the tracklets and identities
`reidkit video` gets from the same files, SIGTERM and SIGKILL, /metrics, and the cameras file's errors."""

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter

import pytest
from factories import free_port, serve_stream, wait_health

import procs
from reidkit.cli import main as cli_main
from reidkit.data.scene import generate_scene
from reidkit.retrieval.gallery import Gallery
from reidkit.video.cameras import Camera, parse_duration, read_cameras
from reidkit.video.watch_status import prometheus_text

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs Debian's ffmpeg to serve streams")
FRAMES, FPS = 60, 20.0


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("watch") / "scene"
    return generate_scene(root, cams=3, ids=6, frames=FRAMES, fps=FPS, speed=1.0, topology="chain")


def _stop(proc, servers):
    """SIGTERM the watch (it commits and exits), then end the stream servers; (stdout, stderr). Always bounded."""
    try:
        proc.send_signal(signal.SIGTERM)
        return proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        for s in servers:
            s.kill()


def _tracklets(db):
    g = Gallery.open(db)
    return [(e["camera"], int(e["frame_start"]), int(e["frame_end"])) for e in g.entries(kind="tracklet")], g


def _partition(db, rows):
    """The identities as a set of frozensets of (camera, frame_start, frame_end)."""
    from reidkit.video.identities import stored_identities

    g = Gallery.open(db)
    assigned = stored_identities(g)["tracklets"]
    groups = {}
    for e in g.entries(kind="tracklet"):
        groups.setdefault(assigned[str(e["tracklet"])], set()).add(
            (e["camera"], int(e["frame_start"]), int(e["frame_end"]))
        )
    return {frozenset(v) for v in groups.values()}


def _cameras_file(tmp_path, scene, ports):
    import yaml

    cams = [
        {"name": c, "url": f"http://127.0.0.1:{p}/", "fps": FPS, "detections": str(g)}
        for c, p, g in zip(scene.cameras, ports, scene.gt)
    ]
    path = tmp_path / "cameras.yaml"
    links = yaml.safe_load(scene.links.read_text())
    path.write_text(yaml.safe_dump({"cameras": cams, **links}))
    return path


def _watch(tmp_path, cameras, db, status_port, *extra):
    cmd = [
        sys.executable,
        "-m",
        "reidkit.cli",
        "watch",
        str(cameras),
        "--db",
        str(db),
        "--buffer",
        "100000",
        "--commit-every",
        "1",
        "--status-port",
        str(status_port),
        "--json",
        *extra,
    ]
    return procs.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)


@needs_ffmpeg
def test_three_live_streams_give_what_reidkit_video_gives_from_the_files(scene, tmp_path):
    # the reference: `reidkit video` + `reidkit identities` on the files, with the same detections
    vdb = tmp_path / "vdb"
    args = ["video", *map(str, scene.videos), "--db", str(vdb)]
    for cam, gt in zip(scene.cameras, scene.gt):
        args += ["--camera", cam, "--detections", str(gt)]
    assert cli_main(args) == 0
    assert cli_main(["identities", "--db", str(vdb), "--links", str(scene.links)]) == 0
    ref, _ = _tracklets(vdb)

    ports = [free_port() for _ in scene.cameras]
    servers = [serve_stream(v, p) for v, p in zip(scene.videos, ports)]
    status_port, wdb = free_port(), tmp_path / "wdb"
    proc = _watch(tmp_path, _cameras_file(tmp_path, scene, ports), wdb, status_port)
    try:
        # every frame of every stream received and processed (the buffer is large: nothing skipped)
        wait_health(status_port, proc, lambda h: all(c["processed"] >= FRAMES for c in h["cameras"].values()))
        with urllib.request.urlopen(f"http://127.0.0.1:{status_port}/metrics", timeout=5) as r:
            metrics = r.read().decode()
        for name in (
            "frames_received_total",
            "frames_processed_total",
            "frames_skipped_total",
            "lag_seconds",
            "reconnects_total",
            "tracklets_total",
            "last_frame_age_seconds",
        ):
            assert f'reidkit_{name}{{camera="cam1"}}' in metrics, name
        assert "reidkit_identities " in metrics
        with urllib.request.urlopen(f"http://127.0.0.1:{status_port}/", timeout=5) as r:
            assert "reidkit watch" in r.read().decode()
        with urllib.request.urlopen(f"http://127.0.0.1:{status_port}/frame/cam2.jpg", timeout=5) as r:
            import cv2
            import numpy as np

            frame = cv2.imdecode(np.frombuffer(r.read(), np.uint8), cv2.IMREAD_COLOR)
        assert frame.shape == (240, 320, 3)  # the newest processed frame, boxes drawn
    except BaseException:
        _stop(proc, servers)
        raise
    out, err = _stop(proc, servers)  # SIGTERM commits the open tracklets and exits 0
    assert proc.returncode == 0, err[-3000:]
    status = json.loads(out)
    for cam in scene.cameras:
        c = status["cameras"][cam]
        assert c["received"] == FRAMES and c["processed"] == FRAMES and c["skipped"] == 0, c
    got, _ = _tracklets(wdb)
    assert Counter(got) == Counter(ref), f"live: {sorted(got)}\nfiles: {sorted(ref)}"
    assert _partition(wdb, got) == _partition(vdb, ref)
    assert status["identities"] == len(_partition(vdb, ref))


@needs_ffmpeg
def test_sigkill_then_restart_loses_no_committed_tracklet_and_duplicates_none(scene, tmp_path):
    ports = [free_port() for _ in scene.cameras]
    servers = [serve_stream(v, p) for v, p in zip(scene.videos, ports)]
    cameras = _cameras_file(tmp_path, scene, ports)
    status_port, db = free_port(), tmp_path / "db"
    proc = _watch(tmp_path, cameras, db, status_port)
    try:
        wait_health(
            status_port, proc, lambda h: all(c["processed"] >= 40 and c["commits"] >= 1 for c in h["cameras"].values())
        )
        proc.kill()  # SIGKILL mid-stream: only what came after the last commit is lost
        proc.wait(timeout=30)
    finally:
        for s in servers:
            s.kill()
    before, g = _tracklets(db)
    keys_before = {e["tracklet"] for e in g.entries(kind="tracklet")}
    killed = {c: g.get_state(f"video:{c}-live-s1") for c in scene.cameras}
    assert all(st is not None and not st["done"] for st in killed.values()), "each camera committed its state"
    open_then = sum(len(st["open"]) for st in killed.values())
    assert open_then >= 1, "people were in view at the last commit"
    # the cameras come back (the same videos from their start); a new run goes on
    servers = [serve_stream(v, p) for v, p in zip(scene.videos, ports)]
    proc = _watch(tmp_path, cameras, db, status_port)
    try:
        wait_health(status_port, proc, lambda h: all(c["processed"] >= FRAMES for c in h["cameras"].values()))
    except BaseException:
        _stop(proc, servers)
        raise
    out, err = _stop(proc, servers)
    assert proc.returncode == 0, err[-3000:]
    assert "session 1 was killed" in err
    g = Gallery.open(db)
    entries = g.entries(kind="tracklet")
    keys = [e["tracklet"] for e in entries]
    assert len(keys) == len(set(keys)), "a tracklet committed twice"
    assert keys_before <= set(keys), "a committed tracklet was lost"
    # the killed session's open tracklets (as of its last commit) are committed once, under session 1's keys;
    # session 2 saw the streams again from their start
    s1 = [k for k in keys if "-live-s1." in k]
    s2 = [k for k in keys if "-live-s2." in k]
    import re

    recovered = sum(int(n) for n in re.findall(r"session 1 was killed: its (\d+) open tracklet", err))
    assert len(s1) == len(keys_before) + recovered and recovered <= open_then
    assert s2 and len(s1) + len(s2) == len(keys)
    assert all(g.get_state(f"video:{c}-live-s1")["done"] for c in scene.cameras)


def test_cameras_file_errors_are_one_line_each(tmp_path, capsys):
    cases = {
        "cameras: []\n": "non-empty list 'cameras'",
        "cameras:\n  - {name: cam1}\n": "cameras[0] needs a 'name' and a 'url'",
        "cameras:\n  - {name: cam1, url: rtsp://x, fsp: 10}\n": "unknown key(s) ['fsp']",
        "cameras:\n  - {name: cam1, url: rtsp://x}\n  - {name: cam1, url: rtsp://y}\n": "repeated: ['cam1']",
        "cameras:\n  - {name: cam1, url: rtsp://x, fps: -3}\n": "cameras[0].fps must be a number",
        "camera: []\n": "non-empty list 'cameras'",
        "cameras:\n  - {name: 'a b', url: rtsp://x}\n": "letters, digits",
    }
    for i, (text, message) in enumerate(cases.items()):
        path = tmp_path / f"c{i}.yaml"
        path.write_text(text)
        assert cli_main(["watch", str(path), "--db", str(tmp_path / "db")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    assert cli_main(["watch", str(tmp_path / "nope.avi"), "--db", str(tmp_path / "db")]) == 2
    assert "neither a stream URL" in capsys.readouterr().err
    # the handlers watch installs are the caller's again afterwards: a process that runs the CLI in-process (this
    # test worker) and later forks must not hand its children a SIGTERM handler that only sets a flag
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    assert cli_main(["watch", "rtsp://a", "rtsp://b", "--camera", "x", "--db", str(tmp_path / "db")]) == 2
    assert "one name per URL" in capsys.readouterr().err
    assert cli_main(["watch", "rtsp://a", "--retain", "7 weeks", "--db", str(tmp_path / "db")]) == 2
    assert "--retain" in capsys.readouterr().err
    import socket

    with socket.socket() as busy:  # a status port another program holds: one error, not a traceback
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert (
            cli_main(
                [
                    "watch",
                    "rtsp://127.0.0.1:9/x",
                    "--db",
                    str(tmp_path / "db"),
                    "--status-port",
                    str(port),
                    "--duration",
                    "1",
                ]
            )
            == 2
        )
    err = capsys.readouterr().err
    assert f"--status-port: cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err, err


def test_cameras_file_reads_names_urls_files_and_links(tmp_path):
    (tmp_path / "v.avi").write_bytes(b"x")
    path = tmp_path / "cams.yaml"
    path.write_text(
        "cameras:\n  - {name: door, url: rtsp://10.0.0.5/1, fps: 12.5}\n  - {name: hall, url: v.avi}\n"
        "links:\n  - {cameras: [door, hall], min: 2, max: 30}\n"
    )
    cams, links = read_cameras(path)
    assert cams == [Camera("door", "rtsp://10.0.0.5/1", 12.5), Camera("hall", str(tmp_path / "v.avi"))]
    assert links == {"links": [{"cameras": ["door", "hall"], "min": 2, "max": 30}]}
    assert [parse_duration(t) for t in ("90", "45s", "30m", "12h", "7d")] == [90, 45, 1800, 43200, 604800]


def test_watch_options_are_one_frozen_object_that_keyword_arguments_change(tmp_path):
    """watch's settings are one WatchOptions (the CLI builds one); keyword arguments change its fields, an unknown
    one is refused, and a "mot" detector without detection files is refused before the gallery is made."""
    import dataclasses

    from reidkit.errors import OptionError
    from reidkit.video.options import WatchOptions
    from reidkit.video.watch import watch

    base = WatchOptions(detector="mot", retain=60.0)
    o = WatchOptions.of(base, retain=5.0, buffer=8)
    assert (o.detector, o.retain, o.buffer, base.retain, o.engine) == ("mot", 5.0, 8, 60.0, "auto-int8")
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.retain = 1.0
    cams = [Camera("cam1", "http://127.0.0.1:9/")]
    with pytest.raises(TypeError, match="unknown watch options: retian"):
        watch(tmp_path / "db", cams, base, retian=5.0)
    refused = r"^detector: 'mot' needs a detections file for every camera; none for \['cam1'\]$"
    for options, changes in ((base, {}), (None, {"detector": "mot"})):
        with pytest.raises(OptionError, match=refused):
            watch(tmp_path / "db", cams, options, **changes)
    assert not (tmp_path / "db").exists()


def test_prometheus_text_has_a_line_per_camera_and_counter():
    status = {
        "cameras": {
            "cam1": {
                "received": 10,
                "processed": 9,
                "skipped": 1,
                "corrupt": 0,
                "reconnects": 2,
                "tracklets": 3,
                "lag": 0.25,
                "last_frame_age": None,
                "connected": True,
            }
        },
        "identities": 4,
        "deleted": 0,
    }
    text = prometheus_text(status)
    assert 'reidkit_frames_skipped_total{camera="cam1"} 1\n' in text
    assert 'reidkit_reconnects_total{camera="cam1"} 2\n' in text and 'reidkit_connected{camera="cam1"} 1\n' in text
    assert "reidkit_last_frame_age_seconds{" not in text  # no frame yet: no sample
    assert "# TYPE reidkit_lag_seconds gauge" in text and "reidkit_identities 4\n" in text


def test_retention_deletes_old_tracklets_and_their_thumbnails_and_the_gallery_stays_whole(scene, tmp_path):
    """Files as cameras (played at their own rate); --retain shorter than the run: old tracklets go, with their
    thumbnails, inside the gallery's consistency contract (index check clean)."""
    from reidkit.video.pipeline import thumbs_dir
    from reidkit.video.watch import watch

    db = tmp_path / "db"
    cams = [Camera(c, str(v), detections=str(g)) for c, v, g in zip(scene.cameras, scene.videos, scene.gt)]
    status = watch(db, cams, commit_every=0.3, identities_every=0.3, retain=1.0, buffer=100000)
    g = Gallery.open(db)
    left = g.entries(kind="tracklet")
    assert status["deleted"] >= 1, status
    thumbs = {p.name for p in thumbs_dir(g).iterdir()}
    kept = {n for e in left for n in e["meta"]["thumbs"]}
    assert thumbs == kept, "a deleted tracklet's thumbnails stay, or a kept one's are gone"
    assert cli_main(["index", "check", "--db", str(db)]) == 0


@needs_ffmpeg
def test_a_stream_down_for_10_s_reconnects_and_nothing_is_duplicated(scene, tmp_path):
    from threading import Event, Thread

    from reidkit.video.watch import watch

    port = free_port()
    server = serve_stream(scene.videos[0], port)
    stop, result = Event(), {}
    cams = [Camera("cam1", f"http://127.0.0.1:{port}/", FPS)]  # the motion detector, learning the background live
    t = Thread(
        target=lambda: result.update(
            watch(tmp_path / "db", cams, commit_every=0.5, identities_every=60, buffer=100000, stop=stop)
        )
    )
    t.start()
    try:
        server.wait(timeout=60)  # the stream played out: the camera is down
        time.sleep(10)
        server = serve_stream(scene.videos[0], port)  # back after 10 s
        server.wait(timeout=60)
        time.sleep(1.5)
    finally:
        stop.set()
        t.join(timeout=120)
        server.kill()
    c = result["cameras"]["cam1"]
    assert c["reconnects"] == 1 and c["received"] == 2 * FRAMES and c["skipped"] == 0, c
    entries = Gallery.open(tmp_path / "db").entries(kind="tracklet")
    keys = [e["tracklet"] for e in entries]
    assert len(keys) == len(set(keys))
    # the second pass of the video starts >= 10 s of frames later on the camera's grid
    starts = sorted(int(e["frame_start"]) for e in entries)
    assert any(s > FRAMES + 10 * FPS for s in starts) and any(s <= FRAMES for s in starts), starts


@needs_ffmpeg
def test_the_live_page_in_a_browser_shows_every_camera(tmp_path):
    """Headless Chromium on the live page while three looped streams play: a frame and the counters per camera.
    REIDKIT_SCREENSHOT_LIVE=docs/live.png saves the picture the docs show. (Streams that run until stopped and a
    buffer that skips nothing: a loaded machine makes it slower, never different.)"""
    import os
    from threading import Event, Thread

    from factories import BrowserError, chromium_page

    from reidkit.video.watch import watch

    rep = generate_scene(tmp_path / "scene", cams=3, ids=6, frames=120, fps=20.0, speed=1.0, topology="chain")
    ports = [free_port() for _ in rep.cameras]
    servers = [serve_stream(v, p, loop=True) for v, p in zip(rep.videos, ports)]
    cams = [Camera(c, f"http://127.0.0.1:{p}/", FPS, str(g)) for c, p, g in zip(rep.cameras, ports, rep.gt)]
    port, stop, result = free_port(), Event(), {}
    t = Thread(
        target=lambda: result.update(
            watch(
                tmp_path / "db",
                cams,
                commit_every=1.0,
                identities_every=2.0,
                buffer=100000,
                status_port=port,
                stop=stop,
            )
        )
    )
    t.start()
    try:
        with chromium_page(1540, 420) as page:
            deadline = time.monotonic() + 300
            while True:
                try:
                    page.goto(f"http://127.0.0.1:{port}/")
                    break
                except BrowserError:
                    assert time.monotonic() < deadline, "the live page did not come up"
                    time.sleep(0.5)
            page.wait_for(
                "document.querySelectorAll('.cam img').length === 3 && "
                "[...document.querySelectorAll('.cam img')].every(i => i.complete && "
                "i.naturalWidth === 320)",
                timeout=240,
            )
            page.wait_for("+document.getElementById('ids').textContent > 0", timeout=240)
            text = page.inner_text("#cams")
            for cam in rep.cameras:
                assert cam in text
            assert text.count("frames received") == 3 and "skipped" in text
            shot = tmp_path / "live.png"
            page.screenshot(shot, full_page=True)
            assert shot.stat().st_size > 10_000
            if os.environ.get("REIDKIT_SCREENSHOT_LIVE"):
                shutil.copy(shot, os.environ["REIDKIT_SCREENSHOT_LIVE"])
    finally:
        stop.set()
        t.join(timeout=300)
        for s in servers:
            s.kill()
    assert result["identities"] >= 1


@needs_ffmpeg
def test_reidkit_video_watches_a_stream_url_and_refuses_a_mix(scene, tmp_path, capsys):
    assert cli_main(["video", "http://127.0.0.1:9/x", str(scene.videos[0]), "--db", str(tmp_path / "x")]) == 2
    assert "not both" in capsys.readouterr().err
    port = free_port()
    server = serve_stream(scene.videos[0], port)
    db = tmp_path / "db"
    # a camera's password in its URL (how cameras take credentials) is used, never stored or printed
    proc = procs.Popen(
        [
            sys.executable,
            "-m",
            "reidkit.cli",
            "video",
            f"http://admin:s3cret@127.0.0.1:{port}/",
            "--db",
            str(db),
            "--camera",
            "door",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        server.wait(timeout=120)  # played out
        time.sleep(2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        server.kill()
    assert proc.returncode == 0, err[-2000:]
    status = json.loads(out)
    assert status["cameras"]["door"]["received"] == FRAMES
    rows, g = _tracklets(db)
    assert rows and {r[0] for r in rows} == {"door"}
    assert "s3cret" not in err and "s3cret" not in out
    stored = json.dumps([g.entries(), g.get_state("live:door"), g.get_state("video:door-live-s1")])
    assert "s3cret" not in stored and "http://***@127.0.0.1" in stored
