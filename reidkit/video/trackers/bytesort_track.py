"""bytesort's per-track state: a Kalman filter on the box centre and size (cx, cy, w, h and their velocities, as
BoT-SORT's; noise proportional to the box size, as DeepSort's) and what association reads of a track."""

from __future__ import annotations

from typing import Any

import numpy as np

STD_POS, STD_VEL = 1.0 / 20, 1.0 / 160  # Kalman noise per unit of box size (DeepSort's, BoT-SORT's)
_F = np.eye(8)
_F[:4, 4:] = np.eye(4)


def _xywh(box: np.ndarray) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box[2] - box[0], box[3] - box[1]])


def _xyxy(m: np.ndarray) -> np.ndarray:
    """x1, y1, x2, y2 of Kalman means (..., >= 4): cx, cy, w, h first."""
    m = np.asarray(m)
    half = np.abs(m[..., 2:4]) / 2
    return np.concatenate([m[..., :2] - half, m[..., :2] + half], axis=-1)


def _q(mean: np.ndarray) -> np.ndarray:
    w, h = abs(mean[2]), abs(mean[3])
    return np.square(
        [STD_POS * w, STD_POS * h, STD_POS * w, STD_POS * h, STD_VEL * w, STD_VEL * h, STD_VEL * w, STD_VEL * h]
    )


class _Track:
    """One track's state (plain numbers and arrays: a state_dict is vars())."""

    def __init__(
        self, tid: int, box: np.ndarray, score: float, feat: np.ndarray | None, frame: int, velocity_std: float = 10.0
    ) -> None:
        z = _xywh(box)
        w, h = z[2], z[3]
        v = velocity_std * STD_VEL
        self.id = tid
        self.mean = np.r_[z, np.zeros(4)]
        self.cov = np.diag(
            np.square([2 * STD_POS * w, 2 * STD_POS * h, 2 * STD_POS * w, 2 * STD_POS * h, v * w, v * h, v * w, v * h])
        )
        self.feat = None if feat is None else np.array(feat, np.float32)  # a unit row
        self.feat_frame = frame if feat is not None else -(10**9)  # the frame whose feature the EMA took last
        self.confirmed = False
        self.hits = 1
        self.misses = 0  # frames since the last detection
        self.last_box = np.asarray(box, np.float64).copy()
        self.last_frame = frame
        self.obs = [[float(frame), float(z[0]), float(z[1])]]  # recent observed centres (for the direction)
        self.zs = [[float(frame), *(float(v) for v in z)]]  # the last 4 observed boxes (cx, cy, w, h: the jitter)
        self.motion = [0.0, 0.0, 0.0, 0.0]  # the direction's origin (x, y) and unit vector (zeros: unknown)
        self.snap_mean, self.snap_cov = self.mean.copy(), self.cov.copy()

    def state(self) -> dict[str, Any]:
        return dict(vars(self))

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> _Track:
        t = cls.__new__(cls)
        t.__dict__.update(d)
        return t
