"""What every person detector shares: the Detections type, box IoU and non-maximum suppression.

The detectors themselves are parts of reidkit.video.detectors (the Detector protocol, a registry:
``motion``, ``hog``, ``mot``, ``onnx``, and a user's own from a ``--plugin`` file).
"""

from __future__ import annotations


import numpy as np

Detections = tuple[np.ndarray, np.ndarray]


def empty() -> Detections:
    """No boxes, no scores."""
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of `a` (N x 4, x1 y1 x2 y2) with every box of `b` (M x 4): N x M."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return np.asarray(inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9))


def nms(boxes_xyxy: np.ndarray, scores: np.ndarray, score_threshold: float, iou_threshold: float) -> np.ndarray:
    """Indices kept by OpenCV's NMS (boxes above `score_threshold`, overlaps above `iou_threshold` removed)."""
    import cv2

    if len(boxes_xyxy) == 0:
        return np.zeros((0,), np.int64)
    ltwh = [[float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])] for b in boxes_xyxy]
    # NMSBoxes wants non-negative scores and threshold (SVM margins can be negative): shift both alike
    shift = min(0.0, float(np.min(scores)), float(score_threshold) if np.isfinite(score_threshold) else 0.0)
    thr = float(score_threshold) - shift if np.isfinite(score_threshold) else 0.0
    keep = cv2.dnn.NMSBoxes(ltwh, [float(s) - shift for s in scores], thr, float(iou_threshold))
    return np.asarray(keep, dtype=np.int64).reshape(-1)
