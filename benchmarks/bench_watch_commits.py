"""What a commit costs `reidkit watch`'s frame loop: the tracklets' feature samples embedded while the camera
waits for frames and spread over the frames before the commit (the default), against the reference that embeds
them all when the commit is cut (one burst), interleaved in one run.

Scene C (768x576, 10 frames/s, 20 people) is played from a file at its own rate (a file camera: the real
LiveSource, run_camera and a 4-frame buffer, the watch defaults) for --seconds per run, one or more cameras.
Per commit: the seconds ``_Video.chunk`` held the camera thread and the feature samples still to embed then;
per run: frames received / skipped and the frame loop's longest stall (from a read returning a frame to the
next read). A stall longer than the buffer (0.4 s) skips frames. Writes results/bench_watch_commits.{md,json}.

    python -m benchmarks.bench_watch_commits --seconds 90 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def run(video: Path, cameras: int, seconds: float, variant: str, db: Path) -> dict[str, Any]:
    import numpy as np

    from reidkit.video import live, pipeline
    from reidkit.video import watch as wmod
    from reidkit.video.cameras import Camera

    commits: list[tuple[float, int]] = []
    stalls: list[float] = []
    last: dict[int, float] = {}
    saved = (pipeline._Video.chunk, live.LiveSource.read, wmod.wait_frame, wmod.spread_missing)
    chunk0, read0, wait0, _spread0 = saved

    def chunk(self: Any, *a: Any, **k: Any) -> Any:
        todo = len(self.missing())
        t0 = time.perf_counter()
        out = chunk0(self, *a, **k)
        commits.append((time.perf_counter() - t0, todo))
        return out

    def read(self: Any, timeout: float | None = None) -> Any:
        if id(self) in last:
            stalls.append(time.perf_counter() - last.pop(id(self)))
        f = read0(self, timeout)
        if f is not None:
            last[id(self)] = time.perf_counter()
        return f

    pipeline._Video.chunk, live.LiveSource.read = chunk, read  # type: ignore[method-assign]
    if variant == "burst":  # the reference: every waiting sample embedded when the chunk is cut
        wmod.wait_frame = lambda source, late, stop, wait=0.2: wait0(source, None, stop, wait)
        wmod.spread_missing = lambda *_a: 0
    try:
        cams = [Camera(f"cam{i + 1}", str(video)) for i in range(cameras)]
        st = wmod.watch(db, cams, duration=seconds)
    finally:
        pipeline._Video.chunk, live.LiveSource.read, wmod.wait_frame, wmod.spread_missing = saved  # type: ignore[method-assign]
    c = st["cameras"].values()
    rx, skip = sum(x["received"] for x in c), sum(x["skipped"] for x in c)
    s = np.asarray(stalls or [0.0])
    return {
        "variant": variant,
        "cameras": cameras,
        "seconds": seconds,
        "received": rx,
        "skipped": skip,
        "skip_rate": round(skip / max(rx, 1), 4),
        "commit_seconds": [round(t, 3) for t, _ in commits],
        "commit_waiting": [n for _, n in commits],
        "longest_commit_s": round(max((t for t, _ in commits), default=0.0), 3),
        "longest_stall_s": round(float(s.max()), 3),
        "stalls_over_buffer": int((s > 0.4).sum()),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=90.0, help="seconds of each run (default 90)")
    ap.add_argument("--cameras", type=int, default=1, help="cameras watched at once, each the scene (default 1)")
    ap.add_argument("--repeats", type=int, default=1, help="pairs of runs, interleaved (default 1)")
    args = ap.parse_args(argv)
    from benchmarks.bench_live import _encode
    from reidkit.data.scene import generate_scene

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        scene = generate_scene(work / "sceneC", cams=1, ids=20, frames=300, size=(576, 768), fps=10.0)
        video = _encode(Path(scene.videos[0]), work / "sceneC.ts", int(args.seconds // 30) + 2)
        for r in range(args.repeats):
            for variant in ("spread", "burst"):
                row = run(video, args.cameras, args.seconds, variant, work / f"db-{variant}-{r}")
                rows.append(row)
                print(json.dumps(row), flush=True)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_watch_commits.json").write_text(json.dumps(rows, indent=1))
    lines = [
        "| samples embedded | cameras | frames received | skipped | samples waiting at each commit | longest commit (s) "
        "| longest frame-loop stall (s) | stalls > 0.4 s |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    lines += [
        f"| {'while waiting + spread (default)' if r['variant'] == 'spread' else 'at the commit (reference)'} | "
        f"{r['cameras']} | {r['received']} | {r['skipped']} ({r['skip_rate']:.1%}) | "
        f"{', '.join(map(str, r['commit_waiting']))} | {r['longest_commit_s']} | {r['longest_stall_s']} | "
        f"{r['stalls_over_buffer']} |"
        for r in rows
    ]
    (RESULTS / "bench_watch_commits.md").write_text(
        f"`python -m benchmarks.bench_watch_commits --seconds {args.seconds:g} --cameras {args.cameras} "
        f"--repeats {args.repeats}`\n\n" + "\n".join(lines) + "\n"
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
