"""Downloads into the weights cache's part file: HTTP(S) with a size cap and a length check, Google Drive.

reidkit.models.zoo opens the part file (``O_CREAT | O_EXCL | O_NOFOLLOW`` under the cache folder) and
hands it here as a :class:`PartWriter`; a transfer past the entry's ``max_bytes`` (``TooBig``), short of
its Content-Length (``Short``) or a failed write (``WriteFailed``) stops it, and zoo says why.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from typing import Any, BinaryIO, cast


CHUNK = 1 << 20


def write_all(fd: int, data: Any) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.write(fd, view)
        view = view[n:]


class TooBig(Exception):
    def __init__(self, size: int, declared: bool = False) -> None:
        super().__init__(size)
        self.size, self.declared = size, declared


class WriteFailed(Exception):
    def __init__(self, exc: OSError) -> None:
        super().__init__(exc)
        self.exc = exc


class Short(Exception):
    def __init__(self, got: int, total: int) -> None:
        super().__init__(got, total)
        self.got, self.total = got, total


class PartWriter:
    """The part file as a write-only stream (for urllib's loop and gdown): counts bytes, refuses past the
    cap, turns a failed write into WriteFailed (remembered, so a caller that swallows it still fails)."""

    def __init__(self, fd: int, cap: int) -> None:
        self.fd, self.cap, self.size = fd, cap, 0
        self.error: Exception | None = None

    def write(self, data: Any) -> int:
        if self.error is not None:
            raise self.error
        n = memoryview(data).nbytes
        if self.size + n > self.cap:
            self.error = TooBig(self.size + n)
            raise self.error
        try:
            write_all(self.fd, data)
        except OSError as exc:
            self.error = WriteFailed(exc)
            raise self.error from None
        self.size += n
        return n

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        pass

    def check(self) -> None:
        if self.error is not None:
            raise self.error


def http_download(url: str, out: PartWriter, name: str) -> None:
    """Fetch `url` into `out` with a progress bar; refuse a body over the cap or short of its Content-Length."""
    from tqdm import tqdm

    req = urllib.request.Request(url, headers={"User-Agent": "reidkit", "Accept-Encoding": "identity"})
    try:
        resp = urllib.request.urlopen(req, timeout=30)  # noqa: S310 - an http(s) catalogue or mirror URL
    except ValueError as exc:  # a URL urllib cannot parse
        raise urllib.error.URLError(str(exc)) from None
    with resp:
        if resp.status != 200:
            raise urllib.error.URLError(f"unexpected HTTP status {resp.status}")
        length = (resp.headers.get("Content-Length") or "").strip()
        total = int(length) if length.isdigit() else None
        if total is not None and total > out.cap:
            raise TooBig(total, declared=True)
        with tqdm(total=total, unit="B", unit_scale=True, desc=name, leave=False, disable=None) as bar:
            for chunk in iter(lambda: resp.read1(CHUNK), b""):
                out.write(chunk)
                bar.update(len(chunk))
    if total is not None and out.size != total:
        raise Short(out.size, total)


def gdrive_download(file_id: str, out: PartWriter) -> None:
    from reidkit.utils.extras import require

    gdown = require("gdown", "weights on Google Drive")
    try:
        # gdown writes to any object with write() (its annotation says BinaryIO)
        gdown.download(id=file_id, output=cast(BinaryIO, out), quiet=False)
    except (TooBig, WriteFailed):
        raise
    except Exception as exc:  # noqa: BLE001 - gdown's own errors (quota, permission, network)
        out.check()
        raise OSError(f"gdown could not fetch the file: {exc}") from None
    out.check()
    if out.size == 0:
        raise OSError("gdown could not fetch the file (quota, permission, or no network)")
