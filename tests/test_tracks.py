"""reidkit.evaluation.tracks (TrackEval): hand-computed cases (perfect, a swapped id, a person given two
global ids in two cameras), both ground-truth layouts, the CLI and bad inputs."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("trackeval")

from reidkit.cli import main  # noqa: E402
from reidkit.errors import ReIDError  # noqa: E402
from reidkit.evaluation.tracks import evaluate_tracks  # noqa: E402

FRAMES = 10


def _rows(pid_of_frame, x):
    """One box per frame at x (40 px apart from the other person), id chosen per frame."""
    return [f"{f},{pid_of_frame(f)},{x},10,20,40,1,-1,-1,-1\n" for f in range(1, FRAMES + 1)]


def _seq(root, name, lines, length=FRAMES):
    d = root / name
    (d / "gt").mkdir(parents=True)
    (d / "gt" / "gt.txt").write_text("".join(lines))
    (d / "seqinfo.ini").write_text(f"[Sequence]\nname={name}\nseqLength={length}\n")


def _pred(root, name, lines):
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{name}.txt").write_text("".join(lines))


def test_perfect_prediction_is_100(tmp_path):
    gt = _rows(lambda f: 1, 0) + _rows(lambda f: 2, 60)
    _seq(tmp_path / "gt", "cam1", gt)
    _pred(tmp_path / "pred", "cam1", gt)
    r = evaluate_tracks(tmp_path / "gt", tmp_path / "pred")
    for key in ("HOTA", "IDF1", "MOTA"):
        assert r["sequences"]["cam1"][key] == pytest.approx(100.0)
        assert r["combined"][key] == pytest.approx(100.0)
    assert r["sequences"]["cam1"]["IDsw"] == 0
    assert r["multi_camera"] is None  # one camera: nothing to concatenate


def test_swapped_ids_halve_idf1(tmp_path):
    # two people; at frame 6 the tracker swaps their ids
    _seq(tmp_path / "gt", "cam1", _rows(lambda f: 1, 0) + _rows(lambda f: 2, 60))
    _pred(tmp_path / "pred", "cam1", _rows(lambda f: 1 if f <= 5 else 2, 0) + _rows(lambda f: 2 if f <= 5 else 1, 60))
    m = evaluate_tracks(tmp_path / "gt", tmp_path / "pred")["sequences"]["cam1"]
    # best one-to-one id map keeps 5 of each person's 10 boxes: IDF1 = 2 * 10 / (20 + 20)
    assert m["IDF1"] == pytest.approx(50.0)
    assert m["IDsw"] == 2
    assert m["MOTA"] == pytest.approx(100 * (1 - 2 / 20))
    assert m["HOTA"] < 100


def test_multi_camera_idf1_over_global_ids(tmp_path):
    # one person in two cameras, tracked perfectly in each, but under global id 1 in cam1 and 7 in cam2
    gt_root = tmp_path / "GT" / "SCENE-all"
    _seq(gt_root, "cam1", _rows(lambda f: 1, 0))
    _seq(gt_root, "cam2", _rows(lambda f: 1, 0))
    (tmp_path / "GT" / "seqmaps").mkdir()
    (tmp_path / "GT" / "seqmaps" / "SCENE-all.txt").write_text("name\ncam1\ncam2\n")
    _pred(tmp_path / "pred", "cam1", _rows(lambda f: 1, 0))
    _pred(tmp_path / "pred", "cam2", _rows(lambda f: 7, 0))
    r = evaluate_tracks(tmp_path / "GT", tmp_path / "pred")
    assert r["sequences"]["cam1"]["IDF1"] == r["sequences"]["cam2"]["IDF1"] == pytest.approx(100.0)
    assert r["multi_camera"]["IDF1"] == pytest.approx(50.0)  # 10 of 20 boxes under the person's best id
    # the same id in both cameras: 100
    _pred(tmp_path / "pred", "cam2", _rows(lambda f: 1, 0))
    assert evaluate_tracks(tmp_path / "GT", tmp_path / "pred")["multi_camera"]["IDF1"] == pytest.approx(100.0)


def test_cli_and_bad_inputs(tmp_path, capsys):
    _seq(tmp_path / "gt", "cam1", _rows(lambda f: 1, 0))
    _seq(tmp_path / "gt", "cam2", _rows(lambda f: 2, 0))
    _pred(tmp_path / "pred", "cam1", _rows(lambda f: 1, 0))
    assert main(["eval-tracks", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred")]) == 2
    assert "no predictions for sequence 'cam2'" in capsys.readouterr().err
    _pred(tmp_path / "pred", "cam2", _rows(lambda f: 2, 0))
    out = tmp_path / "m.json"
    assert main(["eval-tracks", "--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "pred"), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "multi-camera" in text and "cam2" in text
    assert json.loads(out.read_text())["multi_camera"]["IDF1"] == pytest.approx(100.0)
    _pred(tmp_path / "pred", "cam2", _rows(lambda f: 2, 0) + ["3,2,5,5,10,10,1,-1,-1,-1\n"])
    with pytest.raises(ReIDError, match=r"cam2.txt: id 2 appears twice in frame 3"):
        evaluate_tracks(tmp_path / "gt", tmp_path / "pred")
    _pred(tmp_path / "pred", "cam2", ["11,2,0,10,20,40,1\n"])
    with pytest.raises(ReIDError, match="frame 11 is beyond the sequence's 10 frames"):
        evaluate_tracks(tmp_path / "gt", tmp_path / "pred")
    _pred(tmp_path / "pred", "cam2", ["1,2,0,10,0,40,1\n"])
    with pytest.raises(ReIDError, match="positive width"):
        evaluate_tracks(tmp_path / "gt", tmp_path / "pred")
    with pytest.raises(ReIDError, match="no sequences"):
        evaluate_tracks(tmp_path / "pred", tmp_path / "pred")
