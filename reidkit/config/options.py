"""Options that travel with a registered part: a dataclass per backbone, loss or USL method.

A part declares its options when it is registered (``register_backbone(name, options=Opts)``,
``register_loss(name, options=Opts)``, ``register_usl_method(name, options=Opts)``) and a recipe
sets them under the part's own name: ``model.options.*`` for the backbone, ``loss.<name>.*`` and
``usl.<name>.*``. They are read by the same typed loader as every other section (unknown key ->
the nearest valid one), so a part added from user code needs no edit of the core config.
This module imports no torch: the built-in parts' option classes live in the config package.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable

from reidkit.config.typed import build
from reidkit.errors import ReIDError

__all__ = ["KINDS", "describe_options", "options_class", "part_options", "read_options", "register_options"]

# kind -> the config prefix its options live under (``{name}`` is the part's name)
KINDS = {
    "backbone": "model.options",
    "loss": "loss.{name}",
    "usl": "usl.{name}",
    "tracker": "tracker.{name}",
    "detector": "detector.{name}",
}
_OPTIONS: dict[str, dict[str, type]] = {kind: {} for kind in KINDS}


def register_options(kind: str, name: str, options: type | None) -> None:
    """Record (or, with None, forget) the options dataclass of part ``name`` of ``kind``."""
    if kind not in _OPTIONS:
        raise ReIDError(f"options: unknown part kind {kind!r}; expected one of {', '.join(KINDS)}")
    if options is None:
        _OPTIONS[kind].pop(name, None)
        return
    if not dataclasses.is_dataclass(options) or not isinstance(options, type):
        raise ReIDError(f"{kind} {name!r}: options must be a dataclass type, got {options!r}")
    for f in dataclasses.fields(options):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ReIDError(f"{kind} {name!r}: option {f.name!r} of {options.__name__} needs a default")
    _OPTIONS[kind][name] = options


def part_options(kind: str, name: str, options: type | None = None) -> Callable[[Any], None]:
    """What registering part ``name`` of ``kind`` records of its options: ``options``, else the part's own
    ``options`` attribute (``Registry.register(..., then=part_options(kind, name, options))``)."""
    return lambda part: register_options(kind, name, options or getattr(part, "options", None))


def options_class(kind: str, name: str) -> type | None:
    """The options dataclass of part ``name`` (None: it declares none)."""
    return _OPTIONS.get(kind, {}).get(name)


def options_prefix(kind: str, name: str) -> str:
    """Where the options of part ``name`` are set in a recipe (``usl.dec``, ``model.options``)."""
    return KINDS[kind].format(name=name)


def read_options(kind: str, name: str, values: Any, prefix: str | None = None) -> Any:
    """The options of part ``name`` built from ``values`` (a mapping, or an instance already built).

    Unknown keys and wrong types raise ReIDError naming ``prefix.key`` (did-you-mean); the
    dataclass's own ``check()`` runs when it has one. None when the part declares no options and
    none were given.
    """
    prefix = prefix or options_prefix(kind, name)
    cls = options_class(kind, name)
    if cls is None:
        if values:
            keys = ", ".join(values) if isinstance(values, dict) else repr(values)
            raise ReIDError(f"config key '{prefix}': {kind} {name!r} declares no options, got {keys}")
        return None
    if isinstance(values, cls):
        opts = values
    else:
        opts = build(cls, dict(values or {}), prefix)
    check = getattr(opts, "check", None)
    if callable(check):
        check()
    return opts


def describe_options(kind: str, name: str) -> list[dict[str, Any]]:
    """One row per option of part ``name``: key (dotted, as set in a recipe), type, default, help."""
    cls = options_class(kind, name)
    if cls is None:
        return []
    from reidkit.config.typed import _type_name

    hints = typing.get_type_hints(cls)
    prefix = options_prefix(kind, name)
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:  # a plugin's options dataclass with a required field: no default to show
            default = None
        rows.append(
            {
                "key": f"{prefix}.{f.name}",
                "type": _type_name(hints.get(f.name, Any)),
                "default": default,
                "help": f.metadata.get("help", ""),
            }
        )
    return rows
