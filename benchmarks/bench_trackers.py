"""Within-video trackers side by side: reidkit's (reidkit.video.trackers) and BoxMOT's, on identical inputs.

Scenes (reidkit.data.scene, generated once under --work): A = 3 cameras, 8 people, 160 frames at
speed 1.0; B (a crowd) = 1 camera, 60 people, 300 frames of 576x768 at 10 fps, speed 0.3; C = 1
camera, 20 people, 300 frames of 576x768 at 10 fps. Detections per camera: ``gt`` (the scene's boxes,
score 1), ``gtn`` (gt with 10 % of the boxes dropped and 5 % jitter: centre + N(0, 0.05) w|h, size x
exp(N(0, 0.05)); seeded per camera) and ``motion`` (reidkit's motion detector; scores: the share of
the box that moved). Boxes are clipped to the frame as ``reidkit video`` clips them. Features: one
per box, ``reidkit.Embedder(None, engine="auto-int8")``, computed once and cached in a .npz beside
the detections; both sides read the same file (boxes, scores, features).

Each tracker runs over every frame of every camera, one BLAS thread; its time is the time of its
update calls only (ms per frame). reidkit's trackers run as ``reidkit video`` runs them by default
(read from its parser: ``--appearance needed --embed-budget 8``, so features only where the
tracker's ``needs_features`` asks; ``--appearance all`` gives them every box's, as BoxMOT gets)
and report what it stores: each match's reported box (``Match.box``, clipped to the frame) of the
tracks that were confirmed and have at least 3 boxes (a tracklet keeps its
tentative frames). BoxMOT's trackers (BoxMOT, AGPL-3.0, is never a dependency of reidkit: it runs
in a virtual environment of its own, --boxmot-python, in a child process of this script) report
their own output rows, with the features given through ``Detections(embeddings=...)`` and the frame
passed to ``update``. Scored with TrackEval through reidkit.evaluation.tracks: HOTA, IDF1, MOTA, ID
switches over the scene's cameras combined. ``--timing``: the tracker time per frame of reidkit's trackers
and of BoxMOT's ByteTrack measured again in one process (the BoxMOT venv's python, one BLAS thread:
threadpoolctl and the OMP/OpenBLAS/MKL variables), alternating, best of 3, as ratios to ByteTrack.

On scenes with several cameras (A) each tracker's tracklets also go through reidkit's identities step
(``identities``: a tracklet's feature is the mean of its boxes' features, then
reidkit.video.identities.assign_identities with its defaults) and the global ids are scored over all
cameras as one sequence: the multi-camera IDF1 / HOTA and the number of identities (8 in scene A).

    python -m venv --system-site-packages /tmp/boxmot-venv
    /tmp/boxmot-venv/bin/pip install --no-deps boxmot==25.0.0 lapx filterpy rich
    python -m benchmarks.bench_trackers --timing              # every scene, detection kind, tracker
    python -m benchmarks.bench_trackers --scenes C --dets gtn --boxmot none   # one cell, reidkit only
    python -m benchmarks.bench_trackers --seed 1 --work /tmp/bench-trackers-s1 --tag bench_trackers_seed1  # held out

Writes benchmarks/results/bench_trackers.json and .md (``--tag`` names another pair).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
SCENES = {
    "A": dict(cams=3, ids=8, frames=160, size=(240, 320), fps=10.0, speed=1.0),
    "B": dict(cams=1, ids=60, frames=300, size=(576, 768), fps=10.0, speed=0.3),
    "C": dict(cams=1, ids=20, frames=300, size=(576, 768), fps=10.0, speed=0.5),
}
DETS = ("gt", "gtn", "motion")
REIDKIT = ("bytesort", "deep_sort")
BOXMOT = (
    "bytetrack",
    "botsort",
    "ocsort",
    "occluboost",
    "boosttrack",
    "sfsort",
    "deepocsort",
    "strongsort",
    "hybridsort",
)
MIN_LEN = 3  # reidkit video's --min-len default


# ----------------------------------------------------------------------------- inputs


def scene(work: Path, name: str, seed: int = 0) -> Path:
    """The scene folder (generated when missing, as `reidkit scene` does)."""
    root = work / name
    if not (root / "scene.json").is_file():
        from reidkit.data.scene import generate_scene

        p = SCENES[name]
        generate_scene(
            root,
            cams=p["cams"],
            ids=p["ids"],
            frames=p["frames"],
            size=p["size"],
            fps=p["fps"],
            speed=p["speed"],
            seed=seed,
        )
    return root


def cameras(root: Path) -> list[str]:
    """Camera names of a scene (cam1, cam2, ...)."""
    return sorted(
        (p.name for p in root.iterdir() if p.is_dir() and (p / "gt" / "gt.txt").is_file()), key=lambda c: int(c[3:])
    )


def _video(root: Path, cam: str) -> Path:
    return next((root / cam).glob(f"{cam}.*"))


def detections(root: Path, cam: str, kind: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{0-based frame: (N x 4 x1 y1 x2 y2 boxes, N scores)} before clipping."""
    from reidkit.data.scene import read_mot

    out: dict[int, list] = {}
    if kind in ("gt", "gtn"):
        gt = read_mot(root / cam / "gt" / "gt.txt")
        rng = np.random.default_rng(1000 + int(cam[3:]))
        for f, _pid, x, y, w, h, _c in gt:
            if kind == "gtn":
                drop, n = rng.random(), rng.normal(0, 0.05, 4)
                if drop < 0.10:
                    continue
                cx, cy = x + w / 2 + n[0] * w, y + h / 2 + n[1] * h
                w, h = w * np.exp(n[2]), h * np.exp(n[3])
                x, y = cx - w / 2, cy - h / 2
            out.setdefault(int(f) - 1, []).append((x, y, x + w, y + h, 1.0))
    else:
        from reidkit.video.decode import iter_frames
        from reidkit.video.detectors.motion import MotionDetector

        det = MotionDetector(_video(root, cam))
        for idx, frame in iter_frames(_video(root, cam)):
            b, s = det(frame, idx)
            out[idx] = [(*bb, float(ss)) for bb, ss in zip(b.tolist(), s.tolist())]
    return {
        f: (np.asarray([r[:4] for r in rows], np.float64).reshape(-1, 4), np.asarray([r[4] for r in rows]))
        for f, rows in out.items()
    }


