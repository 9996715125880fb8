"""Live cameras as frame sources: a stream (rtsp://, http(s)://, udp://) or a file played at its own rate.

A :class:`LiveSource` runs one reader thread per camera that keeps the stream drained: frames are
stamped with the wall-clock time they arrived and put in a bounded buffer. When the consumer (detector,
tracker, embedder) cannot keep up, the OLDEST waiting frame is dropped for the new one, so the lag
never grows beyond the buffer; every drop is counted (:class:`SourceStats`). The rule is deliberately
simple: a tracker meets a dropped frame as a short gap, which the trackers bridge like a missed
detection, while a growing queue would put every later answer further behind the camera.

Faults: a stream that ends or stops answering (read timeout) is reopened with exponential backoff
(``backoff`` = first and longest wait); a camera that never connects keeps being retried and is
reported (``connected`` False, ``last_error``) while the other cameras go on; a frame whose size
differs from the stream's first frame is dropped as corrupt and counted. Nothing here blocks the
consumer for longer than its own ``timeout``.

Frame indices: within one connection a frame's index is the count of frames the stream delivered
(skipped ones included), so a file or a stream that loses nothing numbers its frames as the file does;
after a reconnect the index jumps to the frame grid of the wall clock (:func:`frame_index`:
``round((t - t0) * fps)``, strictly increasing). Skipped frames and outages leave holes, and a
tracklet's times (``start_time + index / fps``) stay wall-clock times.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import re
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from reidkit.errors import OptionError

log = logging.getLogger(__name__)

STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "udp://", "rtp://", "tcp://", "srt://")


def shown_url(source: str | os.PathLike) -> str:
    """`source` as logs, galleries and pages may show it: a URL's user and password (``rtsp://user:pw@host``, how
    cameras and NVRs take credentials) replaced by ``***``. Nothing reidkit stores or prints holds the password."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@", r"\1***@", str(source))


def is_stream(source: str | os.PathLike) -> bool:
    """True when `source` names a network stream (a URL of one of STREAM_SCHEMES), not a file."""
    return str(source).lower().startswith(STREAM_SCHEMES)


@dataclass
class SourceStats:
    """What one camera's reader met so far (all counts since the source started)."""

    received: int = 0  # frames read from the stream
    delivered: int = 0  # frames handed to the consumer
    skipped: int = 0  # frames dropped because the consumer was behind (oldest first)
    corrupt: int = 0  # frames dropped because they were not a whole frame of the stream's size
    reconnects: int = 0  # successful connections after the first
    failures: int = 0  # attempts to connect that failed
    connected: bool = False
    last_error: str = ""
    last_frame_wall: float = 0.0  # arrival time of the newest frame (0: none yet)
    lag: float = 0.0  # seconds the last delivered frame waited between arrival and delivery

    def report(self, now: float | None = None) -> dict[str, Any]:
        """The counters as a dict, with ``last_frame_age`` (seconds since the newest frame; None: no frame yet)."""
        now = time.time() if now is None else now
        d = asdict(self)
        d["last_frame_age"] = round(now - self.last_frame_wall, 3) if self.last_frame_wall else None
        d["lag"] = round(self.lag, 3)
        return d


@dataclass(frozen=True)
class LiveFrame:
    """One frame of a live source: its arrival time (wall clock, seconds), the BGR image, and its index on
    the camera's frame grid (consecutive within a connection, skipped frames included; after a reconnect
    it jumps by the time the stream was away: module docstring)."""

    wall: float
    image: np.ndarray
    index: int = 0


def _open_capture(url: str, open_timeout: float, read_timeout: float) -> Any:
    import cv2

    params = [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
        int(open_timeout * 1000),
        cv2.CAP_PROP_READ_TIMEOUT_MSEC,
        int(read_timeout * 1000),
    ]
    return cv2.VideoCapture(url, cv2.CAP_FFMPEG, params)


