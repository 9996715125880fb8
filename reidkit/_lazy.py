"""Lazy public names for package ``__init__`` files, so importing a package stays cheap."""

from __future__ import annotations

import importlib
import warnings
from typing import Any, Callable, Mapping, Sequence


def lazy_getattr(
    package: str, names: Mapping[str, str], moved: Mapping[str, str] | None = None
) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``names[attr]`` on first use and returns its ``attr``.

    ``moved``: deprecated names of the package, each mapped to where it moved (``"module.name"``); using one
    warns (DeprecationWarning, naming the new place) and returns the object from there.
    """
    moved = moved or {}

    def __getattr__(name: str) -> Any:
        if name in names:
            return getattr(importlib.import_module(names[name]), name)
        if name in moved:
            module, _, attr = moved[name].rpartition(".")
            warnings.warn(
                f"{package}.{name} is deprecated: it moved to {moved[name]}; the old name will be removed",
                DeprecationWarning,
                stacklevel=2,
            )
            return getattr(importlib.import_module(module), attr)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


def lazy_module(
    package: str, by_module: Mapping[str, Sequence[str]], moved: Mapping[str, str] | None = None
) -> tuple[list[str], Callable[[str], Any]]:
    """(``__all__``, ``__getattr__``) of a package whose public names live in submodules: ``by_module`` maps
    each module to the names it holds (``{"reidkit.x.a": ["f", "g"]}``); ``moved`` as for :func:`lazy_getattr`."""
    names = {name: module for module, held in by_module.items() for name in held}
    return list(names), lazy_getattr(package, names, moved)