def prepare(work: Path, name: str, kind: str, embedder: Any, seed: int = 0) -> list[Path]:
    """One .npz per camera: frame, clipped boxes, scores, features (cached)."""
    from reidkit.video.decode import iter_frames
    from reidkit.video.embedder import clip_boxes, crop_boxes

    root = scene(work, name, seed)
    paths = []
    for cam in cameras(root):
        path = work / "inputs" / f"{name}-{kind}-{cam}.npz"
        paths.append(path)
        if path.is_file():
            continue
        dets = detections(root, cam, kind)
        frames, boxes, scores, feats = [], [], [], []
        n_frames = 0
        for idx, frame in iter_frames(_video(root, cam)):
            n_frames = idx + 1
            b, s = dets.get(idx, (np.zeros((0, 4)), np.zeros(0)))
            if not len(b):
                continue
            b = clip_boxes(b, frame.shape[1], frame.shape[0]).astype(np.float32)
            f = embedder.embed_crops(crop_boxes(frame, b))
            frames += [idx] * len(b)
            boxes.append(b)
            scores.append(s.astype(np.float32))
            feats.append(np.asarray(f, np.float32))
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(
            path,
            frame=np.asarray(frames, np.int64),
            boxes=np.concatenate(boxes),
            scores=np.concatenate(scores),
            feats=np.concatenate(feats),
            n_frames=np.int64(n_frames),
            size=np.asarray(frame.shape[:2]),
        )
    return paths


