"""`reidkit video` on a generated 2-camera scene: ingestion with progress, tracklet contents, cross-camera
search (Python, CLI, HTTP), kill + resume without duplicates or losses, bad inputs, detectors."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import procs
import pytest
from factories import SCENE_H as H, SCENE_W as W, noise_video, tiny_checkpoint

from reidkit.cli import main


def _iou(a, b) -> float:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _gt_ids(rec, gt) -> list[int]:
    """The ground-truth identity of each box of a tracklet (IoU > 0.5 with a ground-truth box of that frame)."""
    out = []
    for b in rec["meta"]["boxes"]:
        rows = gt[gt[:, 0] == b[0]]
        best = max(((_iou(b[1:5], (r[2], r[3], r[2] + r[4], r[3] + r[5])), int(r[1])) for r in rows), default=(0.0, -1))
        out.append(best[1] if best[0] > 0.5 else -1)
    return out


def _majority(rec, gt) -> int:
    ids = _gt_ids(rec, gt)
    return max(set(ids), key=ids.count)


# `run` and `ingested`, the two-camera scene and its gallery, are session fixtures in conftest.py (the
# browser test reads the same gallery).


def test_the_default_engine_is_onnx_runtime_int8_where_it_pays(ingested):
    """`--engine auto`: ONNX Runtime, int8 where it pays (the suite pins that verdict, $REIDKIT_INT8=on in
    conftest: no timing under load decides it); the report names the engine used."""
    import json

    from reidkit.inference import int8_setting, onnx_cache_dir

    line = [ln for ln in ingested["stdout"].splitlines() if ln.startswith("gallery ")][-1]
    pays = int8_setting()
    if pays is None:  # $REIDKIT_INT8=auto: the timing's verdict, cached beside the export
        record = onnx_cache_dir() / "imagenet_efficientnet_lite0-256x128-int8.json"
        pays = json.loads(record.read_text())["int8_pays"]
    assert line.endswith(f"(embedder: {'int8' if pays else 'onnx'})"), line


def _tracklet_set(db) -> dict:
    from reidkit.retrieval.gallery import Gallery

    g = Gallery.open(db)
    return {
        e["tracklet"]: (
            e["camera"],
            e["frame_start"],
            e["frame_end"],
            e["meta"]["boxes"],
            e["meta"]["thumbs"],
            g.features([e["id"]])[0],
        )
        for e in g.entries(kind="tracklet")
    }


def test_ingests_all_cameras_with_progress(run, ingested):
    err = ingested["stderr"]
    assert "[cam1] frame 20/110" in err and "[cam2] frame 100/110" in err and "frames/s" in err
    assert "tracklets" in err
    g = ingested["gallery"]
    entries = g.entries(kind="tracklet")
    cams = {e["camera"] for e in entries}
    assert cams == {"cam1", "cam2"}
    for e in entries:
        gt = run["gt"][e["camera"]]
        ids = _gt_ids(e, gt)
        assert len(set(ids)) == 1 and ids[0] > 0  # ground-truth detections: every tracklet is pure
        frames = [b[0] for b in e["meta"]["boxes"]]
        assert frames == sorted(frames) and e["frame_start"] == frames[0] and e["frame_end"] == frames[-1]
        assert e["t_start"] == pytest.approx((e["frame_start"] - 1) / 10) and e["t_end"] == pytest.approx(
            (e["frame_end"] - 1) / 10
        )
        assert 1 <= len(e["meta"]["thumbs"]) <= 4
        for name in e["meta"]["thumbs"]:
            assert (ingested["db"] / "thumbs" / name).is_file()
        # the feature is the re-normalised mean of unit crop features
        assert np.linalg.norm(g.features([e["id"]])[0]) == pytest.approx(1.0, abs=1e-5)
    # every identity present in a camera's ground truth (long enough to confirm) got a tracklet there
    for cam, gt in run["gt"].items():
        seen = {_majority(e, gt) for e in entries if e["camera"] == cam}
        expected = {int(p) for p in set(gt[:, 1]) if (gt[:, 1] == p).sum() >= 5}
        assert seen == expected


def _query_crop(run, pid: int):
    """(frame RGB, box) of `pid` in cam1, mid-visit, away from the frame edges."""
    from reidkit.video.decode import iter_frames

    gt = run["gt"]["cam1"]
    rows = gt[(gt[:, 1] == pid) & (gt[:, 2] > 2) & (gt[:, 2] + gt[:, 4] < W - 2)]
    r = rows[len(rows) // 2]
    frame = next(f for i, f in iter_frames(run["scene"].videos[0]) if i == int(r[0]) - 1)
    return np.ascontiguousarray(frame[:, :, ::-1]), (float(r[2]), float(r[3]), float(r[2] + r[4]), float(r[3] + r[5]))


def test_query_crop_finds_the_person_in_the_other_camera_cli(run, ingested, tmp_path, capsys):
    from PIL import Image

    g = ingested["gallery"]
    cam2 = {e["tracklet"]: _majority(e, run["gt"]["cam2"]) for e in g.entries(kind="tracklet", camera="cam2")}
    for pid in sorted(set(cam2.values()) & {int(p) for p in set(run["gt"]["cam1"][:, 1])}):
        frame, box = _query_crop(run, pid)
        crop = tmp_path / f"q{pid}.png"
        Image.fromarray(frame[int(box[1]) : int(np.ceil(box[3])), int(box[0]) : int(np.ceil(box[2]))]).save(crop)
        assert (
            main(
                [
                    "tracklets",
                    "search",
                    "--db",
                    str(ingested["db"]),
                    "--image",
                    str(crop),
                    "--exclude-camera",
                    "cam1",
                    "--json",
                ]
            )
            == 0
        )
        res = json.loads(capsys.readouterr().out)["results"]
        assert res and all(h["camera"] == "cam2" for h in res)
        assert cam2[res[0]["tracklet"]] == pid, (pid, res)
        # the whole frame with the box gives the same answer
        full = tmp_path / f"f{pid}.png"
        Image.fromarray(frame).save(full)
        assert (
            main(
                [
                    "tracklets",
                    "search",
                    "--db",
                    str(ingested["db"]),
                    "--image",
                    str(full),
                    "--box",
                    ",".join(f"{v:g}" for v in box),
                    "--exclude-camera",
                    "cam1",
                    "--json",
                ]
            )
            == 0
        )
        assert cam2[json.loads(capsys.readouterr().out)["results"][0]["tracklet"]] == pid


def test_tracklet_query_and_appearances(ingested, capsys, tmp_path, monkeypatch):
    g = ingested["gallery"]
    t = g.entries(kind="tracklet", camera="cam1")[0]
    assert main(["tracklets", "search", "--db", str(ingested["db"]), "--tracklet", t["tracklet"], "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["query"]["excluded_camera"] == "cam1" and all(h["camera"] != "cam1" for h in res["results"])
    scores = [h["score"] for h in res["results"]]
    assert scores == sorted(scores, reverse=True)
    assert main(["tracklets", "show", str(t["id"]), "--db", str(ingested["db"]), "--json"]) == 0
    app = json.loads(capsys.readouterr().out)
    frames = [a["frame"] for a in app["appearances"]]
    assert frames == sorted(frames) and len(frames) == len(t["meta"]["boxes"])
    # the JSON gives openable thumbnail paths too (beside the names the pages use)
    for h in [*res["results"], app["tracklet"]]:
        assert len(h["thumb_paths"]) == len(h["thumbs"]) >= 1
        assert all(Path(q).is_absolute() and Path(q).is_file() for q in h["thumb_paths"])
    assert main(["tracklets", "search", "--db", str(ingested["db"]), "--tracklet", "nope"]) == 2
    assert "no tracklet 'nope'" in capsys.readouterr().err
    assert main(["tracklets", "search", "--db", str(ingested["db"]), "--image", "x.png", "--box", "3,3,1,1"]) == 2
    # issue 21: the printed thumbnails are paths a user can open, from any folder
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["tracklets", "search", "--db", str(ingested["db"]), "--tracklet", t["tracklet"]]) == 0
    assert main(["tracklets", "show", str(t["id"]), "--db", str(ingested["db"])]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "thumbs=" in ln]
    assert len(lines) == len(res["results"]) + 1
    for ln in lines:
        thumbs = ln.split("thumbs=")[1].split(",")
        assert thumbs and all(Path(p).is_absolute() and Path(p).is_file() for p in thumbs), ln


def test_http_search_and_thumbs(run, ingested):
    import io

    from fastapi.testclient import TestClient
    from PIL import Image

    from reidkit.retrieval.service import create_app

    g = ingested["gallery"]
    cam2 = {e["tracklet"]: _majority(e, run["gt"]["cam2"]) for e in g.entries(kind="tracklet", camera="cam2")}
    pid = sorted(set(cam2.values()))[0]
    frame, box = _query_crop(run, pid)
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    from reidkit.video.routes import tracklet_routes

    client = TestClient(create_app(ingested["db"], routers=[tracklet_routes], token="s3cret"))
    auth = {"Authorization": "Bearer s3cret"}
    files = {"file": ("frame.png", buf.getvalue(), "image/png")}
    form = {"box": ",".join(f"{v:g}" for v in box), "exclude_camera": "cam1"}
    assert client.post("/tracklets/search", files=files, data=form).status_code == 401
    r = client.post("/tracklets/search", files=files, data=form, headers=auth)
    assert r.status_code == 200, r.text
    hits = r.json()["results"]
    assert cam2[hits[0]["tracklet"]] == pid and hits[0]["thumbs"]
    r = client.post("/tracklets/search", json={"tracklet": hits[0]["tracklet"]}, headers=auth)
    assert r.status_code == 200 and all(h["camera"] != "cam2" for h in r.json()["results"])
    r = client.get(f"/tracklets/{hits[0]['id']}", headers=auth)
    frames = [a["frame"] for a in r.json()["appearances"]]
    assert r.status_code == 200 and frames == sorted(frames)
    thumb = client.get(f"/thumbs/{hits[0]['thumbs'][0]}", headers=auth)
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert thumb.content == (ingested["db"] / "thumbs" / hits[0]["thumbs"][0]).read_bytes()
    for bad in ("..%2Fmeta.sqlite", "%2E%2E%2Fmeta.sqlite", "meta.sqlite", ".x.jpg"):
        assert client.get(f"/thumbs/{bad}", headers=auth).status_code in (400, 404)
    assert client.get("/tracklets/99999", headers=auth).status_code == 404
    page = client.get("/tracklets")
    assert page.status_code == 200 and "/tracklets/search" in page.text and "appearances" in page.text


def test_killed_and_rerun_gives_the_uninterrupted_result(run, ingested, tmp_path):
    from reidkit.retrieval.gallery import Gallery
    from reidkit.video.decode import video_key

    db = tmp_path / "db"
    argv = ["video", *run["args"], "--db", str(db)]
    code = "import sys; from reidkit.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "REIDKIT_VIDEO_CRASH_AFTER": "4"}
    # one video at a time (--streams 1), so the kill point is known; the re-run takes both at once
    p = procs.run(
        [sys.executable, "-c", code, *argv, "--streams", "1"], env=env, capture_output=True, text=True, timeout=300
    )
    # SIGKILLed right after its fourth commit (cam1, frame 80: the default tracker keeps a lost track 30 frames,
    # so cam1's first tracklet, last seen at frame 41, is committed by then)
    assert p.returncode == -9, p.stderr
    partial = Gallery.open(db)
    keys = [video_key(v, c) for v, c in zip(run["scene"].videos, run["scene"].cameras)]
    states = [partial.get_state(f"video:{k}") for k in keys]
    assert states[0]["next_frame"] == 80 and not states[0]["done"] and states[1] is None
    n_partial = len(partial.entries(kind="tracklet"))
    assert n_partial >= 1  # some tracklets were committed before the kill
    env.pop("REIDKIT_VIDEO_CRASH_AFTER")
    p = procs.run([sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "resuming at frame 81" in p.stderr
    got, want = _tracklet_set(db), _tracklet_set(ingested["db"])
    assert sorted(got) == sorted(want)  # none lost, none extra
    assert len(Gallery.open(db).entries(kind="tracklet")) == len(want)  # none duplicated
    for key, w in want.items():
        assert got[key][:5] == w[:5]
        np.testing.assert_allclose(got[key][5], w[5], atol=1e-5)
    # a third run finds everything done and adds nothing
    p = procs.run([sys.executable, "-c", code, *argv], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "already ingested" in p.stderr
    assert len(Gallery.open(db).entries(kind="tracklet")) == len(want)


def test_bad_inputs_lose_nothing(run, ingested, tmp_path, capsys):
    import cv2

    db = str(ingested["db"])
    before = len(ingested["gallery"].entries(kind="tracklet"))
    bad = tmp_path / "det.txt"
    lines = run["scene"].gt[0].read_text().splitlines()
    lines[4] = "5,1,10,20,abc,40,1,-1,-1,-1"
    bad.write_text("\n".join(lines) + "\n")
    video = str(run["scene"].videos[0])
    assert main(["video", video, "--camera", "camX", "--detections", str(bad), "--db", db]) == 2
    err = capsys.readouterr().err
    assert "line 5" in err and str(bad) in err
    empty = tmp_path / "empty.avi"
    wr = cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (W, H))
    wr.release()
    assert main(["video", str(empty), "--db", db, "--detections", str(run["scene"].gt[0])]) == 2
    err = capsys.readouterr().err
    assert str(empty) in err and ("no frames" in err or "cannot open" in err)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all" * 10)
    assert main(["video", str(junk), "--db", db]) == 2
    assert str(junk) in capsys.readouterr().err
    # one bad input among good ones: nothing is ingested, nothing already there is lost
    assert main(["video", video, str(junk), "--camera", "a", "--camera", "b", "--db", db]) == 2
    from reidkit.retrieval.gallery import Gallery

    assert len(Gallery.open(db).entries(kind="tracklet")) == before
    assert main(["video", video, "--detections", "x.txt", "--detections", "y.txt", "--db", db]) == 2
    assert "one per video" in capsys.readouterr().err


def _export_yolo(path: Path, out: np.ndarray) -> Path:
    """A torch module emitting the fixed YOLO-shaped `out` for a 1x3x64x64 input, exported to ONNX."""
    import torch

    class Fixed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("out", torch.from_numpy(out.astype(np.float32)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out + 0.0 * x.mean()

    torch.onnx.export(
        Fixed(),
        torch.zeros(1, 3, 64, 64),
        str(path),
        input_names=["images"],
        output_names=["out"],
        opset_version=17,
        dynamo=False,
    )
    return path


def test_onnx_detector_both_layouts(tmp_path):
    from reidkit.video.detectors.onnx import OnnxDetector

    # 3 classes, 100 anchors (cx, cy, w, h in the 64x64 input); most anchors score 0
    n, nc = 100, 3
    v8 = np.zeros((4 + nc, n), np.float32)
    v8[:4, :] = 1.0
    v8[:, 0] = [20, 30, 10, 20, 0.9, 0.1, 0.0]  # a person
    v8[:, 1] = [21, 30, 10, 20, 0.6, 0.0, 0.0]  # the same person, lower score: removed by NMS
    v8[:, 2] = [50, 40, 8, 16, 0.1, 0.95, 0.0]  # another class: dropped
    v8[:, 3] = [50, 12, 8, 16, 0.2, 0.0, 0.0]  # a person below the threshold: dropped
    det = OnnxDetector(_export_yolo(tmp_path / "v8.onnx", v8[None]), conf=0.25)
    assert det.input_size == (64, 64)
    frame = np.zeros((128, 256, 3), np.uint8)  # scale 0.25, letterboxed: 64x32 image, 16 px pad top and bottom
    boxes, scores = det(frame)
    # cx 20 -> 80, cy (30 - 16) -> 56, w 10 -> 40, h 20 -> 80
    np.testing.assert_allclose(boxes, [[60, 16, 100, 96]], atol=1e-3)
    np.testing.assert_allclose(scores, [0.9], atol=1e-6)
    v5 = np.zeros((n, 5 + nc), np.float32)
    v5[:, 2:4] = 1.0
    v5[0] = [20, 30, 10, 20, 0.5, 0.8, 0.1, 0.0]  # person score 0.5 * 0.8 = 0.4
    v5[1] = [50, 40, 8, 16, 0.9, 0.1, 0.9, 0.0]  # 0.09 as a person: dropped
    det5 = OnnxDetector(_export_yolo(tmp_path / "v5.onnx", v5[None]), conf=0.25)
    boxes, scores = det5(frame)
    np.testing.assert_allclose(boxes, [[60, 16, 100, 96]], atol=1e-3)
    np.testing.assert_allclose(scores, [0.4], atol=1e-6)
    # through `reidkit video --detector`: the fixed box on every frame is one tracklet
    from reidkit.retrieval.gallery import Gallery

    video = noise_video(tmp_path / "still.avi", 8)
    db = tmp_path / "db"
    assert (
        main(
            [
                "video",
                str(video),
                "--db",
                str(db),
                "--detector",
                str(tmp_path / "v8.onnx"),
                "--weights",
                str(tiny_checkpoint(tmp_path / "tiny.pth")),
                "--detect-every",
                "1",
            ]
        )
        == 0
    )
    (t,) = Gallery.open(db).entries(kind="tracklet")
    assert (t["frame_start"], t["frame_end"], t["camera"]) == (1, 8, "still")
    assert t["t_end"] == pytest.approx(7 / 5.0)
    np.testing.assert_allclose([b[1:5] for b in t["meta"]["boxes"]], [[60, 16, 100, 96]] * 8, atol=0.01)


def test_hog_detector_runs_end_to_end(run, tmp_path, capsys):
    import cv2

    from reidkit.video.decode import iter_frames
    from reidkit.video.detectors.hog import HogDetector

    assert hasattr(cv2, "HOGDescriptor")
    short = tmp_path / "short.avi"
    wr = cv2.VideoWriter(str(short), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (W, H))
    for i, f in iter_frames(run["scene"].videos[0], start=30):
        if i >= 42:
            break
        wr.write(f)
    wr.release()
    boxes, scores = HogDetector(min_height=240)(np.zeros((H, W, 3), np.uint8))
    assert boxes.shape == (0, 4) and scores.shape == (0,)
    db = tmp_path / "hogdb"
    assert (
        main(
            [
                "video",
                str(short),
                "--db",
                str(db),
                "--every",
                "2",
                "--chunk",
                "3",
                "--weights",
                str(tiny_checkpoint(tmp_path / "tiny.pth")),
                "--detect-every",
                "1",
                "--detector",
                "hog",
            ]
        )
        == 0
    )
    assert "short.avi: done, 6 frames" in capsys.readouterr().err


def test_a_second_run_on_a_video_waits_for_the_first_then_skips(run, tmp_path):
    """While another process ingests a video into a gallery (its VideoLock held), `reidkit video` on the same
    video and gallery says it waits, and goes on once the lock is released; a later run skips the video."""
    import os
    import subprocess
    import sys
    import threading
    import time

    from reidkit.video.decode import video_key
    from reidkit.video.pipeline import VideoLock

    video, gt = run["scene"].videos[0], run["scene"].gt[0]
    db = tmp_path / "db"
    cmd = [
        sys.executable,
        "-m",
        "reidkit.cli",
        "video",
        str(video),
        "--detections",
        str(gt),
        "--db",
        str(db),
        "--engine",
        "torch",
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    lines: list[str] = []
    with VideoLock(db, video_key(video, Path(video).stem)) as held:
        assert held.holder() == str(os.getpid())
        p = procs.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        reader = threading.Thread(target=lambda: lines.extend(p.stderr), daemon=True)
        reader.start()
        deadline = time.monotonic() + 120
        while not any("waiting for video" in ln for ln in lines) and time.monotonic() < deadline:
            assert p.poll() is None, "".join(lines)
            time.sleep(0.1)
        assert any(f"being ingested by pid {os.getpid()}" in ln for ln in lines), "".join(lines)
        time.sleep(0.5)
        assert p.poll() is None  # still waiting for us
    out = p.stdout.read()
    assert p.wait(timeout=300) == 0 and "tracklets" in out
    again = procs.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0 and "skipped (already ingested)" in again.stdout
