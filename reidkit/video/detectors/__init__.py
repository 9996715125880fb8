"""Person detectors as parts: the Detector protocol (reidkit.video.detectors.base) and a registry.

A detector is one file with a class and one ``register_detector("name", options=Dataclass)`` line;
``reidkit video --detector NAME --detector-option KEY=VALUE`` picks it and sets its options (read by
the typed loader: an unknown key is refused naming the nearest one), and a user registers their own
from a ``--plugin`` file the same way. Built in:

- ``motion`` (the default): background subtraction on fixed cameras (reidkit.video.detectors.motion);
- ``hog``: OpenCV's HOG people detector, for moving cameras (reidkit.video.detectors.hog);
- ``mot``: a MOTChallenge detections file per video (``--detections``; reidkit.video.detectors.mot);
- ``onnx``: a YOLOX / YOLOv5 / YOLOv8 / RT-DETR ONNX model, a file or a detector name of the weights
  catalogue (``--detector yolox_nano``: fetched and verified as ``--weights`` names are;
  reidkit.video.detectors.onnx and .families).

Jobs carry a picklable spec, ``{"kind": NAME, "options": {...}}`` (:func:`detector_spec`), and each
process builds its detector from it (:func:`build_detector`).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Mapping

from reidkit.config.options import options_class, part_options, read_options
from reidkit.errors import OptionError, ReIDError
from reidkit.registry import Registry
from reidkit.video.detectors.base import Detections, Detector

DETECTORS: Registry[Any] = Registry("detector", "--detector")
DEFAULT_DETECTOR = "motion"

__all__ = [
    "DEFAULT_DETECTOR",
    "DETECTORS",
    "Detections",
    "Detector",
    "build_detector",
    "detector_options",
    "detector_spec",
    "register_detector",
    "resolve_detector",
]

# The pre-registry spec form (reidkit.video.pipeline before the registry, and its stored settings, which
# read a hog spec's "scale"): top-level keys -> the part's option.
_LEGACY = {
    "hog": {"min_height": "min_height", "scale": "detect_scale"},
    "onnx": {"path": "path", "conf": "conf", "input_size": "input_size", "person_class": "person_class"},
    "mot": {"path": "path"},
}


def register_detector(name: str, cls: Any = None, *, options: type | None = None, overwrite: bool = False) -> Any:
    """Register a detector class (decorator or call); ``options`` (default: the class's ``options`` attribute)
    is the dataclass of its own keys, set with ``--detector-option KEY=VALUE`` (``detector.<name>.KEY``)."""

    return DETECTORS.register(name, cls, overwrite=overwrite, then=part_options("detector", name, options))


def detector_options(name: str, values: Mapping[str, Any] | None = None) -> Any:
    """The options dataclass of detector `name` built from `values` (None when it declares none); unknown keys
    and wrong types raise ReIDError naming ``detector.<name>.KEY`` and the nearest key."""
    DETECTORS.get(name)
    return read_options("detector", name, dict(values or {}))


def detector_spec(name: str, values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The picklable spec of detector `name` with option `values` (checked now: a bad key fails before any work).

    The built-ins that had one also carry the pre-registry top-level keys (hog: min_height, scale; onnx: path,
    conf, input_size, person_class; mot: path), which reidkit.video.pipeline's stored settings read."""
    opts = detector_options(name, values)
    given = {k: v for k, v in dict(values or {}).items()}
    spec: dict[str, Any] = {"kind": name, "options": given}
    if opts is not None:
        full = dataclasses.asdict(opts)
        for legacy, key in _LEGACY.get(name, {}).items():
            value = full[key]
            spec[legacy] = list(value) if isinstance(value, tuple) else value
    return spec


def _kind(spec: Mapping[str, Any]) -> str:
    kind = spec.get("kind")
    if not isinstance(kind, str):
        raise ReIDError(f"detector spec: expected a 'kind' naming a detector, got {dict(spec)!r}")
    return kind


def build_detector(spec: Mapping[str, Any], video: str | os.PathLike | None = None) -> Any:
    """The detector a spec names (see :func:`detector_spec`; the pre-registry form is read too); a per-video
    one (``per_video``, the motion detector) models `video`."""
    kind = _kind(spec)
    cls = DETECTORS.get(kind)
    values = {key: spec[legacy] for legacy, key in _LEGACY.get(kind, {}).items() if legacy in spec}
    if values.get("input_size") is not None:
        values["input_size"] = tuple(values["input_size"])
    values.update(spec.get("options") or {})
    opts = read_options("detector", kind, values)
    video_arg = None if video is None else os.fspath(video)
    if hasattr(cls, "from_options"):
        det = cls.from_options(opts, video_arg)
    else:  # a plug-in without from_options: built like a tracker, cls(options) or cls()
        det = cls() if opts is None and options_class("detector", kind) is None else cls(opts)
    if not callable(det):
        raise ReIDError(
            f"detector {kind!r}: {type(det).__name__} is not callable as det(frame, index) "
            "(reidkit.video.detectors.base.Detector)"
        )
    return det


def is_per_video(spec: Mapping[str, Any]) -> bool:
    """True when the detector of `spec` is built for each video (it models that video), False when shared."""
    return bool(getattr(DETECTORS.get(_kind(spec)), "per_video", False))


def unknown_detector(text: str) -> ReIDError:
    """The error for --detector TEXT that is neither a file, a registered detector nor a catalogue detector."""
    import difflib

    from reidkit.models.zoo import detector_names

    names = [*DETECTORS.names(), *detector_names()]
    close = difflib.get_close_matches(text, names, n=1, cutoff=0.5)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return OptionError(
        "detector",
        f"{text!r} is neither a file, a detector nor a catalogue detector{hint}; "
        f"detectors: {', '.join(DETECTORS.names())}; catalogue: "
        f"{', '.join(detector_names())} (reidkit weights list)",
    )


def resolve_detector(text: str | os.PathLike, values: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], str]:
    """(spec, name stored with a video's state) of ``--detector TEXT``: a registered detector's name, a detector
    name of the weights catalogue (an ONNX model fetched and verified by name), or an ONNX file."""
    from reidkit.models.zoo import detector_entry

    text = os.fspath(text)
    path = Path(text).expanduser()
    path_like = "/" in text or os.sep in text or path.suffix.lower() == ".onnx"
    if text in DETECTORS and not (path_like and path.is_file()):
        return detector_spec(text, values), text
    entry = None if path_like else detector_entry(text)
    if entry is not None:
        return detector_spec("onnx", {**dict(values or {}), "path": text}), f"onnx:{text}"
    if not path.is_file():
        raise unknown_detector(text)
    return detector_spec("onnx", {**dict(values or {}), "path": str(path.absolute())}), f"onnx:{path.name}"


# The built-in detectors, one line each in their files (imported after the registry exists).
from reidkit.video.detectors import hog, mot, motion, onnx  # noqa: E402,F401