def by_frame(npz: Any) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per frame 0..n-1: (boxes, scores, features)."""
    n = int(npz["n_frames"])
    fr, boxes, scores, feats = npz["frame"], npz["boxes"], npz["scores"], npz["feats"]  # each read once
    out = []
    starts = np.searchsorted(fr, np.arange(n + 1))
    for f in range(n):
        a, b = starts[f], starts[f + 1]
        out.append((boxes[a:b], scores[a:b], feats[a:b]))
    return out


# ----------------------------------------------------------------------------- runs


def cli_defaults() -> dict[str, Any]:
    """What ``reidkit video VIDEO --db DB`` does by default: its tracker, appearance, embedding budget, min length."""
    from reidkit.cli import build_parser
    from reidkit.video.trackers import DEFAULT_TRACKER

    a = build_parser().parse_args(["video", "VIDEO", "--db", "DB"])
    return {
        "tracker": a.tracker or DEFAULT_TRACKER,
        "appearance": a.appearance,
        "embed_budget": int(a.embed_budget) if a.appearance == "needed" else None,
        "min_len": int(a.min_len),
    }


def track(tracker: Any, data: list, budget: int | None) -> tuple[list[tuple[int, Any]], float]:
    """Feed one camera's frames to a reidkit tracker as ``reidkit video`` does: with a `budget` (``--appearance
    needed --embed-budget B``; 0: no limit) features only where ``needs_features`` asks, else every box's.
    Returns ([(frame, FrameTracks)], tracker seconds)."""
    out, spent = [], 0.0
    for f, (b, s, e) in enumerate(data):
        t0 = time.perf_counter()
        if budget is not None:
            need = tracker.needs_features(b, s, budget)
            e = [row if n else None for row, n in zip(e, need)]
        res = tracker.update(b, s, e)
        spent += time.perf_counter() - t0
        out.append((f, res))
    return out, spent


def run_reidkit(
    name: str, npz_path: Path, options: dict | None = None, budget: int | None = None, min_len: int = MIN_LEN
) -> tuple[list[str], float, int]:
    """(MOT rows, tracker seconds, frames) of reidkit tracker `name`: the rows ``reidkit video`` stores, each match's
    reported box (``Match.box``, clipped to the frame: reidkit.video.trackers.base.frame_box) of the tracks that were
    confirmed and have at least `min_len` boxes (a tracklet keeps its tentative frames)."""
    from reidkit.video.track import single_thread_blas
    from reidkit.video.trackers import build_tracker
    from reidkit.video.trackers.base import frame_box

    single_thread_blas()
    npz = np.load(npz_path)
    height, width = (int(v) for v in npz["size"])
    data = by_frame(npz)
    frames, spent = track(build_tracker(name, options or {}), data, budget)
    boxes: dict[str, list] = {}
    confirmed: set[str] = set()
    for f, res in frames:
        for m in res.matched:
            boxes.setdefault(m.track_id, []).append((f, frame_box(m.box, width, height, data[f][0][m.det])))
            if m.confirmed:
                confirmed.add(m.track_id)
    rows = []
    for n, tid in enumerate(sorted(boxes, key=lambda t: boxes[t][0][0]), 1):
        if tid not in confirmed or len(boxes[tid]) < min_len:
            continue
        for f, (x0, y0, x1, y1) in boxes[tid]:
            rows.append(f"{f + 1},{n},{x0:.2f},{y0:.2f},{x1 - x0:.2f},{y1 - y0:.2f},1,-1,-1,-1\n")
    return rows, spent, len(data)


def boxmot_worker(job: dict, result: Path) -> dict:
    """Run in the BoxMOT venv: every tracker of the job over every camera; rows and seconds per tracker
    (`result` rewritten after each tracker, so a killed run keeps what it finished)."""
    import cv2
    import torch
    from threadpoolctl import threadpool_limits

    from boxmot.structures import Boxes, Detections
    from boxmot.trackers.factory import create_tracker
    from boxmot.trackers.specs import TrackerSpec

    torch.set_num_threads(1)
    threadpool_limits(limits=1)
    out = {}
    for name in job["trackers"]:
        rows_all: dict[str, list[str]] = {}
        spent, frames = 0.0, 0
        try:
            for cam, (npz_path, video) in job["cameras"].items():
                data = by_frame(np.load(npz_path))
                tracker = create_tracker(TrackerSpec(name=name))
                cap = cv2.VideoCapture(video)
                rows = []
                for f, (b, s, e) in enumerate(data):
                    ok, img = cap.read()
                    if not ok:
                        raise RuntimeError(f"{video}: frame {f + 1} unreadable")
                    dets = Detections(
                        geometry=Boxes(torch.from_numpy(np.ascontiguousarray(b, np.float32))),
                        scores=torch.from_numpy(np.ascontiguousarray(s, np.float32)),
                        class_ids=torch.zeros(len(b), dtype=torch.int64),
                        sample_id=f"{cam}-{f}",
                        embeddings=torch.from_numpy(np.ascontiguousarray(e, np.float32)),
                    )
                    t0 = time.perf_counter()
                    tracks = tracker.update(dets, img)
                    spent += time.perf_counter() - t0
                    frames += 1
                    g = tracks.geometry.values.numpy()
                    for (x0, y0, x1, y1), tid in zip(g.tolist(), tracks.track_ids.numpy().tolist()):
                        rows.append(f"{f + 1},{int(tid)},{x0:.2f},{y0:.2f},{x1 - x0:.2f},{y1 - y0:.2f},1,-1,-1,-1\n")
                cap.release()
                rows_all[cam] = rows
            out[name] = {"rows": rows_all, "seconds": spent, "frames": frames}
        except Exception as exc:  # noqa: BLE001 - recorded, the others go on
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
        result.write_text(json.dumps(out))
    return out


def timing_worker(job: dict, result: Path) -> None:
    """Run in the BoxMOT venv (reidkit imports there too): tracker time per frame of BoxMOT's ByteTrack and of
    reidkit's trackers on the same inputs in the same process, alternating, best of `repeats` passes."""
    import cv2
    import torch
    from threadpoolctl import threadpool_limits

    from boxmot.structures import Boxes, Detections
    from boxmot.trackers.factory import create_tracker
    from boxmot.trackers.specs import TrackerSpec
    from reidkit.video.trackers import build_tracker

    torch.set_num_threads(1)
    threadpool_limits(limits=1)
    cams = job["cameras"]
    data = {c: by_frame(np.load(p)) for c, (p, _v) in cams.items()}
    frames = {}
    for c, (_p, video) in cams.items():
        cap = cv2.VideoCapture(video)
        frames[c] = [cap.read()[1] for _ in data[c]]
        cap.release()
    dets = {
        c: [
            Detections(
                geometry=Boxes(torch.from_numpy(np.ascontiguousarray(b, np.float32))),
                scores=torch.from_numpy(np.ascontiguousarray(s, np.float32)),
                class_ids=torch.zeros(len(b), dtype=torch.int64),
                sample_id=f"{c}-{f}",
                embeddings=torch.from_numpy(np.ascontiguousarray(e, np.float32)),
            )
            for f, (b, s, e) in enumerate(data[c])
        ]
        for c in cams
    }
    n = sum(len(d) for d in data.values())
    best: dict[str, float] = {}
    for _ in range(int(job.get("repeats", 3))):
        for name in ["boxmot:bytetrack", *[f"reidkit:{t}" for t in job["reidkit"]]]:
            spent = 0.0
            for c in cams:
                if name.startswith("boxmot:"):
                    tr = create_tracker(TrackerSpec(name=name[7:]))
                    for det, img in zip(dets[c], frames[c]):
                        t0 = time.perf_counter()
                        tr.update(det, img)
                        spent += time.perf_counter() - t0
                else:
                    tr = build_tracker(name[8:], job.get("options", {}).get(name[8:]))
                    spent += track(tr, data[c], job.get("budget"))[1]
            best[name] = min(best.get(name, np.inf), 1000 * spent / n)
    result.write_text(json.dumps(best))


