"""`reidkit video` speed per setting, with the tracking quality each speed-up costs (not a test).

Every run is a whole `reidkit video` process (start-up, model load and commits included), timed
from outside: real-time factor = video seconds / wall seconds. Runs of one table go back to back in
this one process, so the machine's load is shared alike; the "before" row runs the code of another
tree (``--before PATH``: a checkout of the commit before this work) on the same video.

- Settings on a generated scene (``reidkit scene OUT --cams 1 --ids 20 --frames 300 --size
  576x768 --fps 10``): full rate (every frame detected at full size, every crop embedded) and the
  speed options alone and together (``--detect-scale``, ``--detect-every``, ``--appearance``).
  Quality against the scene's ground truth: HOTA, IDF1, MOTA (TrackEval's metrics called on the
  sequence directly) and the purity / coverage / ID switches of benchmarks/video_scene.py.
- Per-stage figures from the run's report (seconds and items per stage, embedder batch sizes).
- Busy frames: a scene with many people per frame ingested from its ground-truth boxes (no detector
  cost), every crop embedded vs only where needed: per-frame cost of embedding and tracking.
- Three cameras: one run (one embedder, batches mixing cameras) vs three sequential runs.

    python -m benchmarks.bench_video [--before /tmp/vb] [--threads 2] [--skip-cams] [--skip-busy]

Writes benchmarks/results/bench_video.md (and .json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
CODE = "import sys; from reidkit.cli import main; sys.exit(main(sys.argv[1:]))"


def run_video(
    videos: list[str], db: Path, args: list[str], tree: Path = ROOT, threads: int | None = None
) -> tuple[float, dict]:
    """(wall seconds, --json report) of one `reidkit video` process run from `tree`."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    env.pop("OMP_NUM_THREADS", None)
    env.pop("MKL_NUM_THREADS", None)
    pre = []
    if threads and tree == ROOT:
        pre = ["--threads", str(threads)]
    elif threads:
        env["OMP_NUM_THREADS"] = str(threads)
    shutil.rmtree(db, ignore_errors=True)
    cmd = [sys.executable, "-c", CODE, *pre, "video", *videos, "--db", str(db), "--json", *args]
    import resource

    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=str(tree))
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
    rep = json.loads(p.stdout)
    # CPU seconds of the process (all its threads): on a machine shared with other work, the figure that
    # does not depend on how much of the CPU the others left us
    rep["_cpu_s"] = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return wall, rep


def trackeval_metrics(db: Path, gt: np.ndarray, camera: str) -> dict:
    """HOTA, IDF1, MOTA of the gallery's tracklets of `camera` against MOT ground truth (TrackEval)."""
    from trackeval.metrics import CLEAR, HOTA, Identity

    from reidkit.retrieval.gallery import Gallery

    entries = [e for e in Gallery.open(db).entries(kind="tracklet") if e["camera"] == camera]
    frames = int(gt[:, 0].max())
    gt_ids = {int(p): i for i, p in enumerate(np.unique(gt[:, 1]))}
    rows_t: list[list] = [[] for _ in range(frames)]
    for ti, e in enumerate(entries):
        for b in e["meta"]["boxes"]:
            if 1 <= b[0] <= frames:
                rows_t[b[0] - 1].append((ti, b[1:5]))
    data = {
        "num_timesteps": frames,
        "num_gt_ids": len(gt_ids),
        "num_tracker_ids": len(entries),
        "gt_ids": [],
        "tracker_ids": [],
        "similarity_scores": [],
        "num_gt_dets": len(gt),
        "num_tracker_dets": sum(len(r) for r in rows_t),
    }
    from reidkit.video.detect import box_iou

    for t in range(frames):
        g = gt[gt[:, 0] == t + 1]
        gb = np.c_[g[:, 2], g[:, 3], g[:, 2] + g[:, 4], g[:, 3] + g[:, 5]]
        tb = np.asarray([b for _i, b in rows_t[t]], float).reshape(-1, 4)
        data["gt_ids"].append(np.asarray([gt_ids[int(p)] for p in g[:, 1]], int))
        data["tracker_ids"].append(np.asarray([i for i, _b in rows_t[t]], int))
        data["similarity_scores"].append(box_iou(gb, tb) if len(gb) and len(tb) else np.zeros((len(gb), len(tb))))
    out = {}
    for metric in (HOTA(), Identity(), CLEAR()):
        res = metric.eval_sequence(data)
        for k in ("HOTA", "IDF1", "MOTA", "IDSW"):
            if k in res:
                v = res[k]
                out[k] = float(np.mean(v)) if k == "HOTA" else float(v)
    return out


