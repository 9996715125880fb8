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


def serve_stream(video: Path, port: int, quality: int = 2):
    """Debian's ffmpeg serving `video` at its own rate as MPEG-TS over HTTP on 127.0.0.1:`port` (one client,
    then it exits): a live camera for the tests (reidkit.video.live)."""
    import subprocess

    return subprocess.Popen(
        [
            "ffmpeg",
            "-loglevel",
            "error",
            "-re",
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
