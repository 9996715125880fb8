"""Inputs that used to be accepted wrongly (issue 17 item 8), checked outside the CLI table of test_bad_input.

MOT files with a byte-order mark, truncated videos reported, range checks shared by flags,
config keys and loaders (reidkit.utils.validate).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from factories import noise_video

from reidkit.errors import ReIDError


def test_mot_file_with_a_bom_reads_line_one(tmp_path):
    from reidkit.video.detectors.mot import MotDetections

    path = tmp_path / "det.txt"
    path.write_bytes("\ufeff1,1,10,20,30,40,0.9,-1,-1,-1\n2.0,1,12,20,30,40,0.8,-1,-1,-1\n".encode("utf-8"))
    det = MotDetections(path)
    boxes, scores = det(None, 0)
    np.testing.assert_allclose(boxes, [[10, 20, 40, 60]])
    assert det.frames == 2  # "2.0" is an integer frame written as a float: accepted
    path.write_text("1,1,10,20,30,40,0.9\n3.5,1,10,20,30,40,0.9\n")
    with pytest.raises(ReIDError, match="det.txt, line 2"):
        MotDetections(path)


def test_a_truncated_video_is_reported(tmp_path, caplog):
    from reidkit.video.decode import FrameStats, iter_frames

    whole, cut = tmp_path / "whole.avi", tmp_path / "cut.avi"
    noise_video(whole, 80, (64, 48), 10.0)
    data = whole.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.4)])
    stats = FrameStats()
    assert sum(1 for _ in iter_frames(whole, stats=stats)) == 80
    assert (stats.announced, stats.read, stats.truncated) == (80, 80, False)
    with caplog.at_level(logging.WARNING):
        stats = FrameStats()
        n = sum(1 for _ in iter_frames(cut, every=2, stats=stats))
    assert stats.announced == 80 and 0 < stats.read < 80 and n == (stats.read + 1) // 2
    assert stats.truncated and f"only {stats.read} of the 80 frames" in caplog.text
    assert stats.warning(cut).startswith("warning: video ")


@pytest.mark.parametrize(
    "value, ok",
    [("1.5", True), ("0", True), ("nan", False), ("inf", False), ("-inf", False), ("1e400", False), ("x", False)],
)
def test_finite(value, ok):
    from reidkit.utils.validate import finite

    if ok:
        assert finite(value, "--x", lo=0.0) == float(value)
    else:
        with pytest.raises(ReIDError, match="--x"):
            finite(value, "--x")


@pytest.mark.parametrize(
    "size, ok",
    [
        ((256, 128), True),
        ((8, 2048), True),
        ((0, 0), False),
        ((100000, 100000), False),
        ((7, 64), False),
        ((64.5, 32), False),
        ((1, 2, 3), False),
        (None, False),
    ],
)
def test_check_hw(size, ok):
    from reidkit.utils.validate import check_hw

    if ok:
        assert check_hw(size, "size") == tuple(size)
    else:
        with pytest.raises(ReIDError, match="size"):
            check_hw(size, "size")


@pytest.mark.parametrize(
    "host, ok",
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", True),
        ("999.1.1.1", False),
        ("1.2.3", False),
        ("", False),
        ("no-such-host.invalid", False),
    ],
)
def test_check_host(host, ok):
    from reidkit.utils.validate import check_host

    if ok:
        assert check_host(host) == host
    else:
        with pytest.raises(ReIDError, match="^host: "):
            check_host(host)


def test_db_id_range():
    from reidkit.utils.validate import SQLITE_MAX, db_id

    assert db_id(str(SQLITE_MAX), "--id") == SQLITE_MAX
    for bad in (str(SQLITE_MAX + 1), "-1", "1.5", "one"):
        with pytest.raises(ReIDError, match="--id"):
            db_id(bad, "--id")


def test_config_refuses_non_finite_floats_and_ints_past_64_bits():
    from reidkit.config.schema import SamplerConfig, SolverConfig
    from reidkit.config.typed import build

    assert build(SolverConfig, {"base_lr": "1e-4"}, "solver").base_lr == 1e-4
    for bad in (float("nan"), float("inf"), "1e999"):
        with pytest.raises(ReIDError, match="solver.base_lr"):
            build(SolverConfig, {"base_lr": bad}, "solver")
    with pytest.raises(ReIDError, match="sampler.p"):
        build(SamplerConfig, {"p": 10**23}, "sampler")


def test_a_truncated_video_is_counted_in_the_video_report(tmp_path, capsys):
    """`reidkit video` on a cut file: the report says how many frames were decoded of how many, and so does
    the stored state (a re-run that skips the video still reports it)."""
    import json

    from reidkit.cli import main

    whole, cut = tmp_path / "whole.avi", tmp_path / "cut.avi"
    noise_video(whole, 80, (64, 48), 10.0)
    data = whole.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.4)])
    gt = tmp_path / "gt.txt"
    gt.write_text("".join(f"{f},1,10,8,20,30,1,-1,-1,-1\n" for f in range(1, 81)))
    db = tmp_path / "db"
    args = ["video", str(cut), "--db", str(db), "--detections", str(gt), "--engine", "torch"]
    assert main([*args, "--json"]) == 0
    v = json.loads(capsys.readouterr().out)["videos"][0]
    assert v["truncated"] and v["frames_announced"] == 80 and 0 < v["frames_decoded"] < 80
    assert main(args) == 0  # already ingested: skipped, and still reported truncated
    out = capsys.readouterr().out
    assert "skipped" in out and f"only {v['frames_decoded']} of 80 frames could be decoded" in out
    assert (
        main(
            ["video", str(whole), "--db", str(tmp_path / "db2"), "--detections", str(gt), "--json", "--engine", "torch"]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["videos"][0]["truncated"] is False
