"""Footage-to-gallery quality on a generated multi-camera scene (not a test).

A scene (reidkit.data.scene: default 3 cameras, 8 people, 240 frames of 320x240 at 10 fps) is
ingested with `reidkit.video.ingest` twice: with the ground-truth boxes plus box noise as
detections (each box's centre moved by N(0, 0.05 w|h), its size scaled by exp(N(0, 0.05)), written
as a MOTChallenge detections file), and with the built-in OpenCV HOG detector. Reported:

- within each camera: tracklets, tracklet purity (over tracklet boxes matched to a ground-truth box
  at IoU >= 0.5: the fraction belonging to the tracklet's majority identity), unmatched tracklet
  boxes (false positives), ground-truth coverage (ground-truth boxes covered by a tracklet box at
  IoU >= 0.5), and ID switches (per ground-truth identity, in frame order, the number of times the
  covering tracklet changes; a track lost and found again under a new id counts);
- across cameras: every tracklet with a majority identity queries the tracklets of the OTHER
  cameras (ranked by cosine similarity of tracklet features); rank-1 and mAP over queries that have
  a true match there (ground truth by majority identity; unmatched tracklets stay as distractors).

    python -m benchmarks.video_scene [--cams 3] [--ids 8] [--frames 240] [--weights W] [--skip-hog]

Writes benchmarks/results/video_scene.md (and .json).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from reidkit.data.scene import generate_scene, read_mot
from reidkit.retrieval.gallery import Gallery
from reidkit.video.detect import box_iou
from reidkit.video.ingest import ingest

RESULTS = Path(__file__).resolve().parent / "results"


def noisy_detections(gt: np.ndarray, out: Path, rng: np.random.Generator, sigma: float = 0.05) -> Path:
    """Ground-truth boxes with centre and size noise, as a MOTChallenge detections file (id -1)."""
    lines = []
    for f, _pid, x, y, w, h, _c in gt:
        cx, cy = x + w / 2 + rng.normal(0, sigma) * w, y + h / 2 + rng.normal(0, sigma) * h
        w2, h2 = w * np.exp(rng.normal(0, sigma)), h * np.exp(rng.normal(0, sigma))
        lines.append(f"{int(f)},-1,{cx - w2 / 2:.2f},{cy - h2 / 2:.2f},{w2:.2f},{h2:.2f},1,-1,-1,-1\n")
    out.write_text("".join(lines))
    return out


def evaluate(db: Path, gts: dict[str, np.ndarray]) -> dict:
    """Within-camera tracking figures and cross-camera tracklet retrieval (see the module docstring)."""
    g = Gallery.open(db)
    entries = g.entries(kind="tracklet")
    labels, cams, per_cam = [], [], {}
    for cam, gt in gts.items():
        mine = [e for e in entries if e["camera"] == cam]
        gt_xyxy = np.c_[gt[:, 2], gt[:, 3], gt[:, 2] + gt[:, 4], gt[:, 3] + gt[:, 5]]
        covered: dict[tuple[int, int], str] = {}  # (frame, gt row) -> tracklet
        matched = majority_hits = unmatched = 0
        for e in mine:
            ids = []
            for b in e["meta"]["boxes"]:
                rows = np.flatnonzero(gt[:, 0] == b[0])
                if len(rows) == 0:
                    ids.append(-1)
                    continue
                ious = box_iou(np.asarray([b[1:5]], float), gt_xyxy[rows])[0]
                j = int(np.argmax(ious))
                if ious[j] >= 0.5:
                    ids.append(int(gt[rows[j], 1]))
                    covered.setdefault((int(b[0]), int(rows[j])), e["tracklet"])
                else:
                    ids.append(-1)
            good = [i for i in ids if i > 0]
            unmatched += len(ids) - len(good)
            maj = max(set(good), key=good.count) if good else -1
            matched += len(good)
            majority_hits += good.count(maj) if good else 0
            e["_label"] = maj
        switches = 0
        for pid in np.unique(gt[:, 1]).astype(int):
            rows = np.flatnonzero(gt[:, 1] == pid)
            seq = [covered[(int(gt[r, 0]), int(r))] for r in rows if (int(gt[r, 0]), int(r)) in covered]
            switches += sum(1 for a, b in zip(seq, seq[1:]) if a != b)
        n_boxes = sum(len(e["meta"]["boxes"]) for e in mine)
        per_cam[cam] = {
            "tracklets": len(mine),
            "purity": majority_hits / max(matched, 1),
            "unmatched_boxes": unmatched / max(n_boxes, 1),
            "coverage": len(covered) / max(len(gt), 1),
            "id_switches": switches,
            "gt_ids": int(len(np.unique(gt[:, 1]))),
        }
        labels += [e["_label"] for e in mine]
        cams += [cam for _ in mine]
        entries_order = mine
        per_cam[cam]["_ids"] = [e["id"] for e in entries_order]
    ids = sum((per_cam[c].pop("_ids") for c in gts), [])
    feats = g.features(ids)
    labels_a, cams_a = np.asarray(labels), np.asarray(cams)
    sims = feats @ feats.T
    aps, r1 = [], []
    for q in range(len(ids)):
        if labels_a[q] < 0:
            continue
        other = np.flatnonzero(cams_a != cams_a[q])
        rel = labels_a[other] == labels_a[q]
        if not rel.any():
            continue
        order = np.argsort(-sims[q, other], kind="stable")
        hits = rel[order]
        ranks = np.flatnonzero(hits) + 1
        aps.append(float(np.mean(np.arange(1, len(ranks) + 1) / ranks)))
        r1.append(float(hits[0]))
    n_tr = sum(v["tracklets"] for v in per_cam.values())
    total = {
        "tracklets": n_tr,
        "purity": float(
            np.average(
                [v["purity"] for v in per_cam.values()], weights=[max(v["tracklets"], 1) for v in per_cam.values()]
            )
        ),
        "coverage": float(np.mean([v["coverage"] for v in per_cam.values()])),
        "unmatched_boxes": float(np.mean([v["unmatched_boxes"] for v in per_cam.values()])),
        "id_switches": int(sum(v["id_switches"] for v in per_cam.values())),
        "queries": len(aps),
        "rank1": float(np.mean(r1)) if r1 else 0.0,
        "mAP": float(np.mean(aps)) if aps else 0.0,
    }
    return {"per_camera": per_cam, "total": total}


def main(argv: list[str] | None = None) -> None:
    """Generate the scene, ingest it with both detection sources, write the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cams", type=int, default=3)
    ap.add_argument("--ids", type=int, default=8)
    ap.add_argument("--frames", type=int, default=240)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weights", default=None, help="ReID model (default: offline ImageNet EfficientNet-Lite0)")
    ap.add_argument("--skip-hog", action="store_true")
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--max-cosine-distance", type=float, default=0.1, help="DeepSort appearance gate")
    ap.add_argument("--work", default=None, help="work folder (default: a temp folder, removed)")
    args = ap.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="video_scene_"))
    try:
        t0 = time.perf_counter()
        scene = generate_scene(work / "scene", cams=args.cams, ids=args.ids, frames=args.frames, seed=args.seed)
        gen_s = time.perf_counter() - t0
        gts = {c: read_mot(p) for c, p in zip(scene.cameras, scene.gt)}
        rng = np.random.default_rng(args.seed)
        dets = [noisy_detections(gts[c], work / f"{c}_det.txt", rng) for c in scene.cameras]
        runs = {}
        settings = [("ground truth + box noise", {"detections": [str(d) for d in dets]})]
        settings.append(("motion detector (default)", {"detector": "motion"}))
        if not args.skip_hog:
            settings.append(("OpenCV HOG (`--detector hog`)", {"detector": "hog"}))
        for name, kw in settings:
            db = work / f"db_{len(runs)}"
            t0 = time.perf_counter()
            rep = ingest(
                db,
                [str(v) for v in scene.videos],
                cameras=scene.cameras,
                weights=args.weights,
                every=args.every,
                max_cosine_distance=args.max_cosine_distance,
                progress=None,
                **kw,
            )
            secs = time.perf_counter() - t0
            res = evaluate(db, gts)
            res["ingest_s"] = secs
            res["frames_per_s"] = [v.get("frames_per_s") for v in rep["videos"]]
            runs[name] = res
            print(name, json.dumps(res["total"]), f"{secs:.1f}s", flush=True)
        write(args, scene, gen_s, runs)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def write(args: argparse.Namespace, scene, gen_s: float, runs: dict) -> None:
    """benchmarks/results/video_scene.{md,json}."""
    import platform

    import torch

    cmd = "python -m benchmarks.video_scene" + "".join(
        f" --{k.replace('_', '-')}" + ("" if v is True else f" {v}")
        for k, v in vars(args).items()
        if v not in (None, False) and k != "work"
    )
    lines = [
        "# Video ingestion on a generated multi-camera scene",
        "",
        f"Command: `{cmd}` (CPU: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}).",
        "",
        f"Scene: {len(scene.cameras)} cameras, {scene.ids} people, {scene.frames} frames of "
        f"{scene.size[1]}x{scene.size[0]} at {scene.fps:g} fps, {scene.boxes} ground-truth boxes "
        f"(generated in {gen_s:.1f} s). ReID model: {args.weights or 'ImageNet EfficientNet-Lite0 (offline, no ReID training)'}; "
        "tracker: deep_sort_realtime DeepSort on those features; tracklet feature = mean of the best 4 crops.",
        "",
        "| detections | tracklets | purity | unmatched boxes | GT coverage | ID switches | cross-cam queries | rank-1 | mAP | ingest s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in runs.items():
        t = r["total"]
        lines.append(
            f"| {name} | {t['tracklets']} | {100 * t['purity']:.1f}% | {100 * t['unmatched_boxes']:.1f}% | "
            f"{100 * t['coverage']:.1f}% | {t['id_switches']} | {t['queries']} | {100 * t['rank1']:.1f}% | "
            f"{100 * t['mAP']:.1f}% | {r['ingest_s']:.0f} |"
        )
    lines += [
        "",
        "Per camera:",
        "",
        "| detections | camera | people (GT) | tracklets | purity | GT coverage | ID switches |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in runs.items():
        for cam, v in r["per_camera"].items():
            lines.append(
                f"| {name} | {cam} | {v['gt_ids']} | {v['tracklets']} | {100 * v['purity']:.1f}% | "
                f"{100 * v['coverage']:.1f}% | {v['id_switches']} |"
            )
    lines += [
        "",
        "Definitions: see the docstring of benchmarks/video_scene.py. Purity is over tracklet boxes matched "
        "to ground truth (IoU >= 0.5); ID switches count, per person and camera, changes of the covering "
        "tracklet in frame order (a lost-and-refound track counts once).",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "video_scene.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "video_scene.json").write_text(json.dumps({"args": vars(args), "runs": runs}, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