def run_timing(
    python: str,
    reidkit_trackers: list[str],
    cams: dict[str, tuple[str, str]],
    work: Path,
    options: dict | None = None,
    budget: int | None = None,
) -> dict:
    """timing_worker in a child process of the BoxMOT venv's python (reidkit's trackers fed as in the run)."""
    job, res = work / "timing-job.json", work / "timing-result.json"
    job.write_text(
        json.dumps(
            {"cameras": cams, "reidkit": reidkit_trackers, "repeats": 3, "options": options or {}, "budget": budget}
        )
    )
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
    }
    subprocess.run(
        [python, "-m", "benchmarks.bench_trackers", "--timing-worker", str(job), str(res)],
        check=True,
        env=env,
        cwd=str(Path(__file__).resolve().parent.parent),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return json.loads(res.read_text())


def run_boxmot(python: str, trackers: list[str], cams: dict[str, tuple[str, str]], work: Path, cell: str) -> dict:
    """BoxMOT's trackers in a child process of the BoxMOT venv's python; results cached per cell (--rerun-boxmot
    runs them again) and per tracker."""
    res = work / f"boxmot-{cell}.json"
    done = json.loads(res.read_text()) if res.is_file() else {}
    todo = [t for t in trackers if t not in done]
    if not todo:
        return done
    job = work / f"boxmot-job-{cell}.json"
    part = work / f"boxmot-{cell}.part.json"
    job.write_text(json.dumps({"trackers": todo, "cameras": cams}))
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
    }
    proc = subprocess.run(
        [python, "-m", "benchmarks.bench_trackers", "--boxmot-worker", str(job), str(part)],
        env=env,
        cwd=str(Path(__file__).resolve().parent.parent),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    if part.is_file():
        done.update(json.loads(part.read_text()))
        part.unlink()
        res.write_text(json.dumps(done))
    for t in trackers:
        done.setdefault(t, {"error": f"the BoxMOT worker exited with {proc.returncode} before {t} finished"})
    return done


def score(root: Path, rows: dict[str, list[str]], out: Path) -> dict[str, float]:
    """TrackEval's figures over the scene's cameras combined."""
    from reidkit.evaluation.tracks import evaluate_tracks

    out.mkdir(parents=True, exist_ok=True)
    for cam, r in rows.items():
        (out / f"{cam}.txt").write_text("".join(r))
    m = evaluate_tracks(root / "GT", out, multi_camera=False)["combined"]
    return {k: round(float(m[k]), 2) if k != "IDsw" else int(m[k]) for k in ("HOTA", "IDF1", "MOTA", "IDsw")}


def identities(root: Path, rows: dict[str, list[str]], npz: dict[str, Path], extractor: Any, out: Path) -> dict:
    """The multi-camera IDF1 of one tracker's tracklets: each tracklet (its rows of one camera) gets the mean of its
    boxes' features (of the detection each box overlaps most, IoU >= 0.5), the tracklets go into a fresh gallery and
    through reidkit's identities step (reidkit.video.identities.assign_identities, its defaults; the scene's
    links.yaml when it has one), and the rows relabelled with the global ids are scored over all cameras as one
    sequence (TrackEval, reidkit.evaluation.tracks). Returns {"mc_IDF1", "mc_HOTA", "identities"}."""
    import shutil

    from reidkit.evaluation.tracks import evaluate_tracks
    from reidkit.retrieval.gallery import Gallery
    from reidkit.video.detect import box_iou
    from reidkit.video.identities import assign_identities, stored_identities

    fps = float(json.loads((root / "scene.json").read_text()).get("fps", 10.0))
    feats, entries = [], []
    parsed: dict[str, list[tuple[int, str, str]]] = {}
    for cam, cam_rows in rows.items():
        data = by_frame(np.load(npz[cam]))
        tracks: dict[str, list[tuple[int, np.ndarray]]] = {}
        parsed[cam] = []
        for line in cam_rows:
            f, tid, x, y, w, h = line.split(",")[:6]
            f = int(f)
            tracks.setdefault(tid, []).append(
                (f, np.array([float(x), float(y), float(x) + float(w), float(y) + float(h)]))
            )
            parsed[cam].append((f, tid, line))
        for tid, obs in tracks.items():
            rows_f = []
            for f, box in obs:
                b, _s, e = data[f - 1]
                if len(b):
                    iou = box_iou(box[None], b)[0]
                    if iou.max() >= 0.5:
                        rows_f.append(e[int(np.argmax(iou))])
            if not rows_f:
                continue
            m = np.mean(rows_f, axis=0)
            feats.append(m / max(float(np.linalg.norm(m)), 1e-12))
            f0, f1 = min(f for f, _ in obs), max(f for f, _ in obs)
            entries.append(
                {
                    "path": f"{cam}/{tid}",
                    "kind": "tracklet",
                    "tracklet": f"{cam}:{tid}",
                    "camera": cam,
                    "frame_start": f0,
                    "frame_end": f1,
                    "t_start": (f0 - 1) / fps,
                    "t_end": (f1 - 1) / fps,
                }
            )
    db = out / "gallery"
    shutil.rmtree(db, ignore_errors=True)
    gallery = Gallery.create(db, extractor)
    gallery.add_entries(np.asarray(feats, np.float32), entries)
    links = root / "links.yaml"
    rep = assign_identities(gallery, links=str(links) if links.is_file() else None)
    ids = stored_identities(gallery)["tracklets"]
    pred = out / "global"
    pred.mkdir(parents=True, exist_ok=True)
    for cam, lines in parsed.items():
        txt = []
        for f, tid, line in lines:
            gid = ids.get(f"{cam}:{tid}")
            if gid is not None:
                rest = line.split(",", 2)[2]
                txt.append(f"{f},{gid},{rest}")
        (pred / f"{cam}.txt").write_text("".join(txt))
    m = evaluate_tracks(root / "GT", pred, multi_camera=True)["multi_camera"]
    return {
        "mc_IDF1": round(float(m["IDF1"]), 2),
        "mc_HOTA": round(float(m["HOTA"]), 2),
        "identities": int(rep["identities"]),
    }


# ----------------------------------------------------------------------------- the table


def table(results: list[dict]) -> str:
    """Markdown: one row per (scene, detections), one column per tracker: HOTA / IDF1 / MOTA / IDsw, ms per frame."""
    names = list(dict.fromkeys(r["tracker"] for r in results))
    cells = list(dict.fromkeys((r["scene"], r["dets"]) for r in results))
    head = "| scene, dets | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n"
    lines = []
    for sc, dk in cells:
        row = []
        best = max((r["HOTA"] for r in results if (r["scene"], r["dets"]) == (sc, dk) and "HOTA" in r), default=None)
        for n in names:
            r = next((r for r in results if (r["scene"], r["dets"], r["tracker"]) == (sc, dk, n)), None)
            if r is None or "HOTA" not in r:
                row.append("-" if r is None else "error")
                continue
            txt = f"{r['HOTA']:.1f} / {r['IDF1']:.1f} / {r['MOTA']:.1f} / {r['IDsw']}, {r['ms_per_frame']:.2f} ms"
            row.append(f"**{txt}**" if r["HOTA"] == best else txt)
        lines.append(f"| {sc} {dk} | " + " | ".join(row) + " |")
    return head + "\n".join(lines) + "\n"


def summary(results: list[dict], timings: list[dict], default: str = "bytesort") -> str:
    """Markdown: per cell, the default tracker, deep_sort and the best BoxMOT tracker (HOTA / IDF1 / MOTA / IDsw),
    the default's HOTA margin over the best BoxMOT tracker and its time per frame as x BoxMOT's ByteTrack (from the
    timing run in one process, when there is one)."""
    out = (
        "| scene, dets | "
        + default
        + " | deep_sort | best BoxMOT tracker | HOTA margin | "
        + default
        + " time, x ByteTrack |\n|---|---|---|---|---|---|\n"
    )
    fig = lambda r: f"{r['HOTA']:.1f} / {r['IDF1']:.1f} / {r['MOTA']:.1f} / {r['IDsw']}"  # noqa: E731
    for sc, dk in dict.fromkeys((r["scene"], r["dets"]) for r in results):
        cell = [r for r in results if (r["scene"], r["dets"]) == (sc, dk) and "HOTA" in r]
        mine = next((r for r in cell if r["tracker"] == default), None)
        ds = next((r for r in cell if r["tracker"] == "deep_sort"), None)
        box = max((r for r in cell if r["side"] == "boxmot"), key=lambda r: r["HOTA"], default=None)
        t = next((t for t in timings if (t["scene"], t["dets"]) == (sc, dk)), None)
        ratio = (
            "-"
            if t is None or f"reidkit:{default}" not in t
            else f"{t[f'reidkit:{default}'] / t['boxmot:bytetrack']:.2f}x"
        )
        margin = f"{mine['HOTA'] - box['HOTA']:+.1f}" if mine and box else "-"
        out += (
            f"| {sc} {dk} | {fig(mine) if mine else '-'} | {fig(ds) if ds else '-'} | "
            f"{(box['tracker'][7:] + ' ' + fig(box)) if box else '-'} | {margin} | {ratio} |\n"
        )
    return out


def identity_table(results: list[dict]) -> str:
    """Markdown: the multi-camera IDF1 / HOTA (global ids) and the number of identities of each tracker's tracklets
    through reidkit's identities step, per (scene, detections) that has them."""
    rows = [r for r in results if "mc_IDF1" in r]
    if not rows:
        return ""
    names = list(dict.fromkeys(r["tracker"] for r in rows))
    out = "| scene, dets | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n"
    for sc, dk in dict.fromkeys((r["scene"], r["dets"]) for r in rows):
        cell = {r["tracker"]: r for r in rows if (r["scene"], r["dets"]) == (sc, dk)}
        out += (
            f"| {sc} {dk} | "
            + " | ".join(
                f"{cell[n]['mc_IDF1']:.1f} / {cell[n]['mc_HOTA']:.1f} ({cell[n]['identities']})" if n in cell else "-"
                for n in names
            )
            + " |\n"
        )
    return out


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--boxmot-worker"]:
        boxmot_worker(json.loads(Path(argv[1]).read_text()), Path(argv[2]))
        return
    if argv[:1] == ["--timing-worker"]:
        timing_worker(json.loads(Path(argv[1]).read_text()), Path(argv[2]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", default="/tmp/bench-trackers", help="scenes, detections, features (cached)")
    ap.add_argument("--scenes", default="A,B,C")
    ap.add_argument(
        "--seed",
        type=int,
        default=0,
        help="the scenes' seed (another seed: a held-out check of the defaults; use another --work)",
    )
    ap.add_argument("--dets", default=",".join(DETS))
    ap.add_argument("--trackers", default=",".join(REIDKIT), help="reidkit trackers")
    ap.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="TRACKER.KEY=VALUE",
        help="an option of a reidkit tracker, e.g. bytesort.max_age=40 (repeatable)",
    )
    ap.add_argument("--boxmot", default=",".join(BOXMOT), help="BoxMOT trackers, or none")
    ap.add_argument(
        "--appearance",
        choices=["needed", "all"],
        default=None,
        help="reidkit trackers get features only where needs_features asks (needed, with --embed-budget) or for "
        "every box, as BoxMOT's (all); default: reidkit video's default",
    )
    ap.add_argument(
        "--embed-budget",
        type=int,
        default=None,
        metavar="B",
        help="--appearance needed: at most B ambiguous detections embedded per frame (0: no limit); default: "
        "reidkit video's",
    )
    ap.add_argument("--boxmot-python", default="/tmp/boxmot-venv/bin/python")
    ap.add_argument(
        "--rerun-boxmot", action="store_true", help="run BoxMOT's trackers again (default: cached per cell)"
    )
    ap.add_argument("--tag", default="bench_trackers", help="result file names (RESULTS/TAG.json, .md)")
    ap.add_argument("--no-write", action="store_true", help="print the table only")
    ap.add_argument(
        "--no-identities",
        action="store_true",
        help="skip the multi-camera IDF1 of each tracker's tracklets through reidkit's identities step "
        "(scenes with more than one camera)",
    )
    ap.add_argument(
        "--timing",
        action="store_true",
        help="also time reidkit's trackers beside BoxMOT's ByteTrack in one process (the BoxMOT venv), "
        "alternating, best of 3: the 'x ByteTrack' column",
    )
    args = ap.parse_args(argv)
    import yaml

    from reidkit.video.track import single_thread_blas

    single_thread_blas()
    options: dict[str, dict] = {}
    for item in args.option:
        key, _, raw = item.partition("=")
        tr, _, k = key.partition(".")
        options.setdefault(tr, {})[k] = yaml.safe_load(raw)
    cli = cli_defaults()
    appearance = args.appearance or cli["appearance"]
    budget = None if appearance == "all" else (cli["embed_budget"] if args.embed_budget is None else args.embed_budget)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    embedder = None
    results: list[dict] = []
    timings: list[dict] = []
    boxmot = [] if args.boxmot in ("", "none") else args.boxmot.split(",")

    def get_embedder() -> Any:
        nonlocal embedder
        if embedder is None:
            import reidkit

            embedder = reidkit.Embedder(None, engine="auto-int8")
        return embedder

    def with_identities(m: dict, root: Path, rows: dict, cams: dict, out: Path) -> dict:
        if args.no_identities or len(cams) < 2:
            return m
        return {**m, **identities(root, rows, cams, get_embedder().extractor, out)}

    for name in args.scenes.split(","):
        root = scene(work, name, args.seed)
        for kind in args.dets.split(","):
            if any(not (work / "inputs" / f"{name}-{kind}-{c}.npz").is_file() for c in cameras(root)):
                get_embedder()
                print(f"features: scene {name}, {kind}", file=sys.stderr, flush=True)
            paths = prepare(work, name, kind, embedder, args.seed)
            cams = dict(zip(cameras(root), paths))
            for tr in args.trackers.split(","):
                if not tr:
                    continue
                rows, spent, frames = {}, 0.0, 0
                for cam, p in cams.items():
                    rows[cam], s, n = run_reidkit(tr, p, options.get(tr), budget, cli["min_len"])
                    spent, frames = spent + s, frames + n
                m = score(root, rows, work / "runs" / name / kind / tr)
                m = with_identities(m, root, rows, cams, work / "ids" / name / kind / tr)
                results.append(
                    {
                        "scene": name,
                        "dets": kind,
                        "tracker": tr,
                        "side": "reidkit",
                        **m,
                        "ms_per_frame": round(1000 * spent / frames, 3),
                    }
                )
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
            if args.timing:
                tm = run_timing(
                    args.boxmot_python,
                    [t for t in args.trackers.split(",") if t],
                    {c: (str(p), str(_video(root, c))) for c, p in cams.items()},
                    work,
                    options,
                    budget,
                )
                timings.append({"scene": name, "dets": kind, **tm})
                print(json.dumps(timings[-1]), file=sys.stderr, flush=True)
            if boxmot:
                if args.rerun_boxmot:
                    (work / f"boxmot-{name}-{kind}.json").unlink(missing_ok=True)
                got = run_boxmot(
                    args.boxmot_python,
                    boxmot,
                    {c: (str(p), str(_video(root, c))) for c, p in cams.items()},
                    work,
                    f"{name}-{kind}",
                )
                for tr in boxmot:
                    r = got[tr]
                    if "error" in r:
                        results.append(
                            {
                                "scene": name,
                                "dets": kind,
                                "tracker": f"boxmot:{tr}",
                                "side": "boxmot",
                                "error": r["error"],
                            }
                        )
                    else:
                        m = score(root, r["rows"], work / "runs" / name / kind / f"boxmot-{tr}")
                        m = with_identities(m, root, r["rows"], cams, work / "ids" / name / kind / f"boxmot-{tr}")
                        results.append(
                            {
                                "scene": name,
                                "dets": kind,
                                "tracker": f"boxmot:{tr}",
                                "side": "boxmot",
                                **m,
                                "ms_per_frame": round(1000 * r["seconds"] / r["frames"], 3),
                            }
                        )
                    print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    md = (
        "Summary: the default tracker, deep_sort and the best BoxMOT tracker of each cell (HOTA / IDF1 / MOTA / "
        "ID switches):\n\n" + summary(results, timings) + "\nEvery tracker (HOTA / IDF1 / MOTA / ID switches, "
        "tracker time per frame in its own run):\n\n" + table(results)
    )
    ident = identity_table(results)
    if ident:
        md += (
            "\nMulti-camera IDF1 / HOTA over global ids (and the number of identities) of each tracker's "
            "tracklets through reidkit's identities step (`identities()`: a tracklet's feature is the mean of its "
            "boxes' features; `reidkit.video.identities.assign_identities` with its defaults):\n\n" + ident
        )
    if timings:
        names = [k for k in timings[0] if k not in ("scene", "dets")]
        md += (
            "\nTracker time per frame measured in one process, alternating, best of 3 (ms; in brackets: x BoxMOT's "
            "ByteTrack):\n\n| scene, dets | " + " | ".join(names) + " |\n|---|" + "---|" * len(names) + "\n"
        )
        for t in timings:
            ref = t["boxmot:bytetrack"]
            md += (
                f"| {t['scene']} {t['dets']} | " + " | ".join(f"{t[n]:.2f} ({t[n] / ref:.2f}x)" for n in names) + " |\n"
            )
    print(md)
    if args.no_write:
        return
    from benchmarks.common import machine_info

    RESULTS.mkdir(exist_ok=True)
    command = "python -m benchmarks.bench_trackers " + " ".join(argv)
    payload = {
        "command": command,
        "seed": args.seed,
        "machine": machine_info(),
        "scenes": {k: SCENES[k] for k in args.scenes.split(",")},
        "options": options,
        "appearance": appearance,
        "embed_budget": budget,
        "results": results,
        "timing": timings,
    }
    (RESULTS / f"{args.tag}.json").write_text(json.dumps(payload, indent=1))
    (RESULTS / f"{args.tag}.md").write_text(
        "# Within-video trackers on identical detections and features\n\n"
        f"`{command}` (see its docstring). Figures: HOTA / IDF1 / MOTA / ID switches (TrackEval, the scene's cameras "
        "combined); the best HOTA of a row in bold. The times of the full table come from each side's own run "
        "(BoxMOT's are cached per cell), taken under different loads of a shared 2-core machine: compare speed in "
        "the timing table, measured in one process.\n\n" + md
    )


if __name__ == "__main__":
    main()
