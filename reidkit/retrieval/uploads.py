"""Uploaded images for the HTTP service: decoding with bounded memory, shared by every route that takes one.

Memory is bounded three ways:

1. **Per image**: the header is read first (Pillow's ``Image.open`` parses only the header) and an
   image whose decoded size would exceed ``max_pixels`` (default 4096 x 4096 = 16.7 MP, ample for a
   person crop or a full-HD frame) is refused with 413 before any pixel is decoded. For a JPEG the
   decoded size is the reduced one of 2.
2. **Reduced decoding where the format allows it**: JPEG is decoded by the DCT scaler at 1/2, 1/4
   or 1/8 of its size (``Image.draft``) when the caller needs fewer pixels than the file holds (a
   person crop is embedded at a few hundred pixels at most: both sides are kept >= 512). PNG, WebP,
   GIF, TIFF, BMP have no such mode: their declared size is decoded (and charged, 3.), then shrunk
   at once by an integer box filter (``Image.reduce``) so only one full-size buffer ever exists.
   A query with a box in frame coordinates is decoded at full size.
3. **Globally** (:class:`PixelBudget`): the pixels decoded and not yet released by every request in
   flight together stay under a budget derived from a memory figure (``budget_bytes /
   BYTES_PER_PIXEL``). A request that does not fit waits up to ``wait_s`` seconds for others to
   finish, then gets 503 with ``Retry-After``; an image larger than the whole budget gets 413.

EXIF orientation is applied (a phone photo stored rotated is searched upright).
"""

from __future__ import annotations

import asyncio
import io
import math
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator

import numpy as np

from reidkit.errors import OptionError, ReIDError
from reidkit.utils.validate import check_positive

__all__ = [
    "UploadError",
    "decode_upload",
    "probe_upload",
    "PixelBudget",
    "UploadPolicy",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DEFAULT_MEMORY_BUDGET",
    "BYTES_PER_PIXEL",
]

# One upload may decode to at most this many pixels: 4096 x 4096 (16.7 MP).
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096
# Memory for decoded uploads in flight, all requests together (the server's own footprint comes on top).
DEFAULT_MEMORY_BUDGET = 1024 * 1024 * 1024
# Peak bytes held per decoded pixel (worst case: a full-size decode, e.g. a frame with a box): Pillow's
# buffer (4 B: it stores RGB as 32 bits) + an RGBA -> RGB conversion (4 B) + the numpy copy (3 B),
# then at embedding the resize's own Pillow copy (4 B) beside the array. A reduced decode needs ~4 B.
BYTES_PER_PIXEL = 12
# A JPEG is decoded at the smallest 1/2^k scale that keeps both sides at least this large.
DRAFT_MIN_SIDE = 512


