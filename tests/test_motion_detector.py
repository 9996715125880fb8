"""The motion (background subtraction) detector: it finds the generated scene's people where HOG finds
none, its background depends only on the file (a resumed run detects and tracks exactly as the
uninterrupted one), a moving picture is reported, and `reidkit video --detector motion` runs."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    from reidkit.data.scene import generate_scene, read_mot

    sc = generate_scene(
        tmp_path_factory.mktemp("motion") / "s", cams=1, ids=6, frames=60, size=(288, 384), fps=10, seed=5, speed=1.0
    )
    return sc.videos[0], read_mot(sc.gt[0])


def _recall(detector, video, gt) -> tuple[float, float]:
    """(recall, precision) at IoU 0.5 over the video, one-to-one matches."""
    from reidkit.video.decode import iter_frames
    from reidkit.video.detect import box_iou

    tp = fp = fn = 0
    for i, frame in iter_frames(video):
        boxes, _scores = detector(frame, i)
        g = gt[gt[:, 0] == i + 1][:, 2:6].copy()
        g[:, 2:] += g[:, :2]
        hit = 0
        if len(g) and len(boxes):
            m = box_iou(boxes, g)
            r, c = linear_sum_assignment(-m)
            hit = int((m[r, c] >= 0.5).sum())
        tp, fp, fn = tp + hit, fp + len(boxes) - hit, fn + len(g) - hit
    return tp / max(tp + fn, 1), tp / max(tp + fp, 1)


def test_motion_finds_the_scene_people(scene):
    from reidkit.video.detectors.motion import MotionDetector

    video, gt = scene
    r_motion, p_motion = _recall(MotionDetector(video), video, gt)
    assert r_motion >= 0.5 and p_motion >= 0.5, (r_motion, p_motion)


def _labels(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import cv2

    _n, lab, stats, _c = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return lab, stats


def test_join_pieces_joins_a_person_cut_by_a_pole_not_two_people():
    from reidkit.video.detectors.motion import join_pieces

    mask = np.zeros((60, 80), np.uint8)
    mask[10:50, 10:15] = mask[10:50, 18:23] = 1  # one person (13 x 40) cut by a 3-pixel pole
    mask[10:50, 40:52] = mask[10:50, 55:67] = 1  # two people side by side
    mask[5:20, 72:78] = mask[23:45, 72:78] = 1  # a head and legs, the torso lost in the background
    lab, stats = join_pieces(*_labels(mask), max_aspect=0.33 * 1.25)
    boxes = sorted((int(x), int(y), int(w), int(h)) for x, y, w, h, _a in stats[1:])
    assert boxes == [(10, 10, 13, 40), (40, 10, 12, 40), (55, 10, 12, 40), (72, 5, 6, 40)]
    assert len(np.unique(lab[10:50, 10:23])) == 2  # background and one joined label
    assert lab[12, 12] == lab[12, 20] != lab[12, 45]


def test_valley_cuts_split_where_two_people_meet():
    from reidkit.video.detectors.motion import valley_cuts

    profile = np.array([9, 9, 9, 9, 9, 9, 9, 1, 9, 9, 9, 9, 9, 9])  # equal halves would cut at 7 anyway
    assert valley_cuts(profile, 2).tolist() == [0, 7, 14]
    profile = np.array([9, 9, 9, 9, 9, 0, 9, 9, 9, 9, 9, 9, 9, 9])  # the gap is left of the middle
    assert valley_cuts(profile, 2).tolist() == [0, 5, 14]
    assert valley_cuts(np.ones(9), 1).tolist() == [0, 9]


def test_boxes_are_the_moving_pixels_extent(tmp_path):
    """A still rectangle on a plain background: the box is the rectangle, not grown by the dilation."""
    import cv2

    from reidkit.video.decode import iter_frames
    from reidkit.video.detectors.motion import MotionDetector

    path = tmp_path / "r.avi"
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    rng = np.random.default_rng(0)
    bg = (rng.integers(90, 110, (120, 160, 3))).astype(np.uint8)
    for i in range(30):
        f = bg.copy()
        x = 10 + 4 * i
        f[20:100, x : x + 24] = (20, 40, 200) if i % 2 else (200, 40, 20)
        out.write(f)
    out.release()
    det = MotionDetector(path, work_height=120)
    frames = [f for _i, f in iter_frames(path)]
    boxes, scores = det(frames[15], 15)
    assert len(boxes) == 1 and 0.5 <= scores[0] <= 1.0
    np.testing.assert_allclose(boxes[0], [70, 20, 94, 100], atol=1.5)


def test_background_depends_only_on_the_file(scene):
    """Frame i alone (a fresh detector, as after a resume) gives the boxes of a detector that saw 0..i-1."""
    from reidkit.video.decode import iter_frames
    from reidkit.video.detectors.motion import MotionDetector

    video, _gt = scene
    seq = MotionDetector(video, block=25)  # several blocks in 60 frames
    frames = dict(iter_frames(video))
    out = {i: seq(f, i) for i, f in frames.items()}
    for i in (0, 24, 25, 40, 59):
        b, s = MotionDetector(video, block=25)(frames[i], i)
        np.testing.assert_array_equal(b, out[i][0])
        np.testing.assert_array_equal(s, out[i][1])
    assert sum(len(b) for b, _s in out.values()) > 60


def test_resumed_motion_run_gives_the_same_chunks(scene):
    from reidkit.video.decode import probe, video_key
    from reidkit.video.pipeline import Settings, VideoJob, process_video

    class Emb:
        dim = 6

        def embed_crops(self, crops):
            f = np.asarray([np.r_[c.mean(axis=(0, 1)), c.std(axis=(0, 1))] for c in crops], np.float32)
            return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)

    video, _gt = scene
    info = probe(video)
    job = VideoJob(info, "cam1", video_key(info.path, "cam1"), {"kind": "motion", "options": {"block": 25}}, "motion")
    s = Settings(chunk=9, appearance="needed")
    full = list(process_video(job, s, Emb()))
    assert sum(len(c.entries) for c in full) >= 2

    def flat(cs):
        return [
            (c.state["next_frame"], [e["meta"]["boxes"] for e in c.entries], c.features.tolist())  # noqa: E731
            for c in cs
        ]

    for cut in (2, 4):
        job2 = VideoJob(info, "cam1", job.key, job.detector_spec, "motion")  # a new process: a new detector
        rest = list(process_video(job2, s, Emb(), json.loads(json.dumps(full[cut - 1].state))))
        assert flat(rest) == flat(full[cut:])


def test_a_moving_picture_is_reported_once(tmp_path, caplog):
    import cv2

    from reidkit.video.detectors.motion import BUSY_WARN, MotionDetector

    path = tmp_path / "pan.avi"
    rng = np.random.default_rng(0)
    wr = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (160, 120))
    for _ in range(30):
        wr.write(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))  # every pixel changes every frame
    wr.release()
    det = MotionDetector(path)
    with caplog.at_level(logging.WARNING, logger="reidkit.video.detectors.motion"):
        for i in range(30):
            det(rng.integers(0, 255, (120, 160, 3), dtype=np.uint8), i)
    warned = [r for r in caplog.records if "needs a fixed camera" in r.getMessage()]
    assert len(warned) == 1 and det.busy_frames >= BUSY_WARN


def test_bad_options_are_refused():
    from reidkit.errors import ReIDError
    from reidkit.video.detectors.motion import MotionDetector

    for kw in ({"threshold": 0.0}, {"samples": 1}, {"aspect": float("nan")}, {"work_height": 8}):
        with pytest.raises(ReIDError, match="motion detector"):
            MotionDetector("x.avi", **kw)


def test_cli_detector_motion(scene, tmp_path, capsys):
    from reidkit.cli import main

    video, _gt = scene
    db = tmp_path / "db"
    assert main(["video", str(video), "--db", str(db), "--detector", "motion", "--engine", "torch", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["tracklets"] >= 2 and rep["stages"]["counts"]["detect"] == 60
    from reidkit.retrieval.gallery import Gallery

    entries = Gallery.open(db).entries(kind="tracklet")
    assert {e["meta"]["detector"] for e in entries} == {"motion"}
