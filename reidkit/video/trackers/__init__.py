"""Within-video trackers as parts: the Tracker protocol (reidkit.video.trackers.base) and a registry.

A tracker is one file with a class and one ``register_tracker("name", options=Dataclass)`` line;
``reidkit video --tracker NAME --tracker-option KEY=VALUE`` picks it and sets its options (read by
the typed loader: an unknown key is refused naming the nearest one), and a user registers their own
from a ``--plugin`` file the same way. A class that needs an optional dependency lists its modules (keys of
reidkit.utils.extras.EXTRAS) in a ``requires`` attribute: checked with the options, before any work. Built in:

- ``bytesort`` (the default: ahead of deep_sort and of every BoxMOT tracker on the 9 cells of
  benchmarks/bench_trackers.py, results/bench_trackers.md): ByteTrack's low-score second pass, OC-SORT's
  direction term and re-update after a gap, a fused IoU + appearance cost gated as a whole, Hybrid-SORT's
  height-modulated IoU for new tracks, a feature EMA, a Kalman filter on the box centre and size
  (reidkit.video.trackers.bytesort);
- ``deep_sort``: deep_sort_realtime's DeepSort on reidkit features (reidkit.video.trackers.deep_sort).

``DEFAULT_TRACKER`` is the one ``reidkit video`` and ``Settings`` use unless told otherwise.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from reidkit.config.options import options_class, part_options, read_options
from reidkit.registry import Registry
from reidkit.video.trackers.base import FrameTracks, Match, Tracker

TRACKERS: Registry[Any] = Registry("tracker", "--tracker")
DEFAULT_TRACKER = "bytesort"

__all__ = [
    "DEFAULT_TRACKER",
    "TRACKERS",
    "FrameTracks",
    "Match",
    "Tracker",
    "build_tracker",
    "register_tracker",
    "tracker_options",
]


def register_tracker(name: str, cls: Any = None, *, options: type | None = None, overwrite: bool = False) -> Any:
    """Register a tracker class (decorator or call); ``options`` (default: the class's ``options`` attribute)
    is the dataclass of its own keys, set with ``--tracker-option KEY=VALUE`` (``tracker.<name>.KEY``)."""

    return TRACKERS.register(name, cls, overwrite=overwrite, then=part_options("tracker", name, options))


def tracker_options(name: str, values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The resolved options of tracker `name` (its defaults overridden by `values`) as a plain dict;
    unknown keys and wrong types raise ReIDError naming ``tracker.<name>.KEY`` and the nearest key, and a
    tracker whose class ``requires`` a module that is not installed raises MissingExtra naming the extra
    (so a run checking its settings fails before any work)."""
    from reidkit.utils.extras import require

    for module in getattr(TRACKERS.get(name), "requires", ()):
        require(module, f"the {name} tracker")
    opts = read_options("tracker", name, dict(values or {}))
    return {} if opts is None else dataclasses.asdict(opts)


def build_tracker(name: str, values: Mapping[str, Any] | None = None) -> Any:
    """A new tracker `name` with its options (see :func:`tracker_options`)."""
    cls = TRACKERS.get(name)
    opts = read_options("tracker", name, dict(values or {}))
    tracker = cls() if opts is None and options_class("tracker", name) is None else cls(opts)
    for method in ("needs_features", "update", "live_ids", "state_dict", "load_state_dict"):
        if not callable(getattr(tracker, method, None)):
            from reidkit.errors import ReIDError

            raise ReIDError(
                f"tracker {name!r}: {type(tracker).__name__} has no {method}() (reidkit.video.trackers.base.Tracker)"
            )
    return tracker


# The built-in trackers, one line each in their files (imported after the registry exists).
from reidkit.video.trackers import bytesort, deep_sort  # noqa: E402,F401
