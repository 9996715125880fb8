"""Progress of the long steps: a tqdm bar on a terminal, one line per step in logs and pipes.

The one mechanism for every step that can take more than a few seconds: training's epochs
(:class:`reidkit.engine.handlers.Progress`), feature extraction, evaluation, ranked-list
pictures, the demo's steps.

- :func:`bar`: the tqdm bar on stderr, shown only when stderr is a terminal (``disable=None``);
- :func:`step`: a bar while the step runs and, when it ends, one line on the ``reidkit.train``
  logger (``extract: 1,234 images done in 12.3 s``), so it lands in the run's train.log and, when
  echoed, on stderr;
- :func:`console_logging`: the stderr echo of that logger the CLI verbs install;
  :func:`console_progress`: the same for the duration of a Python API call, unless the caller
  configured the logger already. Under torchrun only rank 0 shows anything.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["bar", "console_logging", "console_progress", "is_main_process", "log", "step", "to_stderr"]

# The run's console channel: the CLI echoes it on stderr, a training run also writes it to train.log.
log = logging.getLogger("reidkit.train")


def to_stderr(msg: str) -> None:
    """One progress line on stderr, flushed: the default ``progress`` callback of the gallery and video writers."""
    print(msg, file=sys.stderr, flush=True)


def is_main_process() -> bool:
    """Rank 0 under torchrun (``RANK``), always true otherwise."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def bar(total: int | None, desc: str, unit: str = "it", show: bool = True) -> Any:
    """A tqdm bar on stderr; disabled (a no-op object) when stderr is not a terminal or ``show`` is false."""
    from tqdm.auto import tqdm

    # disable=None: a bar on terminals, nothing in logs and pipes.
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        leave=False,
        disable=None if show else True,
        dynamic_ncols=True,
        file=sys.stderr,
    )


@contextmanager
def step(desc: str, total: int | None = None, unit: str = "images", show: bool = True) -> Iterator[Any]:
    """One long step: yields its bar (``update(n)``); on success logs ``desc: N unit done in T s``.

    ``show=False`` (or a rank other than 0) makes it silent: callers pass their own switch.
    """
    show = show and is_main_process()
    pbar = bar(total, desc, unit, show)
    t0 = time.perf_counter()
    try:
        yield pbar
    finally:
        pbar.close()
    if show:
        count = f"{total:,} {unit} " if total is not None else ""
        log.info("%s: %sdone in %.1f s", desc, count, time.perf_counter() - t0)


def console_logging(show_iterations: bool | None = None) -> logging.Handler:
    """Echo the run's log on stderr (per-iteration lines only without a progress bar)."""
    if show_iterations is None:
        show_iterations = not sys.stderr.isatty()
    for old in [h for h in log.handlers if getattr(h, "_reidkit_console", False)]:
        log.removeHandler(old)  # one console echo, however often a command runs in a process
    handler = logging.StreamHandler(sys.stderr)
    # a marker on the stdlib handler (read back above), not an attribute logging.Handler declares
    handler._reidkit_console = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(lambda record: not getattr(record, "file_only", False))
    if not show_iterations:
        handler.addFilter(lambda record: not getattr(record, "per_iteration", False))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


@contextmanager
def console_progress() -> Iterator[None]:
    """From Python, the progress lines (steps, epochs, validation; without a terminal's bar, training's
    lines every ``solver.log_period`` iterations) on stderr for the duration of a call,
    unless the caller configured the ``reidkit.train`` logger or an echo on this stderr is there already
    (a CLI verb's, an outer call's); rank 0 only under torchrun."""
    echoes = [h for h in log.handlers if getattr(h, "_reidkit_console", False)]
    own = [h for h in log.handlers if h not in echoes]
    if own or any(getattr(h, "stream", None) is sys.stderr for h in echoes) or not is_main_process():
        yield
        return
    handler = console_logging()  # a training run's lines every solver.log_period iterations when there is no bar
    try:
        yield
    finally:
        log.removeHandler(handler)
