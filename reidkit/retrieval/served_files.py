"""Files served by the HTTP service, and HEAD answered by GET.

``GET /images/{id}`` (and the thumbnails of reidkit.video.routes) serve a file only while it is the one indexed: `open_indexed` refuses a symbolic link or anything but a regular file at the final
path (lstat, then ``open(O_NOFOLLOW | O_NONBLOCK)`` so a FIFO cannot block), then compares fstat of the
opened descriptor with the size and mtime recorded when the entry was indexed (meta ``file_stat`` /
``thumb_stats``; entries indexed before they were recorded get the link and file-type checks only). The
bytes are read from that same descriptor (`IndexedFileResponse`), never from the path again, so a file
swapped after the check is not what is sent. A refusal is a 404 with a short message, logged once.

HEAD: every GET route and page answers HEAD with GET's status and headers and no body (`HeadAsGet`).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import weakref
from email.utils import formatdate
from pathlib import Path
from typing import Any

from fastapi.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from reidkit.errors import NotFound
from reidkit.retrieval.store import FILE_STAT_KEY, THUMB_STATS_KEY, parse_file_stat

__all__ = ["UNRECORDED", "recorded_stat", "open_indexed", "IndexedFileResponse", "HeadAsGet"]

logger = logging.getLogger("reidkit.service")  # the service's log

UNRECORDED = object()  # recorded_stat of an entry indexed before file stats were recorded
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_CLOEXEC", 0)
)
_logged_refusals: set[tuple[str, str]] = set()


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
    ):
        if test(mode):
            return name
    return "a special file"


def recorded_stat(rec: dict[str, Any], name: str | None = None) -> Any:
    """What the entry `rec` recorded of the file it serves (its own path, or thumbnail `name` of a tracklet):
    the raw stat for `open_indexed`, or UNRECORDED for an entry indexed before stats were recorded."""
    meta = rec.get("meta")
    if not isinstance(meta, dict):
        return UNRECORDED
    if name is None and FILE_STAT_KEY in meta:
        return meta[FILE_STAT_KEY]
    thumbs = meta.get(THUMB_STATS_KEY)
    if isinstance(thumbs, dict):
        return thumbs.get(name or Path(str(rec.get("path", ""))).name)  # a name not recorded: None, refused
    return UNRECORDED


def open_indexed(path: str | os.PathLike, recorded: Any = UNRECORDED, what: str = "file") -> tuple[int, os.stat_result]:
    """Open the indexed file `path` for serving: (descriptor, its fstat). NotFound (naming the path; its
    `public` message does not) when it is gone, a symbolic link, not a regular file, or when its size and
    mtime differ from `recorded` (a stat from the entry's meta; a malformed one refuses too)."""
    path = os.fspath(path)

    def refuse(reason: str, public: str, log: bool = True) -> NotFound:
        if log and len(_logged_refusals) < 4096 and (path, reason) not in _logged_refusals:
            _logged_refusals.add((path, reason))  # once per file and reason: a client cannot flood the log
            logger.warning("not serving %s (%s): %s", path, what, reason)
        return NotFound(f"{what}: {path} {reason}", public=f"{what} {public}")

    try:
        before = os.lstat(path)
    except OSError:
        raise refuse("is no longer on disk", "is no longer on disk", log=False) from None
    if not stat.S_ISREG(before.st_mode):  # before opening: a device or FIFO is never opened at all
        raise refuse(f"is {_kind(before.st_mode)}, not the file indexed", "is not served: it is not the file indexed")
    try:
        fd = os.open(path, _OPEN_FLAGS)  # O_NOFOLLOW: a link swapped in since the lstat fails here
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise refuse(
                "is a symbolic link, not the file indexed", "is not served: it is not the file indexed"
            ) from None
        if exc.errno == errno.ENOENT:
            raise refuse("is no longer on disk", "is no longer on disk", log=False) from None
        raise refuse(f"cannot be opened ({exc.strerror})", "cannot be read") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise refuse(f"is {_kind(st.st_mode)}, not the file indexed", "is not served: it is not the file indexed")
        if recorded is not UNRECORDED:
            try:
                size, mtime_ns = parse_file_stat(recorded)
            except ValueError:
                raise refuse(
                    "has no usable size and mtime recorded in the gallery",
                    "is not served: it was not readable when indexed",
                ) from None
            if (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
                raise refuse(
                    f"changed since it was indexed (size {st.st_size}, mtime_ns {st.st_mtime_ns}; indexed: "
                    f"size {size}, mtime_ns {mtime_ns})",
                    "is not served: it changed since it was indexed",
                )
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _read_exact(fd: int, size: int) -> bytes | None:
    """`size` bytes from the start of `fd`; None when the file is shorter now."""
    parts, got = [], 0
    while got < size:
        chunk = os.pread(fd, min(size - got, 1 << 20), got)
        if not chunk:
            return None
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


class IndexedFileResponse(Response):
    """The file behind a descriptor from `open_indexed`: its bytes come from that descriptor, never from the
    path again (a file swapped after the check is not what is sent). Content-Length is the checked size.
    A file up to SMALL bytes is read whole before the headers go (if it shrank meanwhile: 404); a larger
    one is streamed. The descriptor is closed when the response is sent, or when it is dropped unsent."""

    SMALL = 8 * 1024 * 1024
    CHUNK = 256 * 1024

    def __init__(
        self, fd: int, st: os.stat_result, media_type: str, headers: dict[str, str] | None = None, what: str = "file"
    ) -> None:
        super().__init__(status_code=200, headers=headers, media_type=media_type)
        self.headers["content-length"] = str(st.st_size)
        self.headers["last-modified"] = formatdate(st.st_mtime, usegmt=True)
        self.fd, self.size, self.what = fd, int(st.st_size), what
        self._close = weakref.finalize(self, os.close, fd)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        import anyio

        start = {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        try:
            if scope.get("method") == "HEAD" or scope.get(_HEAD_KEY):
                await send(start)
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            if self.size <= self.SMALL:
                data = await anyio.to_thread.run_sync(_read_exact, self.fd, self.size)
                if data is None:
                    await JSONResponse(
                        {"detail": f"{self.what} is not served: it changed since it was indexed"}, status_code=404
                    )(scope, receive, send)
                    return
                await send(start)
                await send({"type": "http.response.body", "body": data, "more_body": False})
                return
            await send(start)
            sent = 0
            while sent < self.size:
                chunk = await anyio.to_thread.run_sync(os.pread, self.fd, min(self.CHUNK, self.size - sent), sent)
                if not chunk:  # truncated while being sent: end short (the client sees an incomplete body)
                    logger.warning("%s shrank while being sent; the response ends short", self.what)
                    return
                sent += len(chunk)
                await send({"type": "http.response.body", "body": chunk, "more_body": sent < self.size})
        finally:
            self._close()


_HEAD_KEY = "reidkit.head"  # set in the scope of a HEAD request answered by its GET route


class HeadAsGet:
    """ASGI middleware: HEAD runs the GET route (the inner scope says GET, and `_HEAD_KEY`) and sends its
    status and headers, Content-Length included, without the body."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "HEAD":
            await self.app(scope, receive, send)
            return
        inner = {**scope, "method": "GET", _HEAD_KEY: True}

        async def headers_only(msg: dict) -> None:
            if msg["type"] in ("http.response.body", "http.response.pathsend"):
                if msg.get("more_body", False):
                    return
                msg = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(msg)

        await self.app(inner, receive, headers_only)
