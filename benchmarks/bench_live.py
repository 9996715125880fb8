"""Live cameras on this machine: how many streams `reidkit watch` keeps at camera pace (issue 32).

N copies of scene C (768x576, 10 frames/s, 20 people, 300 frames) are served as live streams on
127.0.0.1 by ffmpeg (MPEG-TS over HTTP, looped, at their own rate) and watched with `reidkit watch`'s
defaults (motion detector, bytesort, int8 association, a 4-frame buffer per camera) for --seconds. The
scene is encoded once (MPEG-2 in MPEG-TS) and the servers only copy it out at its rate (``-c copy``): a
camera encodes on its own hardware, so the servers take next to no CPU from the machine measured. Every
5 s the benchmark reads /health: frames received / processed / skipped and the lag per camera.

A run keeps pace when, after its first sample (start-up), at most 1 % of the frames were skipped and the
lag does not grow: the least-squares trend of the largest camera lag over the run, times the run's length,
is at most one frame period (0.1 s). (The lag cannot grow past the 4-frame buffer by construction, so the
skip rate is what gives way first.) At the end the tracklets are exported (`reidkit tracklets export`) and
scored with TrackEval against the scene's ground truth repeated over the loops, so the cost of skipping
shows as HOTA. ``--streams auto`` tries N = 1, 2, ... and stops after the first N that does not keep pace:
the largest N kept at pace, and the skip rate and HOTA at N+1. Writes results/bench_live.{md,json}.

    python -m benchmarks.bench_live --streams auto --seconds 300      # the issue's run (about 5 min per N)
    python -m benchmarks.bench_live --streams 1,2 --seconds 30        # a quick look
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _encode(video: Path, out: Path, loops: int = 1) -> Path:
    """The scene as the camera sends it (MPEG-2 in MPEG-TS), encoded once, ``loops`` times over in one file.

    One seamless file, not ffmpeg's ``-stream_loop`` over the 30 s scene: with ``-c copy`` each loop seam
    restarts the stream's timestamps, which a camera never does."""
    subprocess.run(
        [
            "ffmpeg",
            "-loglevel",
            "error",
            "-y",
            "-stream_loop",
            str(max(0, loops - 1)),
            "-i",
            str(video),
            "-c:v",
            "mpeg2video",
            "-q:v",
            "3",
            "-f",
            "mpegts",
            str(out),
        ],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return out


def _serve(stream: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [
            "ffmpeg",
            "-loglevel",
            "error",
            "-re",
            "-stream_loop",
            "-1",
            "-i",
            str(stream),
            "-c",
            "copy",
            "-f",
            "mpegts",
            "-listen",
            "1",
            f"http://127.0.0.1:{port}/",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _health(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            return json.loads(r.read())
    except OSError:
        return None


def _looped_gt(scene: Path, frames_per_loop: int, cams: dict[str, int], out: Path) -> Path:
    """GT_DIR/<cam>/gt/gt.txt: the scene's boxes repeated over each camera's received frames."""
    rows = [ln.split(",") for ln in (scene / "cam1" / "gt" / "gt.txt").read_text().splitlines() if ln.strip()]
    for cam, received in cams.items():
        d = out / cam
        (d / "gt").mkdir(parents=True, exist_ok=True)
        lines = []
        for loop in range(received // frames_per_loop + 1):
            for r in rows:
                f = int(r[0]) + loop * frames_per_loop
                if f <= received:
                    lines.append(",".join([str(f), str(int(r[1]) + 1000 * loop), *r[2:]]))
        (d / "gt" / "gt.txt").write_text("\n".join(lines) + "\n")
        (d / "seqinfo.ini").write_text(f"[Sequence]\nname={cam}\nseqLength={received}\n")
    return out


def lag_trend(samples: list[dict], cams: list[str]) -> float:
    """Seconds the largest camera lag grew over the run: the least-squares slope of it against time, times the
    run's length (0 for fewer than 3 samples)."""
    import numpy as np

    if len(samples) < 3:
        return 0.0
    t = np.array([s["t"] for s in samples], float)
    lag = np.array([max(s[c]["lag"] for c in cams) for s in samples], float)
    slope = float(np.polyfit(t, lag, 1)[0])
    return slope * float(t[-1] - t[0])


def run(n: int, seconds: float, scene: Path, work: Path) -> dict:
    loops = int(seconds // 30) + 2  # the scene is 30 s; one loop more than the run and its start-up need
    video = work / f"sceneC-x{loops}.ts"
    if not video.is_file():
        _encode(scene / "cam1" / "cam1.avi", video, loops)
    ports = [_port() for _ in range(n)]
    servers = [_serve(video, p) for p in ports]
    db, status_port = work / f"db{n}", _port()
    cmd = [
        sys.executable,
        "-m",
        "reidkit.cli",
        "watch",
        *[f"http://127.0.0.1:{p}/" for p in ports],
        "--db",
        str(db),
        "--status-port",
        str(status_port),
        "--json",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    samples = []
    try:
        while _health(status_port) is None or not all(
            c["processed"] > 0
            for c in (_health(status_port) or {"cameras": {"x": {"processed": 0}}})["cameras"].values()
        ):
            if proc.poll() is not None:
                raise SystemExit(proc.communicate()[1][-2000:])
            time.sleep(0.5)
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            time.sleep(5)
            h = _health(status_port)
            if h is not None:
                samples.append(
                    {
                        "t": round(time.monotonic() - t0, 1),
                        **{
                            cam: {k: c[k] for k in ("received", "processed", "skipped", "lag")}
                            for cam, c in h["cameras"].items()
                        },
                    }
                )
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
        for s in servers:
            s.kill()
    status = json.loads(out)
    cams = status["cameras"]
    received = sum(c["received"] for c in cams.values())
    skipped = sum(c["skipped"] for c in cams.values())
    # at pace: measured from the first sample on (start-up, the first inference calls, is not the steady state)
    first, last = samples[0], samples[-1]
    window_rx = sum(last[c]["received"] - first[c]["received"] for c in cams)
    window_skip = sum(last[c]["skipped"] - first[c]["skipped"] for c in cams)
    third = max(1, len(samples) // 3)
    lag_first = max(max(s[c]["lag"] for c in cams) for s in samples[:third])
    lag_last = max(max(s[c]["lag"] for c in cams) for s in samples[-third:])
    growth = lag_trend(samples, list(cams))
    from reidkit.evaluation.tracks import evaluate_tracks
    from reidkit.retrieval.gallery import Gallery
    from reidkit.video.identities import export_tracklets

    pred = work / f"pred{n}"
    export_tracklets(Gallery.open(db), pred, cameras=list(cams))
    gt = _looped_gt(scene, 300, {c: v["received"] for c, v in cams.items()}, work / f"gt{n}")
    m = evaluate_tracks(gt, pred, multi_camera=False)["combined"]
    pace = window_skip <= 0.01 * window_rx and growth <= 0.1
    return {
        "streams": n,
        "seconds": seconds,
        "received": received,
        "skipped": skipped,
        "skip_rate": round(skipped / max(received, 1), 4),
        "steady_skip_rate": round(window_skip / max(window_rx, 1), 4),
        "lag_first_s": round(lag_first, 3),
        "lag_last_s": round(lag_last, 3),
        "lag_growth_s": round(growth, 3),
        "keeps_pace": bool(pace),
        "HOTA": round(m["HOTA"], 1),
        "IDF1": round(m["IDF1"], 1),
        "samples": samples,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--streams",
        default="auto",
        help="numbers of streams to try, in order (e.g. 1,2,3), or auto: 1, 2, ... until one does not keep pace "
        "(default auto)",
    )
    ap.add_argument("--max-streams", type=int, default=12, help="the largest N auto tries (default 12)")
    ap.add_argument("--seconds", type=float, default=300.0, help="seconds of each run (default 300)")
    ap.add_argument("--tag", default="", help="suffix of the results files")
    args = ap.parse_args(argv)
    if shutil.which("ffmpeg") is None:
        raise SystemExit("error: needs ffmpeg (Debian: apt-get install ffmpeg) to serve the streams")
    from reidkit.data.scene import generate_scene

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        scene = work / "sceneC"
        generate_scene(scene, cams=1, ids=20, frames=300, size=(576, 768), fps=10.0)
        auto = args.streams.strip() == "auto"
        tries = range(1, args.max_streams + 1) if auto else [int(x) for x in args.streams.split(",")]
        for n in tries:
            r = run(n, args.seconds, scene, work)
            rows.append(r)
            print(
                f"{n} stream(s): skip rate {r['skip_rate']:.1%} ({r['steady_skip_rate']:.1%} after 5 s), "
                f"lag {r['lag_first_s']} -> {r['lag_last_s']} s (trend {r['lag_growth_s']:+.2f} s), "
                f"HOTA {r['HOTA']}, keeps pace: {r['keeps_pace']}",
                flush=True,
            )
            if auto and not r["keeps_pace"]:
                break
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"bench_live{args.tag}.json").write_text(json.dumps(rows, indent=1))
    lines = [
        "| streams | seconds | frames received | skipped (all) | skipped after 5 s | lag first / last third (s) "
        "| lag trend (s) | keeps pace | HOTA | IDF1 |",
        "|---:|---:|---:|---:|---:|---|---:|---|---:|---:|",
    ]
    lines += [
        f"| {r['streams']} | {r['seconds']:.0f} | {r['received']} | {r['skipped']} ({r['skip_rate']:.1%}) | "
        f"{r['steady_skip_rate']:.1%} | "
        f"{r['lag_first_s']} / {r['lag_last_s']} | {r['lag_growth_s']:+.2f} | {'yes' if r['keeps_pace'] else 'no'} | "
        f"{r['HOTA']} | "
        f"{r['IDF1']} |"
        for r in rows
    ]
    kept = [r for r in rows if r["keeps_pace"]]
    best = max((r["streams"] for r in kept), default=0)
    over = next((r for r in rows if r["streams"] == best + 1), None)
    summary = f"largest N kept at camera pace: {best}" + (
        f"; at N+1 = {over['streams']}: skip rate {over['steady_skip_rate']:.1%} after 5 s, HOTA {over['HOTA']} "
        f"(HOTA at N: {next(r['HOTA'] for r in kept if r['streams'] == best) if best else '-'})"
        if over is not None
        else ""
    )
    (RESULTS / f"bench_live{args.tag}.md").write_text(
        f"`python -m benchmarks.bench_live --streams {args.streams} --seconds {args.seconds:g}`\n\n"
        + "\n".join(lines)
        + f"\n\n{summary}\n"
    )
    print("\n".join(lines))
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
