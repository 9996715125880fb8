"""`reidkit tracklets export`: one MOTChallenge file per camera with per-camera tracklet ids, row for row the
gallery's tracklet boxes, scored by `reidkit eval-tracks`; and `reidkit identities --stitch-gap` on the same
gallery (stitching joins only tracklets that stitch's limits allow, stored for the next run)."""

from __future__ import annotations

import json

import pytest
from factories import cli_stdout

from reidkit.cli import main


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    root = tmp_path_factory.mktemp("trk")
    cli_stdout(
        "scene",
        str(root / "s"),
        *"--cams 2 --ids 4 --frames 60 --size 120x160 --speed 1.0 --transit 1,3 --seed 3".split(),
    )
    args = ["video"] + [str(root / "s" / c / f"{c}.avi") for c in ("cam1", "cam2")]
    for c in ("cam1", "cam2"):
        args += ["--detections", str(root / "s" / c / "gt" / "gt.txt")]
    cli_stdout(*args, "--db", str(root / "db"))
    return root


def test_rows_are_the_gallery_tracklet_boxes(db):
    from reidkit.retrieval.gallery import Gallery

    out = db / "trk"
    printed = cli_stdout("tracklets", "export", "--db", str(db / "db"), "--out", str(out), "--camera", "cam9")
    assert "cam1:" in printed and "cam2:" in printed
    assert (out / "cam9.txt").read_text() == ""  # a camera asked for with no tracklets: an empty file
    rows = Gallery.open(db / "db").entries(kind="tracklet")
    assert rows
    for cam in ("cam1", "cam2"):
        want = sorted(
            (int(b[0]), int(r["id"]), round(b[1], 2), round(b[2], 2), round(b[3] - b[1], 2), round(b[4] - b[2], 2))
            for r in rows
            if r["camera"] == cam
            for b in r["meta"]["boxes"]
        )
        got = []
        for line in (out / f"{cam}.txt").read_text().splitlines():
            f, i, x, y, w, h, conf, *rest = line.split(",")
            assert rest == ["-1", "-1", "-1"] and 0 <= float(conf)
            got.append((int(f), int(i), float(x), float(y), float(w), float(h)))
        assert got == sorted(got) and [g[:2] for g in got] == [w[:2] for w in want]
        assert all(abs(a - b) < 0.011 for g, w in zip(got, want) for a, b in zip(g[2:], w[2:]))
        # one box per tracklet id and frame (what a tracker's MOT output holds)
        assert len({g[:2] for g in got}) == len(got)
    pytest.importorskip("trackeval")
    res = json.loads(cli_stdout("eval-tracks", "--gt", str(db / "s" / "GT"), "--pred", str(out), "--json"))
    assert res["combined"]["IDF1"] > 80  # the tracker's own tracklets on ground-truth boxes


def test_bad_input(db, tmp_path, capsys):
    assert main(["tracklets", "export", "--db", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "nope" in err[0]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["tracklets", "export", "--db", str(db / "db"), "--out", str(blocker)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "file" in err[0]
    for flag, bad in (
        ("--stitch-gap", "-1"),
        ("--stitch-gap", "x"),
        ("--threshold", "nan"),
        ("--max-gap", "-2"),
        ("--camera-debias", "2"),
    ):
        assert main(["identities", "--db", str(db / "db"), flag, bad]) == 2  # one line, no argparse usage
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {flag}:"), (flag, err)


def test_stitching_through_identities(db):
    from reidkit.retrieval.gallery import Gallery

    rep = json.loads(cli_stdout("identities", "--db", str(db / "db"), "--stitch-gap", "2", "--rebuild", "--json"))
    assert rep["params"]["stitch"]["max_gap"] == 2.0 and rep["stitched"] >= 0
    again = json.loads(cli_stdout("identities", "--db", str(db / "db"), "--json"))  # the stored run's limits
    assert again["params"]["stitch"] == rep["params"]["stitch"]
    off = json.loads(cli_stdout("identities", "--db", str(db / "db"), "--stitch-gap", "0", "--rebuild", "--json"))
    assert off["params"]["stitch"] is None and off["stitched"] == 0
    assert Gallery.open(db / "db").get_state("identities")["params"]["stitch"] is None
    assert off["params"]["camera_debias"] == 0.5  # the default
    raw = json.loads(cli_stdout("identities", "--db", str(db / "db"), "--camera-debias", "0", "--rebuild", "--json"))
    kept = json.loads(cli_stdout("identities", "--db", str(db / "db"), "--json"))  # the stored run's share
    assert raw["params"]["camera_debias"] == kept["params"]["camera_debias"] == 0.0
