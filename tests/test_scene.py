"""reidkit.data.scene: multi-camera synthetic scenes (videos + MOTChallenge ground truth): format,
determinism, global identities, people entering and leaving, the CLI and bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from reidkit.cli import main
from reidkit.data.scene import generate_scene, read_mot
from reidkit.errors import ReIDError


def _frames(path):
    import cv2

    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        out.append(f)
    cap.release()
    return out


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return generate_scene(
        tmp_path_factory.mktemp("scene") / "s", cams=2, ids=3, frames=60, size=(96, 128), fps=10, seed=5, speed=1.0
    )


def test_videos_and_ground_truth_format(scene):
    assert scene.cameras == ["cam1", "cam2"]
    for video, gt in zip(scene.videos, scene.gt):
        frames = _frames(video)
        assert len(frames) == 60 and frames[0].shape == (96, 128, 3)
        lines = gt.read_text().splitlines()
        assert lines and all(len(line.split(",")) == 10 and line.endswith(",1,-1,-1,-1") for line in lines)
        a = read_mot(gt)
        assert a[:, 0].min() >= 1 and a[:, 0].max() <= 60  # 1-based frames
        assert set(a[:, 1].astype(int)) <= {1, 2, 3}
        x, y, w, h = a[:, 2], a[:, 3], a[:, 4], a[:, 5]
        assert (x >= 0).all() and (y >= 0).all() and (x + w <= 128 + 1e-6).all() and (y + h <= 96 + 1e-6).all()
        assert (w > 0).all() and (h > 0).all()
        # a box of a person differs from the same place when nobody is there (the person is drawn in it)
        f0 = int(a[0, 0])
        empty = [i for i in range(60) if i + 1 not in set(a[:, 0].astype(int))]
        if empty:
            bx = a[0, 2:6].astype(int)
            patch = lambda i: frames[i][bx[1] : bx[1] + bx[3], bx[0] : bx[0] + bx[2]].astype(float)  # noqa: E731
            assert np.abs(patch(f0 - 1) - patch(empty[0])).mean() > 8


def test_identities_are_global_and_people_enter_and_leave(scene):
    per_cam = [read_mot(g) for g in scene.gt]
    ids = [set(a[:, 1].astype(int)) for a in per_cam]
    assert ids[0] & ids[1]  # someone is seen by both cameras, under the same id
    for a in per_cam:
        for pid in set(a[:, 1].astype(int)):
            rows = a[a[:, 1] == pid]
            # enters at an edge: the first box touches the left or right border
            first = rows[0]
            assert first[2] <= 0.5 or first[2] + first[4] >= 127.5
            # leaves at an edge: unless the video ends first, the last box touches a border too
            last = rows[-1]
            if last[0] < 60:
                assert last[2] <= 0.5 or last[2] + last[4] >= 127.5
    # visits follow each other in time for one identity (travel between cameras)
    for pid in range(1, 4):
        vs = sorted((v.start, v.start + v.frames) for v in scene.visits if v.pid == pid)
        assert all(b[0] > a[1] for a, b in zip(vs, vs[1:]))


def test_deterministic_per_seed(scene, tmp_path):
    again = generate_scene(tmp_path / "a", cams=2, ids=3, frames=60, size=(96, 128), fps=10, seed=5, speed=1.0)
    other = generate_scene(tmp_path / "b", cams=2, ids=3, frames=60, size=(96, 128), fps=10, seed=6, speed=1.0)
    assert again.gt[0].read_text() == scene.gt[0].read_text()
    assert other.gt[0].read_text() != scene.gt[0].read_text()
    np.testing.assert_array_equal(_frames(again.videos[1])[30], _frames(scene.videos[1])[30])


def test_cli_and_errors(tmp_path, capsys):
    assert main(["scene", str(tmp_path / "c"), "--cams", "2", "--ids", "2", "--frames", "12", "--size", "64x80"]) == 0
    assert "ground-truth boxes" in capsys.readouterr().out
    assert (tmp_path / "c" / "cam2" / "cam2.avi").is_file() and (tmp_path / "c" / "scene.json").is_file()
    assert (tmp_path / "c" / "links.yaml").is_file() and (tmp_path / "c" / "GT" / "seqmaps" / "SCENE-all.txt").is_file()
    assert main(["scene", str(tmp_path / "d"), "--cams", "0"]) == 2
    assert "--cams" in capsys.readouterr().err
    bad = tmp_path / "gt.txt"
    bad.write_text("1,1,0,0,10,20,1,-1,-1,-1\n2,1,zero,0,10,20,1,-1,-1,-1\n")
    with pytest.raises(ReIDError, match=r"gt.txt:2"):
        read_mot(bad)


def _spans(gt):
    """(pid, first frame, last frame) of every contiguous run of a person's boxes in one camera."""
    out = []
    for pid in np.unique(gt[:, 1]).astype(int):
        fr = np.sort(gt[gt[:, 1] == pid, 0].astype(int))
        cuts = np.flatnonzero(np.diff(fr) > 1)
        for a, b in zip(np.r_[0, cuts + 1], np.r_[cuts, len(fr) - 1]):
            out.append((pid, fr[a], fr[b]))
    return out


