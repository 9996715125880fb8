"""Shared builders for tests: small, deterministic things several test files make the same way.

Import them (``from factories import weights_world``); the tests folder is on ``sys.path`` under pytest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch


def weights_world(root: Path) -> dict[str, Any]:
    """What the verbs that load weights need, under ``root``: a tiny resnet18 reidkit checkpoint
    (``good``, 64x32 input), 4 Market-named crops, a gallery built with the checkpoint (``db``), a
    one-camera 6-frame scene and a `reidkit test` config over a 4-identity synthetic set."""
    import yaml
    from PIL import Image

    from reidkit.cli import main
    from reidkit.data.datasets import load_dataset
    from reidkit.data.scene import generate_scene
    from reidkit.models.build import ModelConfig, build_model, save_model

    cfg = ModelConfig(backbone="resnet18", pretrained=False)
    torch.manual_seed(0)
    good = save_model(root / "good.pt", build_model(cfg, 4).eval(), cfg, 4, (64, 32))
    crops = root / "crops"
    crops.mkdir()
    for i in range(4):
        arr = (np.random.default_rng(i).random((64, 32, 3)) * 255).astype(np.uint8)
        Image.fromarray(arr).save(crops / f"{i + 1:04d}_c{i % 2 + 1}s1_{i:06d}_00.jpg")
    db = root / "db"
    assert main(["index", "build", "--images", str(crops), "--db", str(db), "--weights", str(good)]) == 0
    scene = generate_scene(root / "scene", cams=1, ids=1, frames=6, size=(96, 128), fps=10, seed=0)
    syn = root / "syn"
    load_dataset("synthetic", syn, ids=4, images_per_id=4, cams=2, seed=0)
    conf = {
        "data": {
            "datasets": [
                {"name": "synthetic", "root": str(syn), "options": {"ids": 4, "images_per_id": 4, "cams": 2, "seed": 0}}
            ]
        },
        "device": "cpu",
        "output_dir": str(root / "t"),
    }
    (root / "c.yaml").write_text(yaml.safe_dump(conf))
    return {"root": root, "good": good, "crops": crops, "db": db, "scene": scene, "config": root / "c.yaml"}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_stream(video: Path, port: int, quality: int = 2, loop: bool = False):
    """Debian's ffmpeg serving `video` at its own rate as MPEG-TS over HTTP on 127.0.0.1:`port` (one client,
    then it exits; `loop`: the video over and over until killed): a live camera for the tests (reidkit.video.live)."""
    import subprocess

    return subprocess.Popen(
        [
            "ffmpeg",
            "-loglevel",
            "error",
            "-re",
            *(["-stream_loop", "-1"] if loop else []),
            "-i",
            str(video),
            "-c:v",
            "mpeg2video",
            "-q:v",
            str(quality),
            "-f",
            "mpegts",
            "-listen",
            "1",
            f"http://127.0.0.1:{port}/",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


RTSP_SERVER = Path(__file__).resolve().parent / "data" / "rtsp_server.py"
SYSTEM_PYTHON = "/usr/bin/python3"


def rtsp_unavailable() -> str | None:
    """Why GStreamer's RTSP server cannot run here (None: it can): it needs Debian's python3-gi,
    gir1.2-gst-rtsp-server-1.0 and gstreamer1.0-plugins-{base,good,ugly} (x264enc), driven by the system Python."""
    import subprocess

    if not Path(SYSTEM_PYTHON).is_file():
        return f"no system Python at {SYSTEM_PYTHON}"
    probe = (
        "import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
        "from gi.repository import Gst, GstRtspServer; Gst.init(None); "
        "missing = [e for e in ('x264enc', 'rtph264pay', 'decodebin', 'videoconvert') if not Gst.ElementFactory.find(e)]; "
        "print(' '.join(missing))"
    )
    try:
        out = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"the system Python does not run: {exc}"
    if out.returncode != 0:
        return (
            "GStreamer's RTSP server is not installed (gir1.2-gst-rtsp-server-1.0, python3-gi): "
            + (out.stderr.strip().splitlines() or ["?"])[-1]
        )
    if out.stdout.strip():
        return f"GStreamer elements missing (gstreamer1.0-plugins-*): {out.stdout.strip()}"
    return None


def serve_rtsp(video: Path, port: int, path: str = "cam", user: str | None = None, password: str | None = None):
    """GStreamer's RTSP server (tests/data/rtsp_server.py) serving `video` as H.264 at its own rate on
    rtsp://127.0.0.1:`port`/`path`, with basic authentication when `user` is given; returns once it listens."""
    import subprocess

    cmd = [SYSTEM_PYTHON, str(RTSP_SERVER), str(video), str(port), path]
    if user is not None:
        cmd += [user, str(password)]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise RuntimeError(f"the RTSP server did not start (exit {proc.wait()})")
    return proc
