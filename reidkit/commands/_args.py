"""argparse ``type=`` helpers: a bad number stops at parse time, before any model or file is touched.

Each factory takes the flag's name and returns a parser that raises one ReIDError naming the flag
(``cli.main`` prints it as ``error: --id: ...`` and exits 2, like every other user mistake). The
bounds come from :mod:`reidkit.utils.validate`, shared with config keys and loaders: ids in
SQLite's int64, finite numbers, image sides 8..2048.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from reidkit.errors import ReIDError
from reidkit.utils import validate

__all__ = [
    "DeprecatedAlias",
    "at_most",
    "bounded_float",
    "bounded_int",
    "finite_float",
    "nonneg_float",
    "positive_float",
    "positive_int",
    "probability",
    "side",
    "sqlite_id",
]


def bounded_int(flag: str, lo: int, hi: int) -> Callable[[str], int]:
    """An integer in ``lo..hi``."""

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise ReIDError(f"{flag}: expected an integer, got {text!r}") from None
        if not lo <= n <= hi:
            raise ReIDError(f"{flag}: must be in {lo}..{hi}, got {text}")
        return n

    return parse


def at_most(flag: str, hi: int) -> Callable[[str], int]:
    """An integer <= ``hi`` (lower bounds stay with the function that uses it, and its message)."""

    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise ReIDError(f"{flag}: expected an integer, got {text!r}") from None
        if n > hi:
            raise ReIDError(f"{flag}: must be <= {hi}, got {text}")
        return n

    return parse


def int_option(parser: argparse.ArgumentParser, flag: str, hi: int, default: int | None, **kw: Any) -> argparse.Action:
    """``flag N``: an integer <= ``hi`` (:func:`at_most`, the flag named once) with its default; ``kw``: the rest
    of add_argument's keywords (help, metavar)."""
    return parser.add_argument(flag, type=at_most(flag, hi), default=default, **kw)


def bounded_float(flag: str, lo: float, hi: float) -> Callable[[str], float]:
    """A finite number in ``(lo, hi]``."""
    return lambda text: validate.finite(text, flag, lo=lo, hi=hi, lo_open=True)


def positive_int(flag: str) -> Callable[[str], int]:
    """An integer >= 1 that fits in 64 bits."""
    return bounded_int(flag, 1, validate.SQLITE_MAX)


def sqlite_id(flag: str) -> Callable[[str], int]:
    """A gallery id (0..2**63-1, SQLite's INTEGER)."""
    return lambda text: validate.db_id(text, flag)


def finite_float(flag: str) -> Callable[[str], float]:
    """Any finite number (NaN and inf refused)."""
    return lambda text: validate.finite(text, flag)


def nonneg_float(flag: str) -> Callable[[str], float]:
    """A finite number >= 0."""
    return lambda text: validate.finite(text, flag, lo=0.0)


def positive_float(flag: str) -> Callable[[str], float]:
    """A finite number > 0."""
    return lambda text: validate.finite(text, flag, lo=0.0, lo_open=True)


def probability(flag: str) -> Callable[[str], float]:
    """A finite number in [0, 1]."""
    return lambda text: validate.finite(text, flag, lo=0.0, hi=1.0)


def side(flag: str) -> Callable[[str], int]:
    """One side of an input image in pixels (8..2048)."""
    return bounded_int(flag, validate.MIN_SIDE, validate.MAX_SIDE)


class DeprecatedAlias(argparse.Action):
    """An old spelling of an option, still accepted but hidden: ``add_argument("-k", "--k", dest="k",
    action=DeprecatedAlias, new="--topk", type=..., default=argparse.SUPPRESS, help=argparse.SUPPRESS)``
    after the new flag (same dest), so that only the new flag is shown; using it prints a note on stderr."""

    def __init__(self, option_strings: list[str], dest: str, new: str = "", **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        print(f"note: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)
