"""Optional dependencies: which extra of reidkit installs each, and the one error that names it.

The base install (pyproject.toml, ``[project] dependencies``) trains, evaluates, extracts, builds and serves
galleries and ingests video with the default tracker, on headless OpenCV. A feature that needs more asks for
its extra here, so a missing package is one ``ReIDError`` naming the command to run
(``pip install 'reidkit[deepsort]'``), never an ImportError traceback. tests/test_extras.py checks that each
extra named here exists in pyproject.toml with the package, and that the base install has none of them.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from reidkit.errors import ReIDError

__all__ = ["EXTRAS", "MissingExtra", "install_hint", "missing_extra", "require"]

# module -> (the extra of reidkit, the distribution that provides the module)
EXTRAS: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "matplotlib": ("plots", "matplotlib"),
    "deep_sort_realtime": ("deepsort", "deep-sort-realtime"),
    "trackeval": ("tracks", "trackeval"),
    "distributed": ("dask", "dask[distributed]"),
    "gdown": ("zoo", "gdown"),
    "pymilvus": ("milvus", "pymilvus"),
    "milvus_lite": ("milvus", "milvus-lite"),
}


class MissingExtra(ReIDError):
    """A feature's optional dependency is not installed; the message names the extra that installs it."""


def install_hint(module: str) -> str:
    """The command that installs `module` through its extra: ``pip install 'reidkit[EXTRA]'``."""
    extra = EXTRAS[module.split(".")[0]][0]
    return f"pip install 'reidkit[{extra}]'"


def missing_extra(module: str, feature: str) -> MissingExtra:
    """The error for `feature` when `module` (a key of EXTRAS, or one of its submodules) is not installed."""
    dist = EXTRAS[module.split(".")[0]][1]
    return MissingExtra(f"{feature} needs {dist}, an optional dependency: {install_hint(module)}")


def require(module: str, feature: str) -> ModuleType:
    """`module` imported, or one ReIDError naming the extra that installs it (`feature`: what needs it).

    A module that is installed but fails to import (a broken or clashing install) is named as such, with the
    import's own message: reinstalling the extra is the fix there too."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        root = module.split(".")[0]
        if exc.name is not None and exc.name.split(".")[0] == root:
            raise missing_extra(module, feature) from None
        raise ReIDError(
            f"{feature}: {root} is installed but cannot be imported ({exc}); reinstall it: {install_hint(module)}"
        ) from None
