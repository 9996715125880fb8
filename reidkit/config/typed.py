"""Typed coercion: plain YAML values checked against dataclass annotations, errors naming the key."""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from typing import Any, Literal, Union

from reidkit.errors import ReIDError

__all__ = ["build", "flatten_parts", "plain"]


def plain(obj: Any) -> Any:
    """Nested dicts/lists (tuples become lists) of a value."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class _Mismatch(Exception):
    pass


# Every int a recipe holds ends up in a tensor, a numpy array or SQLite: all 64-bit.
_INT_MAX = 2**63 - 1
_INT_MIN = -(2**63)


def _finite(number: float, key: str, raw: Any) -> float:
    # NaN passes every `x < 0` / `x > 1` check a section makes, and inf overflows them: refuse both here.
    if not math.isfinite(number):
        raise ReIDError(f"config key '{key}' must be a finite number, got {raw!r}")
    return number


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return `value` checked (and minimally converted: int -> float, list -> tuple) against `tp`."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise _Mismatch
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is Literal:
        if value in typing.get_args(tp) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, dict):
            return build(tp, value, key)
        raise _Mismatch
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        item_types = [a for a in typing.get_args(tp) if a is not Ellipsis]
        inner = item_types[0] if item_types else Any
        items = [_coerce_item(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin or tp) is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if not _INT_MIN <= value <= _INT_MAX:
                raise ReIDError(f"config key '{key}' is out of range: {value} (an integer must fit in 64 bits)")
            return value
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _finite(float(value), key, value)
        # YAML 1.1 reads "1e-4" (no dot) as a string; accept it where a float is expected.
        if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
            return _finite(float(value), key, value)
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _Mismatch
    return value


def _coerce_item(value: Any, tp: Any, key: str) -> Any:
    # Element errors name the element, not the whole list.
    try:
        return _coerce(value, tp, key)
    except _Mismatch:
        raise ReIDError(f"config key '{key}' expects {_type_name(tp)}, got {type(value).__name__} {value!r}") from None


def _is_parts(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get("parts"))


def build(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    """Instantiate dataclass `cls` from a dict, rejecting unknown keys and wrong types.

    A section with a ``parts`` field (``field(metadata={"parts": True})``) and a ``PART_KIND``
    class attribute also takes one key per registered part of that kind that declares options
    (``loss.<name>``, ``usl.<name>``), read against the part's options dataclass. A section's
    ``migrate(values, prefix)`` classmethod, when present, first rewrites moved keys (with a warning).
    """
    if not isinstance(values, dict):
        raise ReIDError(f"config section '{prefix or '<root>'}' must be a mapping, got {values!r}")
    migrate = getattr(cls, "migrate", None)
    if callable(migrate):
        values = migrate(dict(values), prefix)
    hints = typing.get_type_hints(cls)
    all_fields = [f for f in dataclasses.fields(cls) if f.init]
    fields = {f.name: f for f in all_fields if not _is_parts(f)}
    parts_field = next((f.name for f in all_fields if _is_parts(f)), None)
    kind = getattr(cls, "PART_KIND", None)
    kwargs: dict[str, Any] = {}
    parts: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            if parts_field and kind:
                from reidkit.config.options import _OPTIONS, read_options

                if key in _OPTIONS.get(kind, {}):
                    parts[key] = read_options(kind, key, value, dotted)
                    continue
                names = list(fields) + sorted(_OPTIONS.get(kind, {}))
            else:
                names = list(fields)
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            where = f"in '{prefix}'" if prefix else "at the top level"
            raise ReIDError(f"unknown config key '{dotted}'{hint}; valid keys {where}: {', '.join(names)}")
        tp = hints.get(key, Any)
        try:
            kwargs[key] = _coerce(value, tp, dotted)
        except _Mismatch:
            raise ReIDError(
                f"config key '{dotted}' expects {_type_name(tp)}, got {type(value).__name__} {value!r}"
            ) from None
    if parts_field:
        kwargs[parts_field] = parts
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # a section's own __post_init__ validation
        raise ReIDError(f"config section '{prefix or '<root>'}': {exc}") from None


def flatten_parts(tree: Any) -> Any:
    """A plain config tree with every section's ``parts`` mapping merged into the section (as a recipe writes it)."""
    if isinstance(tree, dict):
        out = {k: flatten_parts(v) for k, v in tree.items() if k != "parts"}
        if isinstance(tree.get("parts"), dict):
            out.update(flatten_parts(tree["parts"]))
        return out
    if isinstance(tree, list):
        return [flatten_parts(v) for v in tree]
    return tree
