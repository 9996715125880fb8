"""Helpers shared by the benchmarks: timing, peak memory in a fresh subprocess, results JSON."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def python() -> str:
    """The interpreter for the benchmarks' child processes: $PYTHON, the one gpu_run.sh runs its steps with
    (the tests point it at a fork-server shim), else this process's own."""
    return os.environ.get("PYTHON") or sys.executable


def timed(fn: Callable[[], Any], repeats: int = 1) -> tuple[float, Any]:
    """Best wall time in seconds over `repeats` calls of fn, and the last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def vm_hwm_mb() -> float:
    """Peak RSS from /proc/self/status (VmHWM), in MiB; falls back to getrusage."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return peak_rss_mb()


def children_peak_rss_mb() -> float:
    """Largest peak RSS among finished child processes (DataLoader workers), in MiB."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0


def gpu_peak_mb(device: Any) -> float | None:
    """torch.cuda.max_memory_allocated in MiB, or None off CUDA."""
    import torch

    if getattr(device, "type", str(device)) != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def run_isolated(module: str, args: list[str], timeout: float | None = None) -> dict:
    """Run `python -m module args...` in a fresh process; it must print one JSON line last.

    A fresh process per measurement is the only way to get a clean peak RSS for that run.
    """
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [python(), "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=root,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{module} {args} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine_info() -> dict:
    """A short description of where the numbers were taken."""
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg_1m": os.getloadavg()[0],
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_result(name: str, payload: dict) -> Path:
    """Write benchmarks/results/<name>.json (with machine info) and return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    payload = {"benchmark": name, "machine": machine_info(), **payload}
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    return path


def worker_main(measure: Callable[[dict], dict], argv: list[str] | None, description: str) -> None:
    """Entry of a measurement worker: run ``measure(params)`` and print its result as the last JSON line."""
    import argparse

    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--params", required=True, help="JSON dict of parameters (see measure)")
    args = ap.parse_args(argv)
    print(json.dumps(measure(json.loads(args.params)), default=float))
    sys.stdout.flush()
