"""Tracklet stitching: join one camera's fragments of one person before global identities.

A tracker loses a person through a run of missed detections, an occlusion or a crossing and starts
a new track when they are found again: two tracklets of one camera, the second starting soon after
the first ends, near where the first was heading, looking alike. Offline multi-camera trackers join
such fragments within each camera before they cluster across cameras (tracklet-to-tracklet
association: TrackletNet, Wang et al., ACM MM 2019; the single-camera stage of the AI City
Challenge's offline trackers). Here it is a pure function on arrays, a greedy one-to-one matching
of tracklet ends to tracklet starts:

For tracklets ``a`` and ``b`` of one camera with a gap ``g = s_b - e_a`` (seconds) of
``0 < g <= max_gap`` (never overlapping: one person is one track at a time):

- **motion**: ``a``'s last box centre moved on by its velocity over its last ``tail`` boxes for
  the gap (``v`` is shrunk as the gap grows, a walker turns) against ``b``'s first box centre, in
  units of ``a``'s last box height: ``m = |c_a + v_a g - c_b| / h_a``, at most ``max_motion``;
  and the two box heights within a factor ``max_scale``;
- **appearance**: the cosine distance of the two tracklet features, at most ``max_appearance``.

Allowed pairs are taken in order of ``m / max_motion + d / max_appearance`` (then the earlier
pair); each tracklet's end and each tracklet's start joins at most once, so the groups are chains
in time order. Deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from reidkit.errors import OptionError, ReIDError

__all__ = ["Fragment", "StitchParams", "stitch", "group_features"]


@dataclass(frozen=True)
class StitchParams:
    """Limits of a join (module docstring); `max_gap` <= 0 switches stitching off."""

    max_gap: float = 2.0  # seconds from one tracklet's end to the next one's start
    max_motion: float = 0.5  # predicted-centre error, in box heights
    max_scale: float = 1.3  # ratio of the box heights
    max_appearance: float = 0.2  # cosine distance of the features
    tail: int = 5  # boxes the end (start) velocity is measured over

    def check(self) -> StitchParams:
        """OptionError naming the field for a value out of range."""
        for name in ("max_gap", "max_motion", "max_scale", "max_appearance"):
            v = float(getattr(self, name))
            if not np.isfinite(v) or v < 0:
                raise OptionError(f"stitch.{name}", f"expected a finite number >= 0, got {v!r}")
        if self.max_scale < 1:
            raise OptionError("stitch.max_scale", f"expected >= 1, got {self.max_scale!r}")
        if int(self.tail) < 2:
            raise OptionError("stitch.tail", f"expected >= 2, got {self.tail!r}")
        return self


@dataclass(frozen=True)
class Fragment:
    """One tracklet as stitching sees it: its camera, its boxes ``(n, 5)`` rows ``t, x0, y0, x1, y1``
    (seconds, time order) and its feature."""

    camera: str
    boxes: np.ndarray
    feature: np.ndarray

    @classmethod
    def of(cls, camera: Any, boxes: Any, feature: Any) -> Fragment:
        """A checked fragment (ReIDError for an empty or malformed box list)."""
        b = np.asarray(boxes, dtype=np.float64)
        if b.ndim != 2 or b.shape[1] != 5 or not len(b) or not np.isfinite(b).all():
            raise ReIDError(
                f"stitch: a tracklet of camera {camera!r} needs (n >= 1, 5) finite boxes "
                f"(t, x0, y0, x1, y1), got shape {b.shape}"
            )
        return cls(str(camera), b[np.argsort(b[:, 0], kind="stable")], np.asarray(feature, np.float64).reshape(-1))


def _centre(b: np.ndarray) -> np.ndarray:
    return np.stack([(b[..., 1] + b[..., 3]) / 2, (b[..., 2] + b[..., 4]) / 2], axis=-1)


def _velocity(b: np.ndarray) -> np.ndarray:
    """Centre velocity (pixels / second) over the boxes `b` (least squares; zero for one box or no time)."""
    if len(b) < 2 or b[-1, 0] <= b[0, 0]:
        return np.zeros(2)
    t = b[:, 0] - b[:, 0].mean()
    c = _centre(b)
    return np.asarray((t[:, None] * (c - c.mean(axis=0))).sum(axis=0) / (t * t).sum())


def _height(row: np.ndarray) -> float:
    return max(1.0, float(row[4] - row[2]))


def join_cost(a: Fragment, b: Fragment, p: StitchParams) -> float | None:
    """The cost of `b` continuing `a` (module docstring), None when the pair is not allowed."""
    if a.camera != b.camera:
        return None
    gap = float(b.boxes[0, 0] - a.boxes[-1, 0])
    if not 0 < gap <= p.max_gap:
        return None
    end, start = a.boxes[-1], b.boxes[0]
    ha, hb = _height(end), _height(start)
    if max(ha, hb) > p.max_scale * min(ha, hb):
        return None
    damp = 1.0 / (1.0 + gap)  # the longer the gap, the less the last velocity says
    pred = _centre(end) + _velocity(a.boxes[-int(p.tail) :]) * gap * damp
    m = float(np.linalg.norm(pred - _centre(start))) / ha
    fa, fb = a.feature, b.feature
    cos = float(fa @ fb) / max(float(np.linalg.norm(fa) * np.linalg.norm(fb)), 1e-12)
    d = 1.0 - cos
    if m > p.max_motion or d > p.max_appearance:
        return None
    return m / max(p.max_motion, 1e-12) + d / max(p.max_appearance, 1e-12)


def stitch(fragments: Sequence[Fragment], params: StitchParams | None = None) -> np.ndarray:
    """Group label per fragment (the index of its chain's first fragment): fragments joined as one person."""
    p = (params or StitchParams()).check()
    n = len(fragments)
    labels = np.arange(n, dtype=np.int64)
    if p.max_gap <= 0 or n < 2:
        return labels
    pairs = []
    by_cam: dict[str, list[int]] = {}
    for i, f in enumerate(fragments):
        by_cam.setdefault(f.camera, []).append(i)
    for idx in by_cam.values():
        for i in idx:
            for j in idx:
                if i != j:
                    c = join_cost(fragments[i], fragments[j], p)
                    if c is not None:
                        pairs.append((c, float(fragments[i].boxes[-1, 0]), i, j))
    nxt: dict[int, int] = {}
    prev: dict[int, int] = {}
    for _c, _t, i, j in sorted(pairs):
        if i in nxt or j in prev:
            continue
        nxt[i], prev[j] = j, i
    for i in range(n):
        if i in prev:
            continue
        j = i
        while j in nxt:
            j = nxt[j]
            labels[j] = i
    return labels


def group_features(features: Any, labels: Any, weights: Any = None) -> np.ndarray:
    """Each row replaced by its group's feature: the (weighted) mean of the group's unit-normalised rows, normalised."""
    f = np.asarray(features, dtype=np.float64)
    f = np.asarray(f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12))
    lab = np.asarray(labels)
    w = np.ones(len(f)) if weights is None else np.asarray(weights, dtype=np.float64)
    out = f.copy()
    for g in np.unique(lab):
        sel = lab == g
        if sel.sum() > 1:
            m = (f[sel] * w[sel, None]).sum(axis=0)
            out[sel] = m / max(float(np.linalg.norm(m)), 1e-12)
    return np.asarray(out, dtype=np.float32)  # out is a copy: as out.astype(np.float32)