def test_chain_topology_links_and_trackeval_layout(tmp_path):
    """People walk along a corridor of cameras: the ground truth obeys the links.yaml windows, some people
    are seen once, some come back to a camera; the TrackEval copy of the ground truth matches."""
    from reidkit.cluster.identities import impossible_pairs, load_links

    rep = generate_scene(
        tmp_path / "c",
        cams=3,
        ids=12,
        frames=300,
        size=(72, 96),
        fps=10,
        seed=3,
        speed=1.0,
        topology="chain",
        transit=(2, 4),
    )
    links = load_links(rep.links)
    assert set(links.windows) == {("cam1", "cam2"), ("cam1", "cam3"), ("cam2", "cam3")}
    assert links.window("cam1", "cam2")[0] == 2.0 and links.window("cam1", "cam3")[0] > 4.0
    per_pid = {}
    for v in rep.visits:
        per_pid.setdefault(v.pid, []).append(v.cam)
    routes = list(per_pid.values())
    assert any(len(r) == 1 for r in routes)  # seen once, never again
    assert any(len(r) >= 2 and r[-1] == r[-2] for r in routes)  # came back to the same camera
    assert any(len(set(r)) >= 2 for r in routes)
    for r in routes:  # along the corridor: neighbouring cameras only
        assert all(abs(a - b) <= 1 for a, b in zip(r, r[1:]))
    # every pair of one person's appearances (as tracklets of ground truth) fits the windows
    cams, t0, t1, pids = [], [], [], []
    for cam, g in zip(rep.cameras, rep.gt):
        for pid, a, b in _spans(read_mot(g)):
            cams.append(cam), t0.append((a - 1) / 10), t1.append((b - 1) / 10), pids.append(pid)
    bad = impossible_pairs(cams, t0, t1, links)
    pids = np.asarray(pids)
    assert not (bad & (pids[:, None] == pids[None])).any()
    assert bad.any()  # and the windows do rule pairs out
    # TrackEval's layout: GT/SCENE-all/<cam>/gt/gt.txt (class 1), seqinfo.ini, seqmaps
    for cam, g in zip(rep.cameras, rep.gt):
        te = rep.root / "GT" / "SCENE-all" / cam
        np.testing.assert_array_equal(read_mot(te / "gt" / "gt.txt")[:, :6], read_mot(g)[:, :6])
        assert all(line.endswith(",1,1,1") for line in (te / "gt" / "gt.txt").read_text().splitlines())
        assert "seqLength=300" in (te / "seqinfo.ini").read_text()
    assert (rep.root / "GT" / "seqmaps" / "SCENE-all.txt").read_text().split() == ["name", "cam1", "cam2", "cam3"]


def test_scene_cli_never_mixes_an_old_scene_with_a_new_one(tmp_path, capsys):
    from reidkit.cli import main

    out = tmp_path / "sc"
    args = ["scene", str(out), "--ids", "2", "--frames", "4", "--size", "64x96"]
    assert main([*args, "--cams", "3"]) == 0
    capsys.readouterr()
    assert main([*args, "--cams", "2"]) == 2  # a scene is there: refused, untouched
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "--regenerate" in err and (out / "cam3").is_dir()
    assert main([*args, "--cams", "2", "--regenerate"]) == 0  # replaced whole: no cam3 left behind
    assert sorted(p.name for p in out.glob("cam*")) == ["cam1", "cam2"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(["scene", str(tmp_path / "other"), "--regenerate", "--frames", "4"]) == 2  # not a scene: kept
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


def test_scene_info_of_a_json_that_is_not_an_object_is_one_error_naming_the_file(tmp_path) -> None:
    from reidkit.data.scene import scene_info

    (tmp_path / "scene.json").write_text("[1, 2]")
    with pytest.raises(ReIDError, match="scene.json: not a scene description"):
        scene_info(tmp_path)
