"""Range checks shared by the CLI, the config loader and the model loaders (no torch import).

Every number a user gives is checked before it is used: finite (NaN passes every ``x < 0``
test, ``inf`` overflows the first ``int()``), in the range the code can honour, and an id fits
SQLite's signed 64-bit integer. Each check raises one OptionError naming what was given: a library
caller passes the parameter's name (``size``), which the CLI prints as the verb's flag (``--size``).
"""

from __future__ import annotations

import ipaddress
import math
import socket
from typing import Any

from reidkit.errors import OptionError

__all__ = [
    "MAX_SIDE",
    "MIN_SIDE",
    "SQLITE_MAX",
    "check_host",
    "check_hw",
    "check_positive",
    "db_id",
    "finite",
    "parse_hw",
]

SQLITE_MAX = 2**63 - 1
# A ReID input is a person crop: 256x128 is the usual, 384x128 the tallest recipe. 2048 a side
# is 8x past any published recipe and keeps one 3-channel float image under 50 MB.
MIN_SIDE = 8
MAX_SIDE = 2048


def finite(value: Any, what: str, lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> float:
    """``value`` as a finite float within ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``), else OptionError naming ``what``."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise OptionError(what, f"expected a number, got {value!r}") from None
    if not math.isfinite(x):
        raise OptionError(what, f"must be a finite number, got {value!r}")
    if lo is not None and (x <= lo if lo_open else x < lo):
        raise OptionError(what, f"must be {'>' if lo_open else '>='} {lo:g}, got {value!r}")
    if hi is not None and x > hi:
        raise OptionError(what, f"must be <= {hi:g}, got {value!r}")
    return x


def check_positive(what: str, value: Any) -> None:
    """OptionError naming ``what`` unless ``value`` is None or a number >= 1 (a count, a size, a k)."""
    if value is not None and not value >= 1:  # NaN is refused too
        raise OptionError(what, f"must be >= 1, got {value}")


def db_id(value: Any, what: str) -> int:
    """A gallery id: an integer in ``0 .. 2**63-1`` (SQLite's INTEGER), else OptionError naming ``what``."""
    try:
        n = int(str(value).strip())
    except (TypeError, ValueError):
        raise OptionError(what, f"expected an integer id, got {value!r}") from None
    if not 0 <= n <= SQLITE_MAX:
        raise OptionError(what, f"id {value} is out of range (0..{SQLITE_MAX})")
    return n


def check_hw(size: Any, what: str, lo: int = MIN_SIDE, hi: int = MAX_SIDE) -> tuple[int, int]:
    """``(H, W)`` with each side an integer in ``lo..hi``, else OptionError naming ``what`` (before anything is allocated).

    ``size``: anything (a config or request value); what is not a pair of integers is the error."""
    try:
        h, w = (int(v) for v in size)
        exact = all(float(v) == int(v) for v in size)
    except (TypeError, ValueError, OverflowError):
        raise OptionError(what, f"expected (height, width), got {size!r}") from None
    if not exact or not (lo <= h <= hi and lo <= w <= hi):
        raise OptionError(what, f"each side must be an integer in {lo}..{hi} pixels, got {list(size)}")
    return h, w


def parse_hw(text: str, what: str, lo: int = MIN_SIDE, hi: int = MAX_SIDE) -> tuple[int, int]:
    """``"640x640"`` -> ``(640, 640)`` checked by :func:`check_hw`."""
    parts = str(text).lower().replace("*", "x").split("x")
    try:
        size = [int(v) for v in parts]
        if len(size) != 2:
            raise ValueError
    except ValueError:
        raise OptionError(what, f"expected HEIGHTxWIDTH such as 640x640, got {text!r}") from None
    return check_hw(size, what, lo, hi)


def check_host(host: str, what: str = "host") -> str:
    """A bind address that is an IP literal or a name this machine resolves, else OptionError naming it."""
    text = str(host).strip()
    if not text:
        raise OptionError(what, "empty address")
    try:
        ipaddress.ip_address(text.strip("[]"))
        return text
    except ValueError:
        pass
    if all(part.isdigit() for part in text.split(".")):
        raise OptionError(what, f"{text!r} is not a valid IP address")
    try:
        socket.getaddrinfo(text, None)
    except (socket.gaierror, UnicodeError, OSError) as exc:
        raise OptionError(what, f"cannot resolve {text!r} ({exc})") from None
    return text
