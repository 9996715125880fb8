"""Smoke test of the benchmark suite's machinery (tiny sizes, in-process): it runs and writes valid JSON.

No timing is asserted: speed claims live only in the benchmark results, as ratios from one run.
"""

from __future__ import annotations

import json
import math

import pytest

pytest.importorskip("faiss")
pytest.importorskip("sklearn")


def test_tiny_suite_writes_valid_json(tmp_path, capsys):
    """`benchmarks.run --tiny --no-isolate` fills every section with finite numbers and a table."""
    from benchmarks.run import main

    assert main(["--tiny", "--no-isolate", "--device", "cpu", "--out", str(tmp_path), "--tag", "smoke"]) == 0
    data = json.loads((tmp_path / "smoke.json").read_text())
    assert data["preset"] == "tiny"
    for key in ("platform", "cpu_model", "cpu_count", "gpu", "torch"):
        assert key in data["machine"]
    res = data["results"]
    for bench in ("train", "extract"):
        for side in ("reference", "reidkit"):
            r = res[bench][side]
            assert "error" not in r, r.get("error")
            assert r["images_per_s"] > 0 and math.isfinite(r["images_per_s"])
            assert r["peak_rss_mb"] > 0
        assert res[bench]["speedup"] > 0
    assert res["train"]["reidkit"]["amp"] == "fp32"  # bf16 autocast is for CUDA only
    for bench in ("eval", "rerank", "cluster"):
        r = res[bench]["cpu"]
        assert "error" not in r, r.get("error")
        assert r["seconds"] >= 0 and r["peak_rss_mb"] > 0
    assert 0.0 <= res["eval"]["cpu"]["mAP"] <= 1.0
    assert "| train | reidkit |" in data["table"]
    assert "| cluster |" in capsys.readouterr().out


def test_only_and_errors_are_reported(tmp_path):
    """`--only` selects benchmarks; a failing measurement becomes an error entry, not a crash."""
    from benchmarks import run

    path, payload = run.run_suite("tiny", tmp_path, "cpu", ["eval"], isolate=False, tag="only")
    assert set(payload["results"]) == {"eval", "rerank"}
    assert json.loads(path.read_text())["results"]["eval"]["cpu"]["shape"] == [40, 160]
    bad = run.call(
        "eval",
        {"device": "cpu", "num_query": 0, "num_gallery": 10, "ids": 2, "dim": 4, "repeats": 1},
        isolate=False,
        timeout=None,
    )
    assert "error" in bad
    assert run.main(["--only", "nope", "--out", str(tmp_path)]) == 2


def test_machine_tag():
    """Result files are named after the machine: cpu, or the GPU name, plus the preset."""
    from benchmarks.run import machine_tag

    assert machine_tag({"gpu": None}, "cpu", "quick") == "cpu-quick"
    assert machine_tag({"gpu": "NVIDIA H100 80GB HBM3"}, "cuda", "full") == "nvidia-h100-80gb-hbm3"
