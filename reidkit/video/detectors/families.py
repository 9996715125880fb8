"""ONNX detector families: how each lays out its output, and how its boxes are read back (pure functions).

A family is recognised from the model's output signature (``detect_family``), or named with the
``family`` option when two readings are possible:

- ``yolox`` (Ge et al., "YOLOX: Exceeding YOLO Series in 2021"; the Megvii-BaseDetection ONNX
  releases, exported without decoding): one output ``[1, N, 5 + nc]`` with N the number of grid
  cells of strides 8, 16 and 32 at the input size (8400 at 640 x 640, 3549 at 416 x 416). A row is
  (dx, dy, log w, log h, objectness, class scores) in units of its cell's stride: the box centre is
  ``(d + cell) * stride`` and its size ``exp(log) * stride``; the score is objectness x class
  score. Its input is BGR 0..255, the frame resized into the top-left corner (grey 114 padding), as
  YOLOX's own ``preproc`` and ``demo_postprocess`` (demo/ONNXRuntime) do.
- ``yolox_decoded``: a YOLOX export with the decode inside (``--decode_in_inference``): the same shape
  and input as ``yolox`` but rows of (cx, cy, w, h) in input pixels; it reads like the raw grid, so
  name it (``family=yolox_decoded``).
- ``yolov5`` (YOLOv5/v7 exports): ``[1, N, 5 + nc]`` of decoded (cx, cy, w, h) in input pixels,
  objectness, class scores (N = 3 anchors per cell); score objectness x class score.
- ``yolov8`` (YOLOv8/v11 exports): ``[1, 4 + nc, N]`` channels first, (cx, cy, w, h) then class
  scores, no objectness.
- ``rtdetr`` (Zhao et al., "DETRs Beat YOLOs on Real-time Object Detection"): a set of queries, no
  NMS needed. Either outputs named ``boxes`` and ``scores`` (and ``labels``; the RT-DETR deploy
  export, with an ``orig_target_sizes`` input given the input's W, H so boxes come back as x1 y1 x2 y2
  input pixels) or one ``[1, Q, 4 + nc]`` output of normalised (cx, cy, w, h) and class scores (name
  ``family=rtdetr``: it reads like a YOLOv5 output otherwise). Its input is RGB 0..1 resized to the
  input size without padding.

Every family but rtdetr is letterboxed (aspect kept); ``Preprocess`` says how, and ``unletterbox``
maps boxes back to frame pixels. Float16 models get float16 input (their declared input type).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from reidkit.errors import OptionError

FAMILIES = ("yolox", "yolox_decoded", "yolov5", "yolov8", "rtdetr")
YOLOX_STRIDES = (8, 16, 32)


class Preprocess(NamedTuple):
    """How a family wants its input: RGB or BGR, the scale of pixel values, letterbox placement."""

    rgb: bool
    scale: float  # pixel value multiplier (1/255: 0..1)
    pad: str  # "center" | "corner" (top-left) | "stretch" (resize, aspect not kept)


PREPROCESS = {
    "yolox": Preprocess(False, 1.0, "corner"),
    "yolox_decoded": Preprocess(False, 1.0, "corner"),
    "yolov5": Preprocess(True, 1 / 255, "center"),
    "yolov8": Preprocess(True, 1 / 255, "center"),
    "rtdetr": Preprocess(True, 1 / 255, "stretch"),
}


def yolox_cells(hw: tuple[int, int], strides: Sequence[int] = YOLOX_STRIDES) -> int:
    """Number of grid cells of a YOLOX head at input size `hw` (H, W)."""
    return sum((hw[0] // s) * (hw[1] // s) for s in strides)


def detect_family(hw: tuple[int, int], outputs: Sequence[tuple[str, Sequence[int]]], where: object = None) -> str:
    """The family of a model of input size `hw` from its outputs' (name, shape); OptionError when none fits."""
    names = {n.lower() for n, _ in outputs}
    if {"boxes", "scores"} <= names:
        return "rtdetr"
    if not outputs:
        raise OptionError("detector", "the model has no output", value=where)
    shape = [int(v) for v in outputs[0][1]]
    if len(shape) == 3 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 2:
        raise OptionError(
            "detector",
            f"cannot tell the model's family from its output of shape {list(outputs[0][1])} "
            f"(expected [1, N, 5+nc], [1, 4+nc, N] or boxes + scores outputs); name it with "
            f"--detector-option family=({'|'.join(FAMILIES)})",
            value=where,
        )
    rows, cols = shape
    if rows < cols:  # anchors outnumber channels in every YOLO export: channels first
        return "yolov8"
    if rows == yolox_cells(hw) and cols >= 6:
        return "yolox"
    return "yolov5"


def _person_column(cols: int, first: int, person_class: int, family: str, where: object) -> int:
    if cols <= first + person_class:
        raise OptionError(
            "detector",
            f"a {family} output of {cols} values per box has {max(0, cols - first)} "
            f"classes, no class {person_class} (--person-class)",
            value=where,
        )
    return first + person_class


