"""``onnx``: an ONNX person detector of a known family (reidkit.video.detectors.families), run by onnxruntime.

``path`` is a model file or a detector name of the weights catalogue (``reidkit weights list``:
fetched into the cache and verified as ``--weights`` names are; reidkit.models.zoo). The frame is
fitted into the model's input as its family wants it, the family's decode gives boxes and person
scores, boxes are mapped back to frame pixels, those above ``conf`` kept and non-maximum suppression
(OpenCV's NMSBoxes) removes duplicates (a query-based RT-DETR needs none: it is skipped). A float16
model (its declared input type) gets float16 input; outputs are read as float32.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from reidkit.errors import OptionError
from reidkit.video.detect import nms
from reidkit.video.detectors import register_detector
from reidkit.video.detectors.base import Detections, empty
from reidkit.video.detectors.families import FAMILIES, PREPROCESS, decode, detect_family, letterbox, unletterbox


@dataclass
class OnnxOptions:
    """The ONNX detector's options (``--detector-option KEY=VALUE``)."""

    path: str = ""  # a .onnx file, or a detector name of the weights catalogue
    conf: float = 0.25  # the lowest person score kept
    iou: float = 0.45  # non-maximum suppression overlap
    person_class: int = 0  # the class index of 'person' (COCO: 0)
    input_size: tuple[int, int] | None = None  # H, W for a model without a fixed input size
    family: str = "auto"  # auto (from the output signature) | yolox | yolox_decoded | yolov5 | yolov8 | rtdetr
    threads: int = 1  # onnxruntime intra-op threads

    def check(self) -> None:
        """OptionError naming the key for a value out of range."""
        if self.family not in ("auto", *FAMILIES):
            raise OptionError(
                "detector.onnx.family", f"expected auto or one of {', '.join(FAMILIES)}, got {self.family!r}"
            )
        if not (0.0 <= self.conf <= 1.0) or not (0.0 < self.iou <= 1.0):
            raise OptionError("detector.onnx.conf", f"conf in [0, 1] and iou in (0, 1], got {self.conf}, {self.iou}")
        if self.person_class < 0 or self.threads < 1:
            raise OptionError("detector.onnx.person_class", "person_class >= 0 and threads >= 1")


def resolve_model(path: str | os.PathLike, sha256: str | None = None) -> tuple[Path, Any]:
    """(local file, catalogue entry or None): a detector name of the catalogue is fetched and verified."""
    from reidkit.models.zoo import detector_entry, resolve_weights

    entry = detector_entry(os.fspath(path))
    local = Path(resolve_weights(os.fspath(path), sha256=sha256, kind="detector") if entry else path).expanduser()
    if not local.is_file():
        from reidkit.video.detectors import unknown_detector

        raise unknown_detector(os.fspath(path))
    return local, entry


@register_detector("onnx", options=OnnxOptions)
class OnnxDetector:
    """An ONNX detector of one of the families (see the module docstring) keeping class `person_class`."""

    per_video = False

    @classmethod
    def from_options(cls, options: OnnxOptions | None, video: str | None = None) -> "OnnxDetector":
        """The detector with `options`."""
        o = options or OnnxOptions()
        if not o.path:
            raise OptionError("detector.onnx.path", "give the model: --detector FILE.onnx or a catalogue name")
        return cls(
            o.path,
            conf=o.conf,
            iou=o.iou,
            person_class=o.person_class,
            input_size=o.input_size,
            family=o.family,
            threads=o.threads,
        )

    def __init__(
        self,
        path: str | os.PathLike,
        conf: float = 0.25,
        iou: float = 0.45,
        person_class: int = 0,
        input_size: tuple[int, int] | None = None,
        threads: int | None = None,
        family: str = "auto",
    ) -> None:
        self.path, entry = resolve_model(path)
        from reidkit.export import ort_session

        self.session = ort_session(self.path, threads, "detector")
        inputs = self.session.get_inputs()
        inp = inputs[0]
        self.input_name = inp.name
        self.dtype = np.float16 if "float16" in str(inp.type) else np.float32
        shape = list(inp.shape)
        if input_size is None and entry is not None and getattr(entry, "input_size", None):
            input_size = tuple(entry.input_size)
        if input_size is None:
            if len(shape) != 4 or not all(isinstance(v, int) for v in shape[2:]):
                raise OptionError(
                    "detector",
                    f"input {inp.name} has no fixed H x W ({shape}); give the input size (--detector-size HxW)",
                    value=self.path,
                )
            input_size = (int(shape[2]), int(shape[3]))
        self.input_size = (int(input_size[0]), int(input_size[1]))
        # RT-DETR deploy exports take the size the boxes are scaled to: ours (W, H) gives input pixels
        self.sizes_input = next((i for i in inputs[1:] if "size" in i.name.lower()), None)
        self.conf, self.iou, self.person_class = float(conf), float(iou), int(person_class)
        if family == "auto" and entry is not None and entry.arch in FAMILIES:
            family = entry.arch
        if family == "auto":
            outs = [(o.name, o.shape) for o in self.session.get_outputs()]
            static = all(isinstance(v, int) for _, s in outs[:1] for v in s)
            named = {n.lower() for n, _ in outs} >= {"boxes", "scores"}
            family = detect_family(self.input_size, outs, self.path) if static or named else "auto"
        self.family = family  # "auto": read from the first output's real shape

    def run(self, blob: np.ndarray) -> dict[str, np.ndarray]:
        """The model's raw outputs by name for one input blob."""
        feed = {self.input_name: blob}
        if self.sizes_input is not None:
            kind = np.int64 if "int64" in str(self.sizes_input.type) else np.float32
            feed[self.sizes_input.name] = np.array([[self.input_size[1], self.input_size[0]]], kind)
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(None, feed)))

    def __call__(self, frame: np.ndarray, index: int = 0) -> Detections:
        """Person boxes (x1, y1, x2, y2 in frame pixels) and scores of a BGR frame."""
        family = self.family if self.family != "auto" else "yolov8"
        blob, geo = letterbox(frame, self.input_size, PREPROCESS[family], self.dtype)
        outputs = self.run(blob)
        if self.family == "auto":  # dynamic output shapes: the first real one decides, and preprocessing with it
            self.family = detect_family(self.input_size, [(k, v.shape) for k, v in outputs.items()], self.path)
            if PREPROCESS[self.family] != PREPROCESS[family]:
                blob, geo = letterbox(frame, self.input_size, PREPROCESS[self.family], self.dtype)
                outputs = self.run(blob)
        boxes, scores = decode(self.family, outputs, self.input_size, self.person_class, self.path)
        m = np.isfinite(scores) & (scores >= self.conf)
        if not m.any():
            return empty()
        boxes = unletterbox(boxes[m], geo, frame.shape[:2])
        sc = scores[m].astype(np.float32)
        ok = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, sc = boxes[ok], sc[ok]
        if self.family != "rtdetr":
            keep = nms(boxes, sc, self.conf, self.iou)
            boxes, sc = boxes[keep], sc[keep]
        return boxes.astype(np.float32), sc
