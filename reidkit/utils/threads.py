"""Thread counts that behave on a shared machine.

PyTorch, faiss and OpenCV each start a pool as large as the machine, and OpenMP's default wait
policy spins: a thread waiting at a barrier burns its core for a while before it sleeps. Two such
pools (or one beside any other busy process) on two cores spend most of their time spinning against
each other; `reidkit demo` measured 5-10x slower beside one busy process (issue 19).

``configure_threads(n)`` is called once by the CLI before any verb (``reidkit --threads N``):

- n: the argument, else $REIDKIT_THREADS, else $OMP_NUM_THREADS, else the cores this process may
  run on (``os.sched_getaffinity``; a container's CPU set, not the host's cores);
- the environment (read by OpenMP/MKL when torch or faiss load, and by child processes):
  OMP_NUM_THREADS = MKL_NUM_THREADS = n and OMP_WAIT_POLICY=PASSIVE (waiting threads sleep
  instead of spinning);
- libraries already imported get the same count now (torch intra-op n, inter-op 1; faiss; OpenCV)
  when n was asked for (argument or $REIDKIT_THREADS); otherwise an embedding program that already
  set them (a test suite, a notebook) keeps its own counts, through every later call as well.

Pipeline stages that run side by side (reidkit.video) give OpenCV one thread each
(``opencv_threads(1)``): the stages are the parallelism.
"""

from __future__ import annotations

import os
import sys

from reidkit.errors import OptionError, ReIDError

_configured: int | None = None
_kept = False  # the first call, asked for nothing, found torch or faiss loaded: their counts stand, every call


def available_cores() -> int:
    """Cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    if v is None or not v.strip():
        return None
    try:
        n = int(v)
    except ValueError:
        raise ReIDError(f"${name}: expected a whole number of threads, got {v!r}") from None
    if n < 1:
        raise ReIDError(f"${name}: must be >= 1, got {v!r}")
    return n


def configure_threads(n: int | None = None) -> int:
    """Set torch / OpenMP / MKL / faiss / OpenCV thread counts to `n` (see the module docstring); returns n."""
    global _configured, _kept
    if n is not None and int(n) < 1:
        raise OptionError("threads", f"must be >= 1, got {n}")
    asked = int(n) if n is not None else _env_int("REIDKIT_THREADS")
    n = asked or _env_int("OMP_NUM_THREADS") or available_cores()
    os.environ["OMP_NUM_THREADS"] = str(n)
    os.environ["MKL_NUM_THREADS"] = str(n)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if asked is None and (_kept or (_configured is None and any(m in sys.modules for m in ("torch", "faiss")))):
        # not only the first call: a second `reidkit` verb run in the same process (cli.main from a test suite
        # or a notebook) set torch to the count the first one had put in $OMP_NUM_THREADS
        _configured, _kept = n, True
        return n
    _kept = False
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(n)
        if _configured is None:
            try:
                torch.set_num_interop_threads(1)
            except RuntimeError:  # already started by earlier work: keep it
                pass
    if "faiss" in sys.modules:
        import faiss

        faiss.omp_set_num_threads(n)
    if "cv2" in sys.modules:
        opencv_threads(n)
    else:
        os.environ["OPENCV_FOR_THREADS_NUM"] = str(n)
    _configured = n
    return n


def configured_threads() -> int:
    """The count set by configure_threads, else what the environment asks, else the available cores."""
    return _configured or _env_int("OMP_NUM_THREADS") or available_cores()


def opencv_threads(n: int) -> None:
    """OpenCV's own pool size (process-wide)."""
    import cv2

    cv2.setNumThreads(int(n))
