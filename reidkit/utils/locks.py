"""One inter-process lock for the package: an exclusive ``fcntl.flock`` on a file that holds the holder's
pid. It dies with its process, so a killed holder never leaves it held. The gallery's writer lock
(reidkit.retrieval.backends.sqlite.generations.WriterLock) and a video's ingestion lock (reidkit.video.pipeline.VideoLock)
are this lock with their own file and messages."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from pathlib import Path
from typing import Any, Callable

from reidkit.errors import ReIDError


class PidLock:
    """A context manager: take the lock on `path`, polling every `poll` s; after the first failed attempt
    call `on_wait(waiting_message())` once; after `timeout` s (None: never) raise `timeout_error()`."""

    poll = 0.05

    def __init__(
        self, path: str | os.PathLike, timeout: float | None = None, on_wait: Callable[[str], None] | None = None
    ) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self.on_wait = on_wait
        self._fh: Any = None

    # the three messages a kind of lock words for its user
    def waiting_message(self) -> str:
        return f"waiting for the lock {self.path} (held by pid {self.holder()})"

    def timeout_error(self) -> ReIDError:
        return ReIDError(f"{self.path}: still locked by pid {self.holder()} after {self.timeout:g} s")

    def open_error(self, exc: OSError) -> ReIDError:
        return ReIDError(f"cannot create the lock {self.path}: {exc.strerror or exc}")

    def holder(self) -> str:
        """The pid written by the current holder, or '?'."""
        try:
            text = self.path.read_text().strip()
        except OSError:
            return "?"
        return text or "?"

    # never through a link planted at the lock's name (it would truncate the link's target); non-blocking, so
    # a FIFO there opens at once (and is then refused as not a regular file)
    FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

    def open_fd(self) -> int:
        """The lock file's descriptor (created if absent); a subclass may open it relative to a folder fd."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(self.path, self.FLAGS, 0o644)

    def __enter__(self) -> Any:
        try:
            fd = self.open_fd()
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                exc = OSError(exc.errno, "it is a symbolic link")
            raise self.open_error(exc) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise self.open_error(OSError(errno.EINVAL, "it is not a regular file"))
        fh = os.fdopen(fd, "r+")  # noqa: SIM115 - held until __exit__
        t0, told = time.monotonic(), False
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told and self.on_wait is not None:
                    self.on_wait(self.waiting_message())
                    told = True
                if self.timeout is not None and time.monotonic() - t0 >= self.timeout:
                    fh.close()
                    raise self.timeout_error() from None
                time.sleep(self.poll)
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._fh is not None:
            try:
                self._fh.seek(0)
                self._fh.truncate()
            except OSError:
                pass
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None

    @staticmethod
    def held(path: str | os.PathLike) -> bool:
        """True when some process holds the lock on `path` right now (probe, never blocks)."""
        try:
            with open(path, "r") as fh:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    return True
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        except OSError:
            return False
        return False
