"""Lazy public names for package ``__init__`` files, so importing a package stays cheap."""

from __future__ import annotations

import importlib
import warnings
from typing import Any, Callable, Mapping


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