def quality(db: Path, gts: dict[str, np.ndarray]) -> dict:
    """TrackEval metrics per camera (averaged) + benchmarks.video_scene figures."""
    from benchmarks.video_scene import evaluate

    te = [trackeval_metrics(db, gt, cam) for cam, gt in gts.items()]
    q = {k: float(np.mean([t[k] for t in te])) for k in te[0]}
    tot = evaluate(db, gts)["total"]
    q.update(
        {
            "purity": tot["purity"],
            "coverage": tot["coverage"],
            "id_switches": tot["id_switches"],
            "tracklets": tot["tracklets"],
        }
    )
    return q


SETTINGS = [
    (
        "HOG full rate (every frame, full size, every crop, torch)",
        ["--detector", "hog", "--detect-every", "1", "--detect-scale", "1", "--appearance", "all", "--engine", "torch"],
    ),
    (
        "HOG, appearance needed (scale 0.75, torch)",
        [
            "--detector",
            "hog",
            "--detect-scale",
            "0.75",
            "--appearance",
            "needed",
            "--embed-budget",
            "0",
            "--engine",
            "torch",
        ],
    ),
    ("motion full rate (every crop, torch)", ["--detector", "motion", "--appearance", "all", "--engine", "torch"]),
    (
        "motion, appearance needed, torch",
        ["--detector", "motion", "--appearance", "needed", "--embed-budget", "0", "--engine", "torch"],
    ),
    ("the previous defaults (float ONNX Runtime, no embedding budget)", ["--engine", "onnx", "--embed-budget", "0"]),
    ("defaults (motion, appearance needed, embedding budget 8, engine auto: int8)", []),
    ("fastest: defaults + --detect-every 2", ["--detect-every", "2"]),
    ("defaults without the budget (--embed-budget 0)", ["--embed-budget", "0"]),
    ("--detect-scale 0.5 (HOG)", ["--detector", "hog", "--detect-scale", "0.5", "--appearance", "all"]),
    ("--detect-every 3 (HOG)", ["--detector", "hog", "--detect-every", "3", "--appearance", "all"]),
]


