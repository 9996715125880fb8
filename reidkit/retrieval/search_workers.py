"""The search service's background threads (reidkit.retrieval.service): the batcher, worker thread(s) fed by
a queue that embed the query images waiting at the same time as one batch (torch is never called
concurrently on the model) and search each with its own options; and the follower, which holds the
current gallery snapshot and swaps in each new generation between requests (the last few snapshots are
kept for ``/images/{id}?snapshot=...``)."""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reidkit.errors import OptionError, ReIDError
from reidkit.retrieval.gallery import Gallery
from reidkit.utils.validate import check_positive

__all__ = ["Batcher", "Follower", "SearchJob", "snapshot_tag"]

logger = logging.getLogger("reidkit.service")


@dataclass
class SearchJob:
    image: np.ndarray
    k: int
    rerank: bool
    exclude_camid: int | None
    future: Future = field(default_factory=Future)


class Batcher:
    """Worker thread(s) that embed queued query images in batches and search them."""

    def __init__(self, get_gallery: Any, workers: int = 1, max_batch: int = 16) -> None:
        self.get_gallery = get_gallery
        self.max_batch = max(1, int(max_batch))
        self.queue: queue.Queue[SearchJob | None] = queue.Queue()
        check_positive("workers", int(workers))
        self.workers = int(workers)
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.batches: list[int] = []  # sizes of the batches run (observability and tests)

    def start(self) -> None:
        """Start the worker threads once (lazily, so apps used without lifespan events work too)."""
        with self._lock:
            if self._threads:
                return
            for i in range(self.workers):
                t = threading.Thread(target=self._loop, name=f"reidkit-search-{i}", daemon=True)
                t.start()
                self._threads.append(t)

    def stop(self) -> None:
        """Ask the workers to finish and wait for them."""
        with self._lock:
            for _ in self._threads:
                self.queue.put(None)
            for t in self._threads:
                t.join(timeout=10)
            self._threads = []

    def submit(self, job: SearchJob) -> Future:
        """Queue a job; its future resolves to the result list."""
        self.start()
        self.queue.put(job)
        return job.future

    def _loop(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            batch = [job]
            while len(batch) < self.max_batch:
                try:
                    nxt = self.queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self.queue.put(None)  # leave the stop signal for this thread's next turn
                    break
                batch.append(nxt)
            self._run(batch)

    def _run(self, batch: list[SearchJob]) -> None:
        self.batches.append(len(batch))
        gallery = self.get_gallery()  # one snapshot for the whole batch
        try:
            feats = gallery.embed([j.image for j in batch])
        except Exception as exc:  # noqa: BLE001 - every waiting request gets the error
            for j in batch:
                j.future.set_exception(exc)
            return
        for j, f in zip(batch, feats):
            try:
                res = gallery.search_features(f[None], k=j.k, rerank=j.rerank, exclude_camid=[j.exclude_camid])[0]
                tag = snapshot_tag(gallery)
                for r in res:
                    r["snapshot"] = tag
                j.future.set_result((res, gallery))
            except Exception as exc:  # noqa: BLE001
                j.future.set_exception(exc)


def snapshot_tag(gallery: Gallery) -> str:
    return f"{gallery.uid}-{gallery.generation}"


class Follower:
    """Holds the current gallery snapshot and swaps in each new generation (see the module docstring)."""

    KEEP = 4  # recent snapshots kept for /images?snapshot=...

    def __init__(self, gallery: Gallery, poll_s: float = 0.5) -> None:
        if not poll_s > 0:
            raise OptionError("poll_s", f"must be > 0 seconds, got {poll_s}")
        self.db = gallery.db
        self.poll_s = float(poll_s)
        self._current = gallery
        self._recent: dict[str, Gallery] = {snapshot_tag(gallery): gallery}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.swaps = 0
        self._pending_since: float | None = None

    def current(self) -> Gallery:
        """The newest loaded snapshot (a plain reference read: atomic)."""
        return self._current

    def snapshot(self, tag: str) -> Gallery | None:
        """A recent snapshot by its tag, or None when it is no longer kept."""
        return self._recent.get(tag)

    def start(self) -> None:
        """Start the polling thread once."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._loop, name="reidkit-gallery-follower", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()
        t = self._thread
        if t is not None:
            t.join(timeout=10)
        self._thread = None

    def _loop(self) -> None:
        last = ""
        while not self._stop.wait(self.poll_s):
            try:
                self.check()
            except Exception as exc:  # noqa: BLE001 - keep serving the current snapshot, retry next poll
                msg = f"{type(exc).__name__}: {exc}"
                if msg != last:  # once per distinct problem, not every poll
                    logger.warning(
                        "could not load the new generation of %s (%s); still serving generation %d",
                        self.db,
                        msg,
                        self._current.generation,
                    )
                last = msg

    def check(self) -> bool:
        """Swap in the stored generation if it is newer than the current one; True when swapped."""
        cur = self._current
        if not cur.changed():
            self._pending_since = None
            return False
        # A writer that has published but not yet finished (the embedded backend's faiss cache): give it a
        # few seconds rather than rebuilding the index here (correct either way, only slower).
        now = time.monotonic()
        if cur.settling():
            if self._pending_since is None:
                self._pending_since = now
            if now - self._pending_since < 10:
                return False
        self._pending_since = None
        try:
            new = cur.reopen(extractor=cur.extractor)
        except ReIDError as exc:
            if "model mismatch" not in str(exc):
                raise
            new = cur.reopen()  # rebuilt with another model: load that one (its stored source)
            _ = new.extractor
        with self._lock:
            self._current = new
            self._recent[snapshot_tag(new)] = new
            while len(self._recent) > self.KEEP:
                self._recent.pop(next(iter(self._recent)))
            self.swaps += 1
        logger.info("gallery %s: now serving generation %d (%d entries)", self.db, new.generation, len(new))
        return True