class UploadError(ReIDError):
    """An upload refused before or while decoding; `http_status` is the answer (400, 413, 415, 503)."""

    def __init__(self, message: str, http_status: int = 400, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.http_status = int(http_status)
        self.headers = headers or {}


def _open(data: bytes) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        # Pillow refuses at open (header only) when it promises more than twice its own limit
        raise UploadError("image too large: its header declares more pixels than any accepted upload", 413) from None
    except UnidentifiedImageError:
        raise UploadError("unsupported upload: not an image file (JPEG, PNG, BMP, WebP, ...)", 415) from None
    except (OSError, ValueError, SyntaxError):
        raise UploadError("corrupt image: the file could not be decoded", 400) from None


def _draft(im: Any, min_side: int | None) -> None:
    """Ask Pillow to decode a JPEG at a reduced scale (in place); other formats are unchanged."""
    if min_side and im.format == "JPEG":
        w, h = im.size
        if min(w, h) > 2 * min_side:
            scale = min(w, h) / min_side
            im.draft("RGB", (max(1, math.ceil(w / scale)), max(1, math.ceil(h / scale))))


def _reduce(im: Any, min_side: int | None) -> Any:
    """`im` shrunk by an integer factor keeping both sides >= `min_side` (the image itself when small)."""
    if not min_side:
        return im
    factor = min(im.size) // min_side
    if factor < 2:
        return im
    return im.reduce(factor)


def _check_size(w: int, h: int, max_pixels: int | None) -> None:
    if max_pixels is not None and w * h > max_pixels:
        raise UploadError(
            f"image too large: {w}x{h} = {w * h:,} pixels; the limit is {max_pixels:,} pixels "
            f"per upload (about {int(math.isqrt(max_pixels))}x{int(math.isqrt(max_pixels))}); "
            f"send a crop or a smaller image",
            413,
        )


def probe_upload(
    data: bytes, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS, draft_min_side: int | None = DRAFT_MIN_SIDE
) -> tuple[int, int]:
    """(width, height) the upload will decode to, from its header alone; UploadError 413/415/400."""
    with _open(data) as im:
        _draft(im, draft_min_side)  # the limit is on what gets decoded: a big JPEG decoded at 1/8 may pass
        w, h = im.size
        _check_size(w, h, max_pixels)
        return w, h


def decode_upload(
    data: bytes, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS, draft_min_side: int | None = DRAFT_MIN_SIDE
) -> np.ndarray:
    """RGB uint8 H x W x 3 image from uploaded bytes (EXIF orientation applied; a large JPEG decoded at a
    reduced scale unless `draft_min_side` is None); UploadError 415 (not an image) / 400 (corrupt) /
    413 (over `max_pixels`)."""
    from PIL import Image, ImageOps

    try:
        with _open(data) as im:
            _draft(im, draft_min_side)
            _check_size(im.width, im.height, max_pixels)
            im.load()
            # Formats without a reduced decoding mode: shrink right after decoding (box filter, fast) so
            # the full-size buffer is the only large one and is freed before the array copy.
            small = _reduce(im, draft_min_side)
            # exif_transpose copies even an upright image: call it only when the tag asks for a turn
            upright = ImageOps.exif_transpose(small) if im.getexif().get(0x0112, 1) != 1 else small
            del small
            rgb = upright if upright.mode == "RGB" else upright.convert("RGB")
            del upright
            arr = np.asarray(rgb, dtype=np.uint8)
            del rgb
    except UploadError:
        raise
    except Image.DecompressionBombError:
        raise UploadError("image too large: its header declares more pixels than any accepted upload", 413) from None
    except (OSError, ValueError, SyntaxError, EOFError):
        raise UploadError("corrupt image: the file could not be decoded", 400) from None
    if arr.ndim != 3 or min(arr.shape[:2]) < 2:
        raise UploadError(f"image too small: {arr.shape[1] if arr.ndim > 1 else 0}x{arr.shape[0]} pixels", 400)
    return arr


class PixelBudget:
    """A weighted asyncio semaphore counting decoded pixels in flight across all requests of one server."""

    def __init__(self, capacity: int, wait_s: float = 10.0) -> None:
        check_positive("capacity", int(capacity))
        if not (math.isfinite(wait_s) and wait_s >= 0):
            raise OptionError("wait_s", f"must be a finite number of seconds >= 0, got {wait_s}")
        self.capacity = int(capacity)
        self.wait_s = float(wait_s)
        self.used = 0
        self.peak = 0  # the most pixels ever held at once (observability and tests)
        self.rejected = 0
        self._cond: asyncio.Condition | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _condition(self) -> asyncio.Condition:
        loop = asyncio.get_running_loop()
        if self._cond is None or self._loop is not loop:  # one app may be driven by several loops (tests)
            self._cond, self._loop = asyncio.Condition(), loop
        return self._cond

    @asynccontextmanager
    async def hold(self, pixels: int) -> AsyncIterator[None]:
        """Reserve `pixels` for the body of the `async with`; 413 if it can never fit, 503 after `wait_s`."""
        pixels = max(1, int(pixels))
        if pixels > self.capacity:
            raise UploadError(
                f"image too large: {pixels:,} decoded pixels exceed the server's whole budget of "
                f"{self.capacity:,} pixels in flight",
                413,
            )
        cond = self._condition()
        async with cond:
            try:
                await asyncio.wait_for(cond.wait_for(lambda: self.used + pixels <= self.capacity), self.wait_s)
            except (asyncio.TimeoutError, TimeoutError):
                self.rejected += 1
                retry = max(1, math.ceil(self.wait_s))
                raise UploadError(
                    f"server busy: {self.used:,} of {self.capacity:,} pixels are being decoded; retry in {retry} s",
                    503,
                    headers={"Retry-After": str(retry)},
                ) from None
            self.used += pixels
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            async with cond:
                self.used -= pixels
                cond.notify_all()


@dataclass
class UploadPolicy:
    """The service's upload limits: per image, and decoded pixels in flight (see the module docstring)."""

    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    budget: PixelBudget | None = None

    @staticmethod
    def from_memory(
        memory_bytes: int = DEFAULT_MEMORY_BUDGET,
        max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
        max_pixels_in_flight: int | None = None,
        wait_s: float = 10.0,
    ) -> "UploadPolicy":
        """A policy whose pixels in flight default to `memory_bytes / BYTES_PER_PIXEL`."""
        if int(max_image_pixels) < 4:
            raise OptionError("max_image_pixels", f"must be >= 4, got {max_image_pixels}")
        if max_pixels_in_flight is None:
            if not int(memory_bytes) > 0:
                raise OptionError("memory_bytes", f"must be > 0, got {memory_bytes}")
            max_pixels_in_flight = int(memory_bytes) // BYTES_PER_PIXEL
        return UploadPolicy(int(max_image_pixels), PixelBudget(int(max_pixels_in_flight), wait_s))

    @asynccontextmanager
    async def decoded(self, data: bytes, draft_min_side: int | None = DRAFT_MIN_SIDE) -> AsyncIterator[np.ndarray]:
        """The decoded upload, with its pixels reserved in the budget until the `async with` body ends."""
        from starlette.concurrency import run_in_threadpool

        w, h = probe_upload(data, self.max_image_pixels, draft_min_side)  # header only: cheap, in the loop
        assert self.budget is not None
        async with self.budget.hold(w * h):
            image = await run_in_threadpool(decode_upload, data, self.max_image_pixels, draft_min_side)
            try:
                yield image
            finally:
                del image
