"""`reidkit usl` as a user runs it: the usl_demo recipe shrunk by dotted overrides, bf16 and
channels-last on CPU, killed with SIGKILL mid-run and resumed with resume=auto; and two processes
under torchrun (gloo)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import procs
import pytest


def usl_args(root: Path, out: Path, *extra: str) -> list[str]:
    return [
        "usl",
        "--config",
        "usl_demo",
        f"data.datasets.0.root={root}",
        "data.datasets.0.options.ids=12",
        "data.datasets.0.options.images_per_id=6",
        "data.datasets.0.options.cams=3",
        "data.size=[64,32]",
        "input.pad=4",
        "usl.iters_per_epoch=2",
        "usl.batch_size=12",
        "usl.num_instances=4",
        "usl.k1=6",
        "usl.min_samples=2",
        "usl.outliers=singleton",
        "solver.max_epochs=3",
        "solver.eval_period=1",
        "solver.log_period=1",
        "solver.amp=bf16",
        "data.channels_last=true",
        "usl.eval_initial=false",  # the recipe's before-training evaluation: tested in test_usl.py
        f"output_dir={out}",
        *extra,
    ]


def env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "reidkit.cli", *args]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    from reidkit.data.datasets import load_dataset

    root = tmp_path_factory.mktemp("usl_proc") / "data_B"
    load_dataset("synthetic", root, ids=12, images_per_id=6, cams=3, seed=1, domain="B")
    return root


def test_usl_demo_killed_and_resumed_matches_the_uninterrupted_run(data_root: Path, tmp_path: Path):
    full = tmp_path / "full"
    proc = procs.run(cli(*usl_args(data_root, full)), env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # a console line per epoch, and TensorBoard events
    for e in (1, 2, 3):
        assert f"epoch {e}/3 done in" in proc.stderr
    assert "clusters:" in proc.stderr and list((full / "tb").glob("events.out.tfevents.*"))

    cut = tmp_path / "cut"
    p = procs.Popen(
        cli(*usl_args(data_root, cut)), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 400
    while time.time() < deadline and not (cut / "last.pt").is_file() and p.poll() is None:
        time.sleep(0.05)
    assert p.poll() is None, "the run ended before it could be killed"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (cut / "metrics.json").exists()
    proc = procs.run(
        cli(*usl_args(data_root, cut, "resume=auto")), env=env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stderr
    a = json.loads((full / "metrics.json").read_text())
    b = json.loads((cut / "metrics.json").read_text())
    assert [h["epoch"] for h in b["history"]] == [1, 2, 3]
    assert b["mean"] == pytest.approx(a["mean"], abs=1e-9)
    assert [c["n_clusters"] for c in b["clusters"]] == [c["n_clusters"] for c in a["clusters"]]


def test_usl_under_torchrun_two_processes(data_root: Path, tmp_path: Path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "reidkit.cli",
        *usl_args(data_root, out, "solver.max_epochs=2", "solver.amp=none", "data.channels_last=false"),
    ]
    # torchrun's workers: forks of the tests' server (tests/procs.py)
    proc = procs.run(
        cmd, env={**env(), "PYTHON_EXEC": procs.python_shim()}, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2] and 0 < metrics["mean"]["mAP"] <= 100
    assert len(list((out / "tb").glob("events.out.tfevents.*"))) == 1  # rank 0 only
    import torch

    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    assert ckpt["world_size"] == 2 and ckpt["epoch"] == 2
    assert not any(k.startswith(("module.", "net.")) for k in ckpt["model"])