class LiveSource:
    """One camera: a reader thread, a bounded buffer of the newest frames, reconnects and counters.

    ``source``: a stream URL or a video file (a file is played at its own frame rate, as a camera would
    deliver it, once: ``loop`` replays it). ``buffer``: frames kept for the consumer (the rest are skipped,
    oldest first). ``backoff``: (first, longest) wait in seconds between connection attempts.
    """

    def __init__(
        self,
        source: str | os.PathLike,
        camera: str,
        *,
        buffer: int = 4,
        backoff: tuple[float, float] = (0.5, 30.0),
        open_timeout: float = 30.0,
        read_timeout: float = 10.0,
        loop: bool = False,
        clock: Callable[[], float] = time.time,
        opener: Callable[[str, float, float], Any] | None = None,
    ) -> None:
        if int(buffer) < 1:
            raise OptionError("buffer", f"must be >= 1, got {buffer}")
        lo, hi = (float(b) for b in backoff)
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
            raise OptionError("backoff", f"expected (first, longest) seconds with 0 < first <= longest, got {backoff}")
        self.source, self.camera = str(source), str(camera)
        self.file = not is_stream(self.source)
        if self.file and not Path(self.source).expanduser().is_file():
            raise OptionError(
                "source",
                f"camera {camera}: {shown_url(self.source)} is neither a stream URL "
                f"({', '.join(s.rstrip(':/') for s in STREAM_SCHEMES)}) nor a video file",
            )
        self.buffer, self.backoff, self.loop = int(buffer), (lo, hi), bool(loop)
        self.open_timeout, self.read_timeout = float(open_timeout), float(read_timeout)
        self.clock = clock
        self.opener = opener or _open_capture
        self.stats = SourceStats()
        self.fps = 0.0
        self.size: tuple[int, int] | None = None  # (H, W) of the stream's first frame
        self._frames: collections.deque[LiveFrame] = collections.deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._ended = False  # a file played to its end (not looping)
        self._thread: threading.Thread | None = None
        self._index = -1  # the last received frame's index
        self._t0: float | None = None  # arrival time of the first frame
        self._fresh = True  # the next frame is the first of a connection

    # ------------------------------------------------------------------ the reader thread
    def start(self) -> LiveSource:
        """Start the reader thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"reidkit-live-{self.camera}", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop reading and wait (up to `timeout` s) for the reader thread."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        wait = self.backoff[0]
        ever = False
        while not self._stop.is_set():
            try:
                cap = self.opener(self.source, self.open_timeout, self.read_timeout)
            except Exception as exc:  # noqa: BLE001 - reported and retried like any failed connection
                cap, error = None, f"{type(exc).__name__}: {exc}"
            else:
                error = "cannot open the stream"
            if cap is None or not cap.isOpened():
                if cap is not None:
                    cap.release()
                self.stats.failures += 1
                if self.stats.last_error != error or self.stats.failures == 1:
                    log.warning(
                        "camera %s: %s (%s); retrying every %.3g-%.3g s",
                        self.camera,
                        error,
                        shown_url(self.source),
                        *self.backoff,
                    )
                self.stats.last_error = error
                self._stop.wait(wait)
                wait = min(wait * 2, self.backoff[1])
                continue
            if ever:
                self.stats.reconnects += 1
                log.warning("camera %s: reconnected (%d reconnects)", self.camera, self.stats.reconnects)
            ever, wait = True, self.backoff[0]
            self._fresh = True
            self.stats.connected, self.stats.last_error = True, ""
            try:
                ended = self._drain(cap)
            finally:
                cap.release()
                self.stats.connected = False
            if ended:
                break
            if not self._stop.is_set():
                self.stats.last_error = "the stream ended or stopped answering"
                log.warning("camera %s: %s; reconnecting", self.camera, self.stats.last_error)
                self._stop.wait(wait)
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def _drain(self, cap: Any) -> bool:
        """Read frames until the stream ends or stop(); True when a file reached its end and does not loop."""
        import cv2

        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        if math.isfinite(fps) and 0 < fps <= 1000:
            self.fps = fps
        period = 1.0 / self.fps if self.file and self.fps > 0 else 0.0
        next_due = self.clock()
        while not self._stop.is_set():
            if period:  # a file is delivered at its own rate, like a camera
                delay = next_due - self.clock()
                if delay > 0 and self._stop.wait(delay):
                    return False
                next_due = max(next_due + period, self.clock() - period)
            ok, image = cap.read()
            if not ok or image is None:
                if self.file and not self.loop:
                    return True
                return False
            self._put(image)
        return False

    def _put(self, image: np.ndarray) -> None:
        now = self.clock()
        if image.ndim != 3 or image.shape[2] != 3 or (self.size is not None and image.shape[:2] != self.size):
            self.stats.corrupt += 1
            return
        if self.size is None:
            self.size = (int(image.shape[0]), int(image.shape[1]))
        self.stats.received += 1
        self.stats.last_frame_wall = now
        if self._t0 is None:
            self._t0, self._index = now, 0
        elif self._fresh:  # back after an outage: the frames the stream was away for are a hole
            self._index = frame_index(now, self._t0, self.fps or 1.0, self._index)
        else:
            self._index += 1
        self._fresh = False
        with self._cond:
            if len(self._frames) >= self.buffer:
                self._frames.popleft()
                self.stats.skipped += 1
            self._frames.append(LiveFrame(now, image, self._index))
            self._cond.notify_all()

    # ------------------------------------------------------------------ the consumer's side
    @property
    def ended(self) -> bool:
        """True once the reader stopped (a file played out, or stop()) and every frame was delivered."""
        with self._cond:
            return self._ended and not self._frames

    def read(self, timeout: float | None = None) -> LiveFrame | None:
        """The oldest waiting frame, waiting up to `timeout` s (None: until one arrives or the source ends)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._frames:
                if self._ended or self._stop.is_set():
                    return None
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(left if left is not None else 0.5)
            frame = self._frames.popleft()
        self.stats.delivered += 1
        self.stats.lag = max(0.0, self.clock() - frame.wall)
        return frame

    def __iter__(self) -> Iterator[LiveFrame]:
        while True:
            frame = self.read()
            if frame is None:
                return
            yield frame


def frame_index(wall: float, t0: float, fps: float, last: int) -> int:
    """The index on the camera's nominal frame grid of a frame that arrived at `wall` (module docstring):
    ``round((wall - t0) * fps)``, but always after `last` (the previous frame's index; -1 for none)."""
    return max(int(last) + 1, int(round((float(wall) - float(t0)) * float(fps))))