def main(argv: list[str] | None = None) -> None:
    """Run the tables; write benchmarks/results/bench_video.{md,json}."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", default=None, help="a tree with the code before this work (PYTHONPATH)")
    ap.add_argument("--threads", type=int, default=None, help="--threads of each run (default: reidkit's)")
    ap.add_argument("--frames", type=int, default=300)
    ap.add_argument("--only", default=None, help="comma-separated setting numbers (1-based) to run")
    ap.add_argument("--skip-cams", action="store_true")
    ap.add_argument("--busy-frames", type=int, default=60)
    ap.add_argument("--budgets", default="8,4", help="--embed-budget values measured on the busy scene (int8)")
    ap.add_argument(
        "--dask", action="store_true", help="also: the three cameras on a local Dask cluster, 1 vs 2 workers"
    )
    ap.add_argument("--cam-frames", type=int, default=100)
    ap.add_argument("--cam-size", default="576x768")
    ap.add_argument("--skip-busy", action="store_true")
    ap.add_argument("--work", default=None)
    ap.add_argument("--tag", default="", help="suffix of the results files (bench_video<TAG>.md)")
    args = ap.parse_args(argv)
    from reidkit.data.scene import read_mot

    work = Path(args.work or tempfile.mkdtemp(prefix="bench_video_"))
    work.mkdir(parents=True, exist_ok=True)
    out: dict = {"args": vars(args), "cores": len(os.sched_getaffinity(0)), "load_before": os.getloadavg()}

    def scene(name: str, extra: list[str]) -> Path:
        d = work / name
        if not (d / "scene.json").is_file():
            subprocess.run(
                [sys.executable, "-c", CODE, "scene", str(d), *extra],
                check=True,
                capture_output=True,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
        return d

    s1 = scene(
        "scene1", ["--cams", "1", "--ids", "20", "--frames", str(args.frames), "--size", "576x768", "--fps", "10"]
    )
    video, gts = str(s1 / "cam1" / "cam1.avi"), {"cam1": read_mot(s1 / "cam1" / "gt" / "gt.txt")}
    secs_video = args.frames / 10.0
    # the ONNX export of the embedder is made once per model and cached: make it before timing (reported)
    warm, _rep = run_video([video], work / "db_warm", ["--every", "50"], ROOT, args.threads)
    out["first_run_with_onnx_export_s"] = warm
    rows = []
    todo = list(enumerate(SETTINGS, 1))
    if args.only:
        keep = {int(v) for v in args.only.split(",")}
        todo = [(i, s) for i, s in todo if i in keep]
    if args.before:
        todo.insert(0, (0, ("before (7c136e3, today's defaults)", [])))
    for i, (name, sargs) in todo:
        db = work / f"db{i}"
        tree = Path(args.before) if i == 0 else ROOT
        wall, rep = run_video([video], db, sargs, tree, args.threads)
        q = quality(db, gts)
        row = {
            "setting": name,
            "args": " ".join(sargs),
            "wall_s": wall,
            "rtf": secs_video / wall,
            "cpu_s": rep["_cpu_s"],
            "rtf_cpu": secs_video / rep["_cpu_s"],
            "frames_per_s": args.frames / wall,
            "quality": q,
            "stages": rep.get("stages"),
            "in_process_s": rep.get("seconds"),
        }
        rows.append(row)
        print(
            json.dumps({k: row[k] for k in ("setting", "wall_s", "rtf", "cpu_s", "rtf_cpu")}), json.dumps(q), flush=True
        )
    out["settings"] = rows

    if not args.skip_busy:
        nb = args.busy_frames
        sb = scene(
            "busy",
            ["--cams", "1", "--ids", "60", "--frames", str(nb), "--size", "576x768", "--fps", "10", "--speed", "0.3"],
        )
        gt = read_mot(sb / "cam1" / "gt" / "gt.txt")
        busy = {"boxes_per_frame": float(len(gt) / nb), "frames": nb}
        modes = [
            ("all (float ONNX)", ["--appearance", "all", "--engine", "onnx"]),
            ("needed, no budget (float ONNX; the previous defaults)", ["--embed-budget", "0", "--engine", "onnx"]),
            ("needed, no budget, int8", ["--embed-budget", "0"]),
        ]
        modes += [
            (f"needed, --embed-budget {b}, int8" + (" (defaults)" if b == "8" else ""), ["--embed-budget", b])
            for b in args.budgets.split(",")
            if b
        ]
        busy["modes"] = [m for m, _ in modes]
        for j, (mode, margs) in enumerate(modes):
            db = work / f"dbb_{j}"
            wall, rep = run_video(
                [str(sb / "cam1" / "cam1.avi")],
                db,
                ["--detections", str(sb / "cam1" / "gt" / "gt.txt"), *margs],
                ROOT,
                args.threads,
            )
            st = rep["stages"]
            busy[mode] = {
                "wall_s": wall,
                "ms_per_frame_embed_track": 1000
                * (st["seconds"].get("embed", 0) + st["seconds"].get("track", 0) + st["seconds"].get("crop", 0))
                / nb,
                "embedded_crops": st["counts"].get("embedded", 0),
                "crops": st["counts"].get("crops", 0),
                "in_process_s": rep["seconds"],
                "cpu_s": rep["_cpu_s"],
                "rtf": nb / 10.0 / wall,
                "quality": quality(db, {"cam1": gt}),
                "stages": st,
            }
            print("busy", mode, json.dumps(busy[mode]), flush=True)
        out["busy"] = busy

    if not args.skip_cams:
        s3 = scene(
            "scene3",
            ["--cams", "3", "--ids", "12", "--frames", str(args.cam_frames), "--size", args.cam_size, "--fps", "10"],
        )
        vids = [str(s3 / f"cam{c}" / f"cam{c}.avi") for c in (1, 2, 3)]
        wall_one, rep = run_video(vids, work / "db3", [], ROOT, args.threads)
        seq_runs = [run_video([v], work / f"db3_{j}", [], ROOT, args.threads) for j, v in enumerate(vids)]
        seq = [w for w, _r in seq_runs]
        out["three_cameras"] = {
            "one_run_s": wall_one,
            "sequential_s": sum(seq),
            "sequential_each_s": seq,
            "one_run_cpu_s": rep["_cpu_s"],
            "sequential_cpu_s": sum(r["_cpu_s"] for _w, r in seq_runs),
            "frames": args.cam_frames,
            "size": args.cam_size,
            "stages": rep["stages"],
        }
        print("3 cams", json.dumps(out["three_cameras"]), flush=True)
    if args.dask:
        s3 = scene(
            "scene3",
            ["--cams", "3", "--ids", "12", "--frames", str(args.cam_frames), "--size", args.cam_size, "--fps", "10"],
        )
        vids = [str(s3 / f"cam{c}" / f"cam{c}.avi") for c in (1, 2, 3)]
        dask = {}
        for n in (1, 2):
            wall, rep = run_video(vids, work / f"dbd{n}", ["--workers", str(n)], ROOT, args.threads)
            dask[n] = {"wall_s": wall, "cpu_s_driver": rep["_cpu_s"], "tracklets": rep["tracklets"]}
            print("dask", n, json.dumps(dask[n]), flush=True)
        out["dask"] = dask
    out["load_after"] = os.getloadavg()
    write(out)


def write(out: dict) -> None:
    """benchmarks/results/bench_video.{md,json}."""
    lines = [
        "# `reidkit video`: speed per setting and its quality cost",
        "",
        f"Command: `python -m benchmarks.bench_video {' '.join(sys.argv[1:])}`; {out['cores']} cores, shared "
        f"(1-min load average {out['load_before'][0]:.1f} before, {out['load_after'][0]:.1f} after: other "
        "processes were running; compare rows of this table, not other machines).",
        "",
        "Scene: 1 camera, 20 people, 768x576 at 10 frames/s (`reidkit scene OUT --cams 1 --ids 20 --frames "
        f"{out['args']['frames']} --size 576x768 --fps 10`), the detector of each row, ImageNet "
        "EfficientNet-Lite0.",
        "Real-time factor = video seconds / wall seconds of the whole `reidkit video` process (start-up, "
        "model load and commits included; the embedder's ONNX export, made once per model and cached, was "
        f"made before timing by a first run: {out.get('first_run_with_onnx_export_s', 0):.1f} s).",
        "",
        "CPU s: user + system seconds of the process (all threads); video s / CPU s is the real-time factor "
        "the run would have on ONE free core (on two free cores the stages overlap: higher).",
        "",
        "| setting | wall s | real-time factor (wall) | CPU s | video s / CPU s | HOTA | IDF1 | MOTA | purity | "
        "coverage | ID switches | tracklets |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in out["settings"]:
        q = r["quality"]
        lines.append(
            f"| {r['setting']} | {r['wall_s']:.1f} | {r['rtf']:.2f} | {r['cpu_s']:.1f} | {r['rtf_cpu']:.2f} | "
            f"{100 * q['HOTA']:.1f} | "
            f"{100 * q['IDF1']:.1f} | {100 * q['MOTA']:.1f} | {100 * q['purity']:.1f}% | "
            f"{100 * q['coverage']:.1f}% | {q['id_switches']} | {q['tracklets']} |"
        )
    lines += [
        "",
        "Per stage (seconds summed over the run's threads; stages overlap):",
        "",
        "| setting | decode | detect | crop | embed | track | crops embedded / seen | crops per batch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in out["settings"]:
        st = r.get("stages")
        if not st:
            continue
        s, c = st["seconds"], st["counts"]
        lines.append(
            f"| {r['setting']} | {s.get('decode', 0):.1f} | {s.get('detect', 0):.1f} | "
            f"{s.get('crop', 0):.1f} | {s.get('embed', 0):.1f} | {s.get('track', 0):.1f} | "
            f"{c.get('embedded', 0)} / {c.get('crops', 0)} | {st['crops_per_batch']} |"
        )
    if "busy" in out:
        b = out["busy"]
        lines += [
            "",
            f"Busy frames ({b['boxes_per_frame']:.1f} people per frame, ground-truth boxes, {b['frames']} frames):",
            "",
            "| appearance | crops embedded / seen | crop + embed + track ms per frame | process wall s | "
            "real-time factor | CPU s | HOTA | IDF1 | ID switches |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for mode in b.get("modes", ("all", "needed")):
            m = b[mode]
            q = m.get("quality") or {}
            lines.append(
                f"| {mode} | {m['embedded_crops']} / {m['crops']} | {m['ms_per_frame_embed_track']:.0f} | "
                f"{m['wall_s']:.1f} | {m.get('rtf', b['frames'] / 10.0 / m['wall_s']):.2f} | "
                f"{m['cpu_s']:.1f} | {100 * q.get('HOTA', float('nan')):.1f} | "
                f"{100 * q.get('IDF1', float('nan')):.1f} | {q.get('id_switches', '-')} |"
            )
    if "three_cameras" in out:
        t = out["three_cameras"]
        st = t["stages"]
        lines += [
            "",
            f"Three cameras ({t['frames']} frames of {t['size']} each, defaults): one run vs three sequential runs:",
            "",
            f"- one run: {t['one_run_s']:.1f} s wall, {t['one_run_cpu_s']:.1f} CPU s; three runs: "
            f"{t['sequential_s']:.1f} s wall ({', '.join(f'{v:.1f}' for v in t['sequential_each_s'])}), "
            f"{t['sequential_cpu_s']:.1f} CPU s; wall ratio {t['sequential_s'] / t['one_run_s']:.2f}x",
            f"- embedder calls: {st['embed_batches']}, crops per call {st['crops_per_batch']} (max "
            f"{st['max_crops_per_batch']}), cameras per call {st['cameras_per_batch']}, calls mixing cameras "
            f"{st['mixed_camera_batches']}",
        ]
    if "dask" in out:
        d = out["dask"]
        lines += [
            "",
            "The three cameras on a local Dask cluster (`reidkit video ... --workers N`, cluster start-up included):",
            "",
            f"- 1 worker: {d[1]['wall_s']:.1f} s; 2 workers: {d[2]['wall_s']:.1f} s; "
            f"ratio {d[1]['wall_s'] / d[2]['wall_s']:.2f}x (same tracklets: {d[1]['tracklets']} and "
            f"{d[2]['tracklets']})",
        ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = out["args"].get("tag", "")
    (RESULTS / f"bench_video{tag}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"bench_video{tag}.json").write_text(json.dumps(out, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
