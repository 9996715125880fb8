"""Per-stage figures of a video run and the embedder seam of its per-frame work (reidkit.video.pipeline).

``Stats`` counts seconds and items per stage. ``_Direct`` wraps an embedder used from one thread and
records its calls; ``SharedEmbedder`` serves several videos' threads with ONE embedder: each video's
requests (``client(camera)``) are queued and run together, so batches mix cameras.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import numpy as np

__all__ = ["SharedEmbedder", "Stats"]


class Stats:
    """Per-stage seconds and counts of a run (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds: dict[str, float] = {}
        self.counts: dict[str, int] = {}
        self.batches: list[tuple[int, int]] = []  # (crops, cameras) per embedder call

    def add(self, stage: str, seconds: float, n: int = 1) -> None:
        """Count `n` items taking `seconds` in `stage`."""
        with self._lock:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds
            self.counts[stage] = self.counts.get(stage, 0) + n

    def batch(self, crops: int, cameras: int) -> None:
        """Record one embedder call."""
        with self._lock:
            self.batches.append((crops, cameras))

    def report(self) -> dict[str, Any]:
        """JSON-able summary: seconds and counts per stage, embedder batch sizes and cameras per batch."""
        with self._lock:
            b = np.asarray(self.batches or [(0, 0)], dtype=np.float64)
            return {
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
                "counts": dict(self.counts),
                "embed_batches": len(self.batches),
                "crops_per_batch": round(float(b[:, 0].mean()), 2),
                "max_crops_per_batch": int(b[:, 0].max()),
                "mixed_camera_batches": int((b[:, 1] > 1).sum()) if self.batches else 0,
                "cameras_per_batch": round(float(b[:, 1].mean()), 2),
            }


class _Direct:
    """An embedder used from one thread, with its calls recorded."""

    def __init__(self, embedder: Any, stats: Stats | None) -> None:
        self.embedder, self.stats, self.dim = embedder, stats, int(embedder.dim)

    def embed_crops(self, crops: list[np.ndarray]) -> np.ndarray:
        if not crops:
            return np.zeros((0, self.dim), np.float32)
        t0 = time.perf_counter()
        out = self.embedder.embed_crops(crops)
        if self.stats is not None:
            self.stats.add("embed", time.perf_counter() - t0, len(crops))
            self.stats.batch(len(crops), 1)
        return np.asarray(out)


class SharedEmbedder:
    """One embedder serving several videos' threads: requests are queued and run together in one batch.

    A serving thread takes the first waiting request, then the others already queued (waiting up to
    `max_wait` seconds while fewer than the active clients have asked), up to `max_batch` crops.
    """

    def __init__(self, embedder: Any, stats: Stats | None = None, max_batch: int = 64, max_wait: float = 0.01) -> None:
        self.embedder, self.stats = embedder, stats
        self.dim = int(embedder.dim)
        self.max_batch, self.max_wait = int(max_batch), float(max_wait)
        self._q: queue.Queue = queue.Queue()
        self._active = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, name="reidkit-embed", daemon=True)
        self._thread.start()

    def client(self, camera: str) -> _Client:
        """A per-video handle with `embed_crops` and `dim`; call `close()` when that video is finished."""
        with self._lock:
            self._active += 1
        return _Client(self, camera)

    def _release(self) -> None:
        with self._lock:
            self._active -= 1

    def close(self) -> None:
        """Stop the serving thread."""
        self._q.put(None)
        self._thread.join(timeout=10)

    def _serve(self) -> None:
        while True:
            first = self._q.get()
            if first is None:
                return
            reqs = [first]
            n = len(first[1])
            deadline = time.perf_counter() + self.max_wait
            while n < self.max_batch:
                try:
                    if len(reqs) >= self._active:
                        r = self._q.get_nowait()
                    else:
                        r = self._q.get(timeout=max(0.0, deadline - time.perf_counter()))
                except queue.Empty:
                    break
                if r is None:
                    self._q.put(None)
                    break
                reqs.append(r)
                n += len(r[1])
            crops = [c for r in reqs for c in r[1]]
            t0 = time.perf_counter()
            try:
                feats = self.embedder.embed_crops(crops)
                err = None
            except BaseException as exc:  # handed to every waiting client
                feats, err = None, exc
            if self.stats is not None and err is None:
                self.stats.add("embed", time.perf_counter() - t0, len(crops))
                self.stats.batch(len(crops), len({r[0] for r in reqs}))
            i = 0
            for cam, cs, box in reqs:
                box["out"] = err if err is not None else feats[i : i + len(cs)]
                i += len(cs)
                box["event"].set()


class _Client:
    def __init__(self, shared: SharedEmbedder, camera: str) -> None:
        self.shared, self.camera, self.dim = shared, camera, shared.dim

    def embed_crops(self, crops: list[np.ndarray]) -> np.ndarray:
        if not crops:
            return np.zeros((0, self.dim), np.float32)
        box: dict[str, Any] = {"event": threading.Event()}
        self.shared._q.put((self.camera, list(crops), box))
        box["event"].wait()
        if isinstance(box["out"], BaseException):
            raise box["out"]
        return np.asarray(box["out"])

    def close(self) -> None:
        self.shared._release()
