"""Cameras of ``reidkit watch``: the cameras file, camera names, durations, and the detectors that run on a stream.

A camera is a name (the gallery's camera), a source (a stream URL or a file played at its own rate), optionally its
frame rate and, for replays and tests, a MOTChallenge detections file numbered as the stream's frames.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from reidkit.errors import OptionError, ReIDError
from reidkit.video.decode import safe_name


@dataclass(frozen=True)
class Camera:
    """One live camera: its name (the gallery's camera), its source (URL or file) and, optionally, its rate."""

    name: str
    url: str
    fps: float | None = None
    detections: str | None = None  # a MOTChallenge file numbered as the stream's frames (replays, tests)


def read_cameras(path: str | os.PathLike) -> tuple[list[Camera], Any]:
    """Cameras (and links, or None) of a cameras file: ``cameras: [{name, url, fps?}]``, ``links: [...]``
    (the links file's form, reidkit.cluster.identities.load_links); one ReIDError naming the file and entry."""
    import yaml

    p = Path(path).expanduser()
    try:
        data = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise ReIDError(f"cameras file {p}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ReIDError(f"cameras file {p}: not YAML ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("cameras"), list) or not data["cameras"]:
        raise ReIDError(f"cameras file {p}: expected a mapping with a non-empty list 'cameras' (each: name, url)")
    unknown = sorted(set(data) - {"cameras", "links", "max_gap"})
    if unknown:
        raise ReIDError(f"cameras file {p}: unknown key(s) {unknown} (expected cameras, links, max_gap)")
    cams = []
    for i, c in enumerate(data["cameras"]):
        if not isinstance(c, dict) or not isinstance(c.get("name"), str) or not isinstance(c.get("url"), str):
            raise ReIDError(f"cameras file {p}: cameras[{i}] needs a 'name' and a 'url' (strings), got {c!r}")
        extra = sorted(set(c) - {"name", "url", "fps", "detections"})
        if extra:
            raise ReIDError(
                f"cameras file {p}: cameras[{i}] has unknown key(s) {extra} (expected name, url, fps, detections)"
            )
        fps = c.get("fps")
        if fps is not None and (not isinstance(fps, (int, float)) or not 0 < float(fps) <= 1000):
            raise ReIDError(f"cameras file {p}: cameras[{i}].fps must be a number in (0, 1000], got {fps!r}")
        url = c["url"] if "://" in c["url"] else str((p.parent / c["url"]).resolve())  # files: relative to the file
        det = c.get("detections")
        if det is not None:
            det = str((p.parent / str(det)).resolve())
            if not Path(det).is_file():
                raise ReIDError(f"cameras file {p}: cameras[{i}].detections: no such file {det}")
        cams.append(Camera(c["name"], url, None if fps is None else float(fps), det))
    check_cameras(cams)
    links = {k: data[k] for k in ("links", "max_gap") if k in data} or None
    return cams, links


def check_cameras(cams: Sequence[Camera]) -> None:
    """One error for repeated or unusable camera names."""
    names = [c.name for c in cams]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise OptionError("cameras", f"camera names must be unique, repeated: {dup}")
    bad = [n for n in names if not n or safe_name(n) != n]
    if bad:
        raise OptionError("cameras", f"camera names may hold letters, digits, _ . - only, got {bad}")


class OnlineMotion:
    """The motion detector (reidkit.video.detectors.motion) on a stream that cannot be read ahead: the
    background is the per-pixel median of the last `samples` frames, sampled every ``block // samples``
    frames (every frame until `samples` are held), and follows the scene as it changes."""

    def __init__(self, **options: Any) -> None:
        from reidkit.video.detectors.motion import MotionDetector

        det = MotionDetector("", **options)
        det.background = self.background  # type: ignore[method-assign]  # the stream's own background
        self.det, self.seen = det, 0
        self.ring: list[np.ndarray] = []
        self.median: np.ndarray | None = None

    def background(self, index: int) -> np.ndarray:
        """The current background (the median of the held samples)."""
        assert self.median is not None  # __call__ takes a sample before the detector asks for it
        return self.median

    def __call__(self, frame: np.ndarray, index: int = 0) -> Any:
        every = max(1, self.det.block // self.det.samples)
        if len(self.ring) < self.det.samples or self.seen % every == 0:
            self.ring = [*self.ring, self.det._small(frame)][-self.det.samples :]
            self.median = np.median(np.stack(self.ring), axis=0).astype(np.float32)
        self.seen += 1
        return self.det(frame, index)


def detector_factory(name: str | None, options: dict[str, Any] | None = None) -> tuple[Callable[[Camera], Any], str]:
    """(camera -> detector, the name stored with each session) for `name` (None: motion, the default):
    motion learns each stream's background as it runs; any other registered or catalogue detector is built
    once per camera from its spec."""
    from reidkit.video.detectors import build_detector, detector_options, resolve_detector

    if name == "mot":  # each camera's own detections file
        from reidkit.video.detectors.mot import MotDetections

        return (lambda cam: MotDetections(cam.detections)), "mot"
    if name in (None, "motion"):
        opts = detector_options("motion", options or {})
        values = dataclasses.asdict(opts) if opts is not None else {}
        return (lambda _cam: OnlineMotion(**values)), "motion(live)"
    spec, stored = resolve_detector(str(name), options or {})
    return (lambda _cam: build_detector(spec)), stored


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str | float, what: str = "duration") -> float:
    """Seconds of ``90``, ``45s``, ``30m``, ``12h`` or ``7d``; OptionError naming `what` otherwise."""
    raw = str(text).strip().lower()
    unit = _UNITS.get(raw[-1:], None) if raw else None
    number = raw[:-1] if unit is not None else raw
    try:
        value = float(number) * (unit or 1.0)
    except ValueError:
        value = float("nan")
    if not (np.isfinite(value) and value > 0):
        raise OptionError(what, f"expected a positive duration such as 90, 45s, 30m, 12h or 7d, got {text!r}")
    return value
