"""Multi-camera tracking on a generated 3-camera chain scene, measured with TrackEval (not a test).

The scene (reidkit.data.scene, ``topology="chain"``: a corridor of cameras, transit times, people
who leave or come back; its links.yaml beside it) is ingested with `reidkit.video.ingest` for each
(feature model x detections) pair, its tracklets clustered into global identities
(`reidkit.video.identities.assign_identities`, default threshold, with the scene's camera links and
without), exported as MOTChallenge files and scored by `reidkit.evaluation.tracks.evaluate_tracks`:
single-camera HOTA / IDF1 / MOTA (TrackEval's combined over the cameras) and the multi-camera IDF1
over global ids (all cameras as one sequence, as the AI City Challenge ranked it).

Feature models: the offline ImageNet EfficientNet-Lite0 (reidkit's default, no ReID training) and
``--trained``: a reidkit checkpoint, e.g. the `demo` recipe trained on synthetic people of another
seed than the scene's (so no scene person is a training identity)::

    reidkit demo --out ~/.cache/reidkit/mct_demo data.datasets.0.options.seed=100 \
        solver.max_epochs=2 "solver.steps=[2]" solver.warmup_epochs=1
    reidkit train --config ~/.cache/reidkit/mct_demo/train/config.yaml solver.max_epochs=5 "solver.steps=[4]" resume=true
    python -m benchmarks.mct_scene --trained ~/.cache/reidkit/mct_demo/train/model.pt \
        --trained-label "reidkit demo recipe, 5 epochs on synthetic people (seed 100)"

(results/mct_scene.md was made so: 5 epochs, because the 2-core machine was shared by eight jobs and
an epoch took 5 minutes; on its own synthetic validation set the model went from mAP 17.5 / rank-1
35.8 (ImageNet weights) to mAP 36.6 / rank-1 44.2. The recipe's full 16 epochs would do better.)

Detections (``--detections``, default all three): the ground-truth boxes (a MOTChallenge detections
file per camera, ``gt``), the built-in motion detector (``motion``, reidkit's default) and OpenCV's HOG
people detector (``hog``). ``--append`` adds this run's rows to the table already written (rows of the
same features and detections are replaced).

``--tune``: the default identity threshold (reidkit.cluster.identities.DEFAULT_THRESHOLD) is chosen
here, on scenes with seeds other than the benchmark's (``--tune-seeds``, default 11,12), ImageNet
features and ground-truth boxes, with links: the threshold with the best mean multi-camera IDF1.

Writes benchmarks/results/mct_scene.md (and .json).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from reidkit.data.scene import generate_scene
from reidkit.evaluation.tracks import evaluate_tracks
from reidkit.retrieval.gallery import Gallery
from reidkit.video.identities import assign_identities, export_mot
from reidkit.video.ingest import ingest

RESULTS = Path(__file__).resolve().parent / "results"
SWEEP = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def make_scene(work: Path, args: argparse.Namespace, seed: int):
    H, W = (int(v) for v in args.size.split("x"))
    return generate_scene(
        work / f"scene_{seed}",
        cams=args.cams,
        ids=args.ids,
        frames=args.frames,
        size=(H, W),
        fps=10,
        seed=seed,
        speed=args.speed,
        topology="chain",
        transit=(2.0, 5.0),
    )


DETECTIONS = {"gt": "ground-truth boxes", "motion": "motion detector (default)", "hog": "OpenCV HOG"}


def run_ingest(scene, db: Path, weights: str | None, detections: str) -> float:
    kw = {"detections": [str(g) for g in scene.gt]} if detections == "gt" else {"detector": detections}
    t0 = time.perf_counter()
    ingest(db, [str(v) for v in scene.videos], cameras=scene.cameras, weights=weights, progress=None, **kw)
    return time.perf_counter() - t0


def score(scene, db: Path, threshold: float | None, links: bool, work: Path) -> dict:
    g = Gallery.open(db)
    rep = assign_identities(g, threshold=threshold, links=str(scene.links) if links else None, rebuild=True)
    g.refresh()
    pred = Path(tempfile.mkdtemp(dir=work, prefix="pred_"))
    export_mot(g, pred, cameras=scene.cameras)
    res = evaluate_tracks(scene.root / "GT", pred)
    res["identities"] = rep["identities"]
    return res


def tune(args: argparse.Namespace, work: Path) -> dict:
    curves = {}
    for seed in args.tune_seeds:
        scene = make_scene(work, args, seed)
        db = work / f"tune_db_{seed}"
        run_ingest(scene, db, None, "gt")
        curves[seed] = {t: score(scene, db, t, True, work)["multi_camera"]["IDF1"] for t in SWEEP}
        print("tune seed", seed, curves[seed], flush=True)
    mean = {t: float(np.mean([c[t] for c in curves.values()])) for t in SWEEP}
    best = max(SWEEP, key=lambda t: (mean[t], -abs(t - 0.6)))
    return {"seeds": args.tune_seeds, "curves": curves, "mean": mean, "best": best}


def main(argv: list[str] | None = None) -> None:
    """Generate the scene, run every (model x detections) setting, write the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cams", type=int, default=3)
    ap.add_argument("--ids", type=int, default=8)
    ap.add_argument("--frames", type=int, default=160)
    ap.add_argument("--size", default="240x320")
    ap.add_argument("--speed", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--trained", default=None, help="a reidkit checkpoint trained on synthetic people")
    ap.add_argument(
        "--trained-label", default="trained with reidkit on synthetic people", help="how the table names --trained"
    )
    ap.add_argument("--detections", default="gt,motion,hog", help="comma-separated: gt, motion, hog")
    ap.add_argument("--append", action="store_true", help="add the rows to results/mct_scene.json's table")
    ap.add_argument("--threshold", type=float, default=None, help="identity threshold (default: reidkit's)")
    ap.add_argument("--tune", action="store_true", help="also sweep the threshold on --tune-seeds scenes")
    ap.add_argument("--tune-only", action="store_true", help="only the threshold sweep (written to mct_tune.json)")
    ap.add_argument("--tune-seeds", type=lambda s: [int(v) for v in s.split(",")], default=[11, 12])
    ap.add_argument("--work", default=None, help="work folder (default: a temp folder, removed)")
    args = ap.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="mct_scene_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        tuning = tune(args, work) if args.tune or args.tune_only else None
        if args.tune_only:
            RESULTS.mkdir(parents=True, exist_ok=True)
            (RESULTS / "mct_tune.json").write_text(json.dumps({"args": vars(args), "tuning": tuning}, indent=2) + "\n")
            print(json.dumps(tuning, indent=2))
            return
        threshold = args.threshold if args.threshold is not None else (tuning["best"] if tuning else None)
        scene = make_scene(work, args, args.seed)
        models = [("ImageNet EfficientNet-Lite0", None)]
        if args.trained:
            models.append((args.trained_label, args.trained))
        dets = [(DETECTIONS[d], d) for d in args.detections.split(",")]
        runs = []
        if args.append and (RESULTS / "mct_scene.json").is_file():
            old = json.loads((RESULTS / "mct_scene.json").read_text())
            new = {(m, DETECTIONS[d]) for m, _w in models for d in args.detections.split(",")}
            runs = [r for r in old["runs"] if (r["model"], r["detections"]) not in new]
            args.previous_command = old.get("command") or next(
                (
                    ln.removeprefix("Command: ").rstrip(".")
                    for ln in (RESULTS / "mct_scene.md").read_text().splitlines()
                    if ln.startswith("Command:")
                ),
                "",
            )
        for mname, weights in models:
            for dname, kind in dets:
                db = work / f"db_{len(runs)}"
                secs = run_ingest(scene, db, weights, kind)
                linked = score(scene, db, threshold, True, work)
                loose = score(scene, db, threshold, False, work)
                runs.append({"model": mname, "detections": dname, "ingest_s": secs, "links": linked, "no_links": loose})
                c, m = linked["combined"], linked["multi_camera"]
                print(
                    f"{mname} | {dname}: HOTA {c['HOTA']:.1f} IDF1 {c['IDF1']:.1f} MOTA {c['MOTA']:.1f} "
                    f"multi-cam IDF1 {m['IDF1']:.1f} (no links {loose['multi_camera']['IDF1']:.1f})",
                    flush=True,
                )
                write(args, scene, threshold, tuning, runs)  # after every setting: a long run keeps what it measured
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def write(args: argparse.Namespace, scene, threshold: float | None, tuning: dict | None, runs: list) -> None:
    """benchmarks/results/mct_scene.{md,json}."""
    from reidkit.cluster.identities import DEFAULT_THRESHOLD

    cmd = "python -m benchmarks.mct_scene" + "".join(
        f" --{k.replace('_', '-')}" + ("" if v is True else f" {','.join(map(str, v)) if isinstance(v, list) else v}")
        for k, v in vars(args).items()
        if v not in (None, False)
        and k not in ("work", "tune_seeds", "previous_command")
        or (k == "tune_seeds" and args.tune)
    )
    thr = threshold if threshold is not None else DEFAULT_THRESHOLD
    lines = [
        "# Multi-camera tracking on a generated 3-camera scene (TrackEval)",
        "",
        f"Command: `{cmd}`."
        + (
            f" Rows kept from an earlier run: {getattr(args, 'previous_command', '')}"
            if getattr(args, "previous_command", "")
            else ""
        ),
        "",
        f"Scene: {len(scene.cameras)} cameras along a corridor (chain topology, transit 2-5 s), {scene.ids} people, "
        f"{scene.frames} frames of {scene.size[1]}x{scene.size[0]} at {scene.fps:g} fps, {scene.boxes} ground-truth "
        f"boxes, seed {args.seed}. Tracker: DeepSort on each model's features; tracklet feature = mean of the best 4 "
        f"crops; identities: k-reciprocal re-ranked distance, average linkage, threshold {thr:g}.",
        "",
        "| features | detections | HOTA | IDF1 | MOTA | IDsw | multi-camera IDF1 (links) | multi-camera IDF1 (no links) | identities (GT people) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        c, m = r["links"]["combined"], r["links"]["multi_camera"]
        lines.append(
            f"| {r['model']} | {r['detections']} | {c['HOTA']:.1f} | {c['IDF1']:.1f} | {c['MOTA']:.1f} | "
            f"{c['IDsw']} | {m['IDF1']:.1f} | {r['no_links']['multi_camera']['IDF1']:.1f} | "
            f"{r['links']['identities']} ({scene.ids}) |"
        )
    lines += [
        "",
        "HOTA / IDF1 / MOTA / IDsw: single-camera, TrackEval's combination over the cameras. Multi-camera "
        "IDF1: all cameras concatenated into one sequence with global ids.",
    ]
    if tuning:
        lines += [
            "",
            f"Threshold tuning on scenes with seeds {', '.join(map(str, tuning['seeds']))} (ImageNet features, "
            "ground-truth boxes, links): mean multi-camera IDF1 per threshold: "
            + ", ".join(f"{t:g}: {v:.1f}" for t, v in tuning["mean"].items())
            + f"; best {tuning['best']:g}.",
        ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "mct_scene.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "mct_scene.json").write_text(
        json.dumps(
            {"args": vars(args), "command": cmd, "threshold": thr, "tuning": tuning, "runs": runs},
            indent=2,
            default=str,
        )
        + "\n"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
