"""Distributed data-parallel training: two CPU processes over gloo, launched with torchrun."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import procs
import pytest
import torch
import yaml

from reidkit.data.datasets import load_dataset


@pytest.fixture(scope="module")
def syn_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp_data") / "syn"
    load_dataset("synthetic", root, ids=16, images_per_id=8, cams=3, seed=1)
    return root


def test_two_process_gloo_ddp(tmp_path: Path, syn_root: Path):
    out = tmp_path / "run"
    cfg = {
        "_base_": "bot_r50.yaml",
        "data": {
            "datasets": [
                {
                    "name": "synthetic",
                    "root": str(syn_root),
                    "options": {"ids": 16, "images_per_id": 8, "cams": 3, "seed": 1},
                }
            ],
            "size": [64, 32],
        },
        "input": {"mean": None, "std": None},
        "sampler": {"p": 4, "k": 2, "epoch_batches": 2},
        "model": {"backbone": "resnet18", "pretrained": False},
        "solver": {"max_epochs": 1, "warmup_epochs": 0, "log_period": 1},
        "test": {"batch_size": 64},
        "device": "cpu",
        "output_dir": str(out),
    }
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    # the workers torchrun starts are forks of the tests' server (tests/procs.py)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHON_EXEC=procs.python_shim())
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "reidkit.cli",
        "train",
        "--config",
        str(path),
    ]
    proc = procs.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # Only rank 0 writes: one log, one tensorboard file, one metrics file.
    assert (out / "last.pt").is_file() and (out / "model.pt").is_file()
    assert len(list((out / "tb").glob("events.out.tfevents.*"))) == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["datasets"]) == {"synthetic"} and 0.0 < metrics["mean"]["mAP"] <= 100.0
    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    assert ckpt["world_size"] == 2 and ckpt["epoch"] == 1
    assert ckpt["sampler"]["world_size"] == 2
    assert not any(k.startswith("module.") for k in ckpt["model"])
    log = (out / "train.log").read_text()
    # Each rank runs 2 iterations of 4 x 2 images; the log counts images of both ranks.
    assert "epoch 1 iter 2/2" in log and "epoch 1 iter 3/" not in log
