"""`reidkit watch rtsp://...` on a real RTSP server on 127.0.0.1 (GStreamer's, Debian packages driven by the system
Python; skipped with the reason when they are missing): the tracklets `reidkit video` gets from the file, with the
camera's user and password (never stored or printed), a camera with a wrong password reported while the other goes
on, and a killed and restarted RTSP server reconnected."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from factories import free_port, rtsp_unavailable, serve_rtsp, wait_health

import procs
from reidkit.cli import main as cli_main
from reidkit.data.scene import generate_scene
from reidkit.retrieval.gallery import Gallery

_WHY = rtsp_unavailable()
pytestmark = pytest.mark.skipif(_WHY is not None, reason=f"needs an RTSP server: {_WHY}")
FRAMES, FPS = 60, 20.0


def test_watch_reads_an_rtsp_camera_with_credentials_and_reconnects_after_a_server_restart(tmp_path):
    import yaml

    scene = generate_scene(tmp_path / "scene", cams=1, ids=4, frames=FRAMES, fps=FPS, speed=1.0)
    video, gt = scene.videos[0], scene.gt[0]
    vdb = tmp_path / "vdb"
    assert cli_main(["video", str(video), "--db", str(vdb), "--camera", "door", "--detections", str(gt)]) == 0
    ref = [(e["camera"], e["frame_start"], e["frame_end"]) for e in Gallery.open(vdb).entries(kind="tracklet")]

    port, status_port, db = free_port(), free_port(), tmp_path / "db"
    cams = {
        "cameras": [
            {"name": "door", "url": f"rtsp://admin:s3cret@127.0.0.1:{port}/door", "fps": FPS, "detections": str(gt)},
            {"name": "yard", "url": f"rtsp://admin:wrong@127.0.0.1:{port}/door", "fps": FPS, "detections": str(gt)},
        ]
    }
    (tmp_path / "cams.yaml").write_text(yaml.safe_dump(cams))
    server = serve_rtsp(video, port, "door", "admin", "s3cret")
    cmd = [sys.executable, "-m", "reidkit.cli", "watch", str(tmp_path / "cams.yaml"), "--db", str(db)]
    cmd += ["--buffer", "100000", "--commit-every", "1", "--status-port", str(status_port), "--json"]
    proc = procs.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # the whole video over RTSP, while the camera with the wrong password is refused and reported
        h = wait_health(status_port, proc, lambda h: h["cameras"]["door"]["processed"] >= FRAMES)
        yard = h["cameras"]["yard"]
        assert not yard["connected"] and yard["failures"] >= 1 and yard["last_error"], yard
        # the RTSP server is killed mid-stream... and comes back: the camera reconnects and reads it again
        server.kill()
        server.wait(timeout=30)
        time.sleep(1.0)
        server = serve_rtsp(video, port, "door", "admin", "s3cret")
        h = wait_health(
            status_port,
            proc,
            lambda h: h["cameras"]["door"]["reconnects"] >= 1 and h["cameras"]["door"]["received"] >= 2 * FRAMES,
            timeout=180,
        )
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
        server.kill()
    assert proc.returncode == 0, err[-3000:]
    status = json.loads(out)
    assert status["cameras"]["door"]["received"] >= 2 * FRAMES and status["cameras"]["yard"]["received"] == 0
    g = Gallery.open(db)
    entries = g.entries(kind="tracklet")
    keys = [e["tracklet"] for e in entries]
    assert len(keys) == len(set(keys))
    # the detections file numbers the first pass only: its tracklets are the file's, frame for frame
    got = [(e["camera"], e["frame_start"], e["frame_end"]) for e in entries]
    assert Counter(got) == Counter(ref), f"rtsp: {sorted(got)}\nfile: {sorted(ref)}"
    stored = json.dumps([g.entries(), g.get_state("live:door"), g.get_state("video:door-live-s1")])
    for secret in ("s3cret", "wrong"):
        assert secret not in err and secret not in out and secret not in stored
    assert "rtsp://***@127.0.0.1" in stored
