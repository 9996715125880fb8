"""benchmarks/gpu_run.sh end to end on the CPU (--dry-run, tiny sizes): every step writes its JSON
and the summary prints one table. The GPU machine runs the same script at full size."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import procs
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_run")
    # every `$PYTHON` the script starts is a fork of the tests' server (tests/procs.py): the same Python
    # and libraries, without eight interpreter starts
    env = dict(
        os.environ,
        OUT=str(out),
        PYTHON=procs.python_shim(),
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_run.sh"), "--dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=2400,
    )
    return out, proc


def _load(out: Path, step: str) -> dict:
    path = out / f"cpu-dryrun-{step}.json"
    assert path.exists(), f"{path.name} missing; written: {sorted(p.name for p in out.iterdir())}"
    return json.loads(path.read_text())


def test_every_step_writes_its_json(dry_run):
    out, proc = dry_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = _load(out, "data")
    assert data["train_images"] > 0 and Path(data["root"], "bounding_box_train").is_dir()
    train = _load(out, "bench-train")["results"]["train"]
    assert train["reidkit"]["images_per_s"] > 0 and train["reference"]["images_per_s"] > 0
    extract = _load(out, "bench-extract")["results"]["extract"]
    assert extract["reidkit"]["images_per_s"] > 0
    evals = _load(out, "bench-eval")["results"]
    assert evals["cluster"]["cpu"]["seconds"] > 0 and evals["rerank"]["cpu"]["seconds"] > 0
    full = _load(out, "full_run")
    assert full["rc"] == 0 and full["epochs_done"] == full["epochs_planned"] == 1
    assert full["s_per_epoch"] > 0 and full["images_per_s"] > 0 and full["cache_build_s"] >= 0
    for step, groups in (("usl", 1), ("usl-ghost", 2)):
        usl = _load(out, step)
        assert "error" not in usl, usl
        assert usl["clusters"] >= 1 and usl["round_s"] > 0 and usl["amp"] == "bf16" and usl["bn_groups"] == groups
    video = _load(out, "video")
    assert video["rc"] == 0 and video["frames"] > 0 and video["frames_per_s"] > 0


def test_prints_one_table(dry_run):
    out, proc = dry_run
    text = proc.stdout
    assert "GPU run summary (cpu-dryrun)" in text
    table = [ln for ln in text.splitlines() if ln.startswith("| ")]
    steps = {ln.split("|")[1].strip().split(" ")[0] for ln in table[1:]}
    assert {"0", "1", "2", "3", "4"} <= steps, table
    assert not any("missing" in ln or "error" in ln for ln in table), table
    assert (out / "cpu-dryrun-summary.md").read_text().startswith("GPU run summary")


def test_a_killed_step_leaves_the_others(tmp_path):
    """The summary of a run whose later steps never finished names them missing and keeps the rest."""
    from benchmarks import gpu_steps

    (tmp_path / "cpu-dryrun-data.json").write_text(
        json.dumps({"train_images": 10, "seconds": 1.0, "ids": 2, "size": [64, 32], "root": "x"})
    )
    text = gpu_steps.summary(tmp_path)
    assert "| 0 data | generate 10 train images" in text
    for step in ("1 benchmarks.run", "2 full_run", "3 usl", "3 usl-ghost", "4 video"):
        assert f"| {step} | - | missing" in text