def yolox_grid(hw: tuple[int, int], strides: Sequence[int] = YOLOX_STRIDES) -> tuple[np.ndarray, np.ndarray]:
    """(cells N x 2 as x, y; stride per cell N) in the order a YOLOX head lists them (stride, then row, then column)."""
    cells, steps = [], []
    for s in strides:
        ys, xs = np.meshgrid(np.arange(hw[0] // s), np.arange(hw[1] // s), indexing="ij")
        cells.append(np.stack([xs.ravel(), ys.ravel()], 1))
        steps.append(np.full(xs.size, s))
    return np.concatenate(cells).astype(np.float32), np.concatenate(steps).astype(np.float32)


def decode(
    family: str, outputs: dict[str, np.ndarray], hw: tuple[int, int], person_class: int = 0, where: object = None
) -> tuple[np.ndarray, np.ndarray]:
    """(boxes x1 y1 x2 y2 in input pixels, person scores) of a family's raw outputs (by name, first one first)."""
    arrays = {k: np.asarray(v).astype(np.float32, copy=False) for k, v in outputs.items()}
    first = next(iter(arrays.values()))
    if family == "rtdetr" and {"boxes", "scores"} <= {k.lower() for k in arrays}:
        return _rtdetr_named({k.lower(): v for k, v in arrays.items()}, person_class, where)
    a = first[0] if first.ndim == 3 else first
    if a.ndim != 2:
        raise OptionError(
            "detector", f"a {family} model should give [1, N, C] or [1, C, N], got {list(first.shape)}", value=where
        )
    if family == "yolov8":
        a = a.T if a.shape[0] < a.shape[1] else a
        c = _person_column(a.shape[1], 4, person_class, family, where)
        return cxcywh_to_xyxy(a[:, :4]), a[:, c]
    if family in ("yolov5", "yolox_decoded"):
        c = _person_column(a.shape[1], 5, person_class, family, where)
        return cxcywh_to_xyxy(a[:, :4]), a[:, 4] * a[:, c]
    if family == "yolox":
        cells, steps = yolox_grid(hw)
        if len(a) != len(cells):
            raise OptionError(
                "detector",
                f"a yolox output has one row per grid cell of strides 8/16/32 "
                f"({len(cells)} at {hw[0]}x{hw[1]}), got {len(a)} rows",
                value=where,
            )
        c = _person_column(a.shape[1], 5, person_class, family, where)
        xy = (a[:, :2] + cells) * steps[:, None]
        wh = np.exp(np.minimum(a[:, 2:4], 20.0)) * steps[:, None]  # the cap keeps a wild logit finite
        return cxcywh_to_xyxy(np.concatenate([xy, wh], 1)), a[:, 4] * a[:, c]
    if family == "rtdetr":
        c = _person_column(a.shape[1], 4, person_class, family, where)
        box = a[:, :4] * np.array([hw[1], hw[0], hw[1], hw[0]], np.float32)  # normalised -> input pixels
        return cxcywh_to_xyxy(box), a[:, c]
    raise OptionError("detector", f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}", value=where)


def _rtdetr_named(arrays: dict[str, np.ndarray], person_class: int, where: object) -> tuple[np.ndarray, np.ndarray]:
    boxes = arrays["boxes"].reshape(-1, 4)
    scores = arrays["scores"]
    if scores.ndim == 3 or (scores.ndim == 2 and scores.shape[0] == len(boxes) and scores.shape[-1] > 1):
        per_class = scores.reshape(len(boxes), -1)
        c = _person_column(per_class.shape[1], 0, person_class, "rtdetr", where)
        return boxes, per_class[:, c]
    sc = scores.reshape(-1)
    if len(sc) != len(boxes):
        raise OptionError("detector", f"rtdetr: {len(boxes)} boxes but {len(sc)} scores", value=where)
    if "labels" in arrays:  # one label per query: keep the person queries only
        sc = np.where(arrays["labels"].reshape(-1).astype(np.int64) == person_class, sc, -np.inf).astype(np.float32)
    return boxes, sc


def cxcywh_to_xyxy(c: np.ndarray) -> np.ndarray:
    """Centre-size boxes as corner boxes."""
    half = c[:, 2:4] / 2
    return np.concatenate([c[:, :2] - half, c[:, :2] + half], 1)


def letterbox(
    frame: np.ndarray, hw: tuple[int, int], prep: Preprocess, dtype: type = np.float32
) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """(1 x 3 x H x W blob, (sx, sy, x0, y0)): the frame fitted into the input as the family wants it;
    a frame point (x, y) lands at (x * sx + x0, y * sy + y0)."""
    import cv2

    H, W = hw
    h, w = frame.shape[:2]
    if prep.pad == "stretch":
        canvas = cv2.resize(frame, (W, H), interpolation=cv2.INTER_LINEAR)
        geo = (W / w, H / h, 0.0, 0.0)
    else:
        s = min(H / h, W / w)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        x0, y0 = (0, 0) if prep.pad == "corner" else (int(round((W - nw) / 2 - 0.1)), int(round((H - nh) / 2 - 0.1)))
        canvas = np.full((H, W, 3), 114, np.uint8)  # the grey padding YOLO and YOLOX train with
        canvas[y0 : y0 + nh, x0 : x0 + nw] = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_LINEAR)
        geo = (nw / w, nh / h, float(x0), float(y0))
    img = canvas[:, :, ::-1] if prep.rgb else canvas
    blob = img.transpose(2, 0, 1)[None].astype(np.float32) * np.float32(prep.scale)
    return np.ascontiguousarray(blob.astype(dtype, copy=False)), geo


def unletterbox(boxes: np.ndarray, geo: tuple[float, float, float, float], frame_hw: tuple[int, int]) -> np.ndarray:
    """Boxes in input pixels back in frame pixels (clipped to the frame)."""
    sx, sy, x0, y0 = geo
    out = np.empty_like(boxes, dtype=np.float32)
    out[:, [0, 2]] = ((boxes[:, [0, 2]] - x0) / sx).clip(0, frame_hw[1])
    out[:, [1, 3]] = ((boxes[:, [1, 3]] - y0) / sy).clip(0, frame_hw[0])
    return out
