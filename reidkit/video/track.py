"""Within-video tracking with deep_sort_realtime's DeepSort (Wojke et al., "Simple online and realtime
tracking with a deep association metric", ICIP 2017), fed with reidkit embeddings (``embeds=``);
no tracker is written here.

``Tracker.step`` returns, for the frame, which detection each live track took (new tentative
tracks included, so a tracklet keeps its first frames once confirmed) and which tracks ended.
``state_dict`` / ``load_state_dict`` turn the whole tracker (Kalman states, track counters,
appearance galleries of the cosine metric) into JSON-able data, so an interrupted ingestion resumes
with exactly the tracker it had at its last committed chunk.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from reidkit.errors import ReIDError


def encode(obj: Any) -> Any:
    """JSON-able form of numbers, strings, arrays (base64, exact) and lists / dicts of them."""
    if isinstance(obj, np.ndarray):
        a = np.ascontiguousarray(obj)
        return {"__nd__": base64.b64encode(a.tobytes()).decode("ascii"), "dtype": a.dtype.str, "shape": list(a.shape)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {"__dict__": [[encode(k), encode(v)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [encode(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise ReIDError(f"tracker state: cannot store a {type(obj).__name__}")


def decode(obj: Any) -> Any:
    """Inverse of encode."""
    if isinstance(obj, dict):
        if "__nd__" in obj:
            a = np.frombuffer(base64.b64decode(obj["__nd__"]), dtype=np.dtype(obj["dtype"]))
            return a.reshape(obj["shape"]).copy()
        return {decode(k): decode(v) for k, v in obj["__dict__"]}
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    return obj


_BLAS_LIMITED = False


def single_thread_blas() -> None:
    """Limit the process's BLAS (OpenBLAS / MKL under NumPy and SciPy) to one thread, once.

    DeepSort's Kalman gating solves a 4 x 4 triangular system per track and frame through SciPy;
    with a threaded OpenBLAS each tiny call wakes (and spins) the pool: 2.1 ms per call with two
    threads against 0.04 ms with one on the 2-core machine, 12 s of a 300-frame video.
    """
    global _BLAS_LIMITED
    if _BLAS_LIMITED:
        return
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")
    _BLAS_LIMITED = True


class Tracker:
    """DeepSort with external embeddings; `max_age` and `n_init` count processed frames."""

    def __init__(
        self,
        max_age: int = 15,
        n_init: int = 3,
        max_cosine_distance: float = 0.1,
        nn_budget: int = 20,
        max_iou_distance: float = 0.7,
    ) -> None:
        from reidkit.utils.extras import require

        DeepSort = require("deep_sort_realtime.deepsort_tracker", "the deep_sort tracker").DeepSort
        single_thread_blas()
        self.ds = DeepSort(
            max_age=int(max_age),
            n_init=int(n_init),
            max_cosine_distance=float(max_cosine_distance),
            nn_budget=int(nn_budget),
            max_iou_distance=float(max_iou_distance),
            embedder=None,
        )

    def step(
        self, boxes_xyxy: np.ndarray, scores: np.ndarray, embeds: np.ndarray
    ) -> tuple[list[tuple[str, int, bool]], list[str]]:
        """([(track id, detection index, confirmed)] for the tracks updated by this frame, [ended track ids])."""
        b = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
        dets = [
            ([float(x0), float(y0), float(x1 - x0), float(y1 - y0)], float(s), "person")
            for (x0, y0, x1, y1), s in zip(b, np.asarray(scores).reshape(-1))
        ]
        # DeepSort silently drops empty boxes, which would misalign embeds and `others`: callers must not pass any
        if any(d[0][2] <= 0 or d[0][3] <= 0 for d in dets):
            raise ReIDError("tracker: detections must have a positive width and height")
        tracks = self.ds.update_tracks(
            dets, embeds=list(np.asarray(embeds, dtype=np.float32)), others=list(range(len(dets)))
        )
        matched = [
            (str(t.track_id), int(t.others), bool(t.is_confirmed()))
            for t in tracks
            if t.time_since_update == 0 and t.others is not None
        ]
        ended = [str(i) for i in self.ds.tracker.del_tracks_ids]
        return matched, ended

    def live_ids(self) -> list[str]:
        """Ids of the tracks still alive (tentative or confirmed)."""
        return [str(t.track_id) for t in self.ds.tracker.tracks]

    def state_dict(self) -> dict[str, Any]:
        """The whole tracker as JSON-able data (exact: floats as raw bytes)."""
        tr = self.ds.tracker
        return {
            "next_id": tr._next_id,
            "tracks": [encode(vars(t)) for t in tr.tracks],
            "samples": encode({str(k): list(v) for k, v in tr.metric.samples.items()}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state_dict (same tracker settings)."""
        tr = self.ds.tracker
        cls = tr.track_class
        tracks = []
        for d in state["tracks"]:
            t = cls.__new__(cls)
            t.__dict__.update(decode(d))
            tracks.append(t)
        tr.tracks = tracks
        tr._next_id = int(state["next_id"])
        tr.metric.samples = decode(state["samples"])
