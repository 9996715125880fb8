"""`reidkit demo` and `reidkit video` alone and beside a CPU-bound process, before and after the thread policy.

For each command and each tree (``--before PATH``: a checkout of the commit before
reidkit.utils.threads, run with the environment it had, no OMP_NUM_THREADS; ``after``: this tree,
whose CLI calls configure_threads), the command runs twice back to back: alone ("quiet"), then with
``python -c "while True: pass"`` running beside it for its whole duration ("busy"). Reported: both
wall times and busy / quiet. Not a test; the machine's other load is reported beside the figures.

    python -m benchmarks.bench_threads --before /tmp/vb [--video VIDEO] [--skip-demo]

Writes benchmarks/results/bench_threads.md (and .json).
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

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
CODE = "import sys; from reidkit.cli import main; sys.exit(main(sys.argv[1:]))"


def timed(cmd: list[str], env: dict, busy: bool, clean: Path) -> float:
    """Wall seconds of `cmd`, optionally beside a spinning process."""
    shutil.rmtree(clean, ignore_errors=True)
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        t0 = time.perf_counter()
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    finally:
        if spin is not None:
            spin.kill()
            spin.wait()
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}:\n{p.stderr[-2000:]}")
    return wall


def main(argv: list[str] | None = None) -> None:
    """Run the pairs; write the table."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", required=True, help="tree with the code before the thread policy")
    ap.add_argument("--video", default=None, help="a video for `reidkit video` (skipped when absent)")
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--demo-args", default="", help="extra `reidkit demo` arguments (overrides)")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench_threads_"))
    rows = []
    trees = [("before", Path(args.before)), ("after", ROOT)]
    cmds = []
    if not args.skip_demo:
        cmds.append(("demo", lambda out: ["demo", "--out", str(out), *args.demo_args.split()]))
    if args.video:
        cmds.append(("video", lambda out: ["video", args.video, "--db", str(out)]))
    load0 = os.getloadavg()
    try:
        for name, make in cmds:
            for tag, tree in trees:
                env = {
                    k: v
                    for k, v in os.environ.items()
                    if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")
                }
                env["PYTHONPATH"] = str(tree)
                out = work / f"{name}_{tag}"
                cmd = [sys.executable, "-c", CODE, *make(out)]
                quiet = timed(cmd, env, False, out)
                busy = timed(cmd, env, True, out)
                rows.append({"command": name, "tree": tag, "quiet_s": quiet, "busy_s": busy, "ratio": busy / quiet})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load1 = os.getloadavg()
    lines = [
        "# Beside a busy process: `reidkit demo` / `reidkit video`, before and after the thread policy",
        "",
        f"Command: `python -m benchmarks.bench_threads {' '.join(argv or sys.argv[1:])}`; "
        f"{len(os.sched_getaffinity(0))} cores; 1-min load average {load0[0]:.1f} before, {load1[0]:.1f} after "
        "(a shared machine: other processes ran throughout, so 'quiet' means without OUR extra busy process).",
        "",
        "| command | code | quiet s | beside a busy process s | ratio |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['command']} | {r['tree']} | {r['quiet_s']:.1f} | {r['busy_s']:.1f} | {r['ratio']:.2f}x |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_threads.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "bench_threads.json").write_text(json.dumps({"rows": rows, "load": [load0, load1]}, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
