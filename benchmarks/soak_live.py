"""A soak of `reidkit watch` (issue 32): a looped scene served live by ffmpeg for --minutes, retention on.

Every 30 s it records the watch process's resident memory and open files (from /proc), frames received /
processed / skipped and the gallery's tracklets; at the end it stops watch with SIGTERM and runs
`reidkit index check`. Flat means: the last third's RSS and open files within 10 % (RSS) and 4 files of
the middle third's. Writes results/soak_live.{md,json}.

    python -m benchmarks.soak_live --minutes 30
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.bench_live import _encode, _health, _port, _serve

RESULTS = Path(__file__).resolve().parent / "results"


def _proc_figures(pid: int) -> tuple[float, int]:
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--fps", type=float, default=25.0, help="the stream's rate (default 25)")
    ap.add_argument("--retain", default="2m")
    args = ap.parse_args(argv)
    from reidkit.data.scene import generate_scene

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        generate_scene(work / "scene", cams=1, ids=8, frames=250, fps=args.fps, speed=1.0)
        # the camera's stream (MPEG-2 in MPEG-TS, what _serve copies), one seamless file longer than the run
        loops = int(args.minutes * 60 * args.fps // 250) + 2
        stream = _encode(work / "scene" / "cam1" / "cam1.avi", work / "stream.ts", loops)
        port, status_port = _port(), _port()
        server = _serve(stream, port)
        db = work / "db"
        cmd = [
            sys.executable,
            "-m",
            "reidkit.cli",
            "watch",
            f"http://127.0.0.1:{port}/",
            "--db",
            str(db),
            "--retain",
            args.retain,
            "--commit-every",
            "2",
            "--identities-every",
            "30",
            "--status-port",
            str(status_port),
            "--json",
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        samples = []
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < args.minutes * 60:
                time.sleep(30)
                if proc.poll() is not None:
                    raise SystemExit(f"watch exited early with {proc.returncode}")
                if server.poll() is not None:
                    raise SystemExit(f"the stream's server (ffmpeg) exited with {server.returncode}: nothing to soak")
                rss, fds = _proc_figures(proc.pid)
                h = _health(status_port) or {"cameras": {}}
                c = h["cameras"].get("cam1", {})
                disk = sum(f.stat().st_size for f in db.rglob("*") if f.is_file()) / 2**20 if db.exists() else 0.0
                samples.append(
                    {
                        "minute": round((time.monotonic() - t0) / 60, 2),
                        "rss_mb": round(rss, 1),
                        "gallery_mb": round(disk, 1),
                        "open_files": fds,
                        "received": c.get("received"),
                        "processed": c.get("processed"),
                        "skipped": c.get("skipped"),
                        "tracklets": c.get("tracklets"),
                        "deleted": h.get("deleted"),
                        "identities": h.get("identities"),
                    }
                )
                print(json.dumps(samples[-1]), flush=True)
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                proc.kill()
            server.kill()
        check = subprocess.run(
            [sys.executable, "-m", "reidkit.cli", "index", "check", "--db", str(db)], capture_output=True, text=True
        )
    n = len(samples)
    if not samples or not samples[-1]["received"]:
        raise SystemExit("the watch received no frame: nothing was soaked")
    mid, last = samples[n // 3 : 2 * n // 3] or samples, samples[2 * n // 3 :] or samples
    rss_mid, rss_last = max(s["rss_mb"] for s in mid), max(s["rss_mb"] for s in last)
    fd_mid, fd_last = max(s["open_files"] for s in mid), max(s["open_files"] for s in last)
    disk_mid, disk_last = max(s["gallery_mb"] for s in mid), max(s["gallery_mb"] for s in last)
    flat = rss_last <= 1.10 * rss_mid and fd_last <= fd_mid + 4 and disk_last <= 1.25 * disk_mid + 1
    report = {
        "minutes": args.minutes,
        "fps": args.fps,
        "retain": args.retain,
        "rss_mb_middle_third": rss_mid,
        "rss_mb_last_third": rss_last,
        "open_files_middle_third": fd_mid,
        "open_files_last_third": fd_last,
        "gallery_mb_middle_third": disk_mid,
        "gallery_mb_last_third": disk_last,
        "flat": flat,
        "watch_exit": proc.returncode,
        "index_check_exit": check.returncode,
        "index_check": check.stdout.strip().splitlines()[-3:],
        "samples": samples,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "soak_live.json").write_text(json.dumps(report, indent=1))
    (RESULTS / "soak_live.md").write_text(
        f"`python -m benchmarks.soak_live --minutes {args.minutes:g} --fps {args.fps:g} --retain {args.retain}`\n\n"
        f"| | middle third | last third |\n|---|---:|---:|\n| RSS (MB, max) | {rss_mid} | {rss_last} |\n"
        f"| open files (max) | {fd_mid} | {fd_last} |\n| gallery on disk (MB, max) | {disk_mid} | {disk_last} |\n\nflat: {flat}; watch exit {proc.returncode} (SIGTERM); "
        f"index check exit {check.returncode}; frames received {samples[-1]['received'] if samples else 0}, "
        f"skipped {samples[-1]['skipped'] if samples else 0}, tracklets deleted by retention "
        f"{samples[-1]['deleted'] if samples else 0}\n"
    )
    print(json.dumps({k: v for k, v in report.items() if k != "samples"}, indent=1))
    return 0 if flat and check.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
