"""User plug-ins: modules or files whose import registers parts (backbones, datasets, losses, USL methods).

Sources, in order: the ``reidkit.plugins`` entry-point group of installed packages, the
``REIDKIT_PLUGINS`` environment variable (entries separated by ``os.pathsep``), and each
``--plugin`` of the command line (a module name or a path to a ``.py`` file; repeatable).
Each is imported once per process. A checkpoint records the plug-ins loaded when it was written
(``"plugins"``); loading it never imports them (a recorded name is the file's word, and importing it
would run code the user never named): a checkpoint whose parts are not registered stops with one
error listing the recorded plug-ins not loaded and asking for ``--plugin``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from reidkit.errors import ReIDError

__all__ = [
    "ENTRY_POINT_GROUP",
    "ENV_VAR",
    "load_plugin",
    "load_plugins",
    "loaded_plugins",
    "missing_recorded",
    "recorded_plugins_error",
]

ENV_VAR = "REIDKIT_PLUGINS"
ENTRY_POINT_GROUP = "reidkit.plugins"
_LOADED: dict[str, Any] = {}  # spec as recorded (absolute file path or module name) -> module


def _is_file_spec(spec: str) -> bool:
    return spec.endswith(".py") or os.sep in spec or (os.altsep is not None and os.altsep in spec)


def load_plugin(spec: str) -> str:
    """Import one plug-in (a module name or a ``.py`` file) unless already imported; its recorded name."""
    spec = str(spec).strip()
    if not spec:
        raise ReIDError("plug-in: an empty name; expected a module name or a path to a .py file")
    if _is_file_spec(spec):
        path = Path(spec).expanduser().resolve()
        key = str(path)
        if key in _LOADED:
            return key
        if not path.is_file():
            raise ReIDError(f"plug-in {spec}: no such file")
        name = f"reidkit_plugin_{path.stem}_{abs(hash(key)) % 10**8}"
        mod_spec = importlib.util.spec_from_file_location(name, path)
        if mod_spec is None or mod_spec.loader is None:
            raise ReIDError(f"plug-in {spec}: cannot be imported as a Python file")
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules[name] = module
        _LOADED[key] = module  # before executing: a plug-in that imports itself is not run twice
        try:
            mod_spec.loader.exec_module(module)
        except ReIDError:
            _LOADED.pop(key, None)
            raise
        except Exception as exc:
            _LOADED.pop(key, None)
            raise ReIDError(f"plug-in {spec}: importing it failed: {type(exc).__name__}: {exc}") from exc
        return key
    if spec in _LOADED:
        return spec
    try:
        _LOADED[spec] = importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        if exc.name and spec.startswith(exc.name):
            raise ReIDError(
                f"plug-in {spec!r}: no such module (give a module name on the Python path or a path to a .py file)"
            ) from None
        raise ReIDError(f"plug-in {spec!r}: importing it failed: {exc}") from exc
    except Exception as exc:
        _LOADED.pop(spec, None)
        raise ReIDError(f"plug-in {spec!r}: importing it failed: {type(exc).__name__}: {exc}") from exc
    return spec


def load_plugins(specs: Iterable[str] = (), *, env: bool = True, entry_points: bool = True) -> list[str]:
    """Import the entry-point plug-ins, ``$REIDKIT_PLUGINS`` and ``specs``; the recorded names, in order."""
    names: list[str] = []
    if entry_points:
        from importlib.metadata import entry_points as eps

        for ep in eps(group=ENTRY_POINT_GROUP):
            if ep.value not in _LOADED:
                try:
                    _LOADED[ep.value] = ep.load()
                except Exception as exc:
                    raise ReIDError(
                        f"plug-in {ep.name} (entry point {ep.value} of group {ENTRY_POINT_GROUP}): "
                        f"{type(exc).__name__}: {exc}"
                    ) from exc
            names.append(ep.value)
    if env:
        names += [load_plugin(s) for s in os.environ.get(ENV_VAR, "").split(os.pathsep) if s.strip()]
    names += [load_plugin(s) for s in specs]
    return names


def loaded_plugins() -> list[str]:
    """The plug-ins imported in this process (what a checkpoint records)."""
    return list(_LOADED)


def _recorded_list(recorded: Any, origin: Any) -> list[str]:
    if not recorded:
        return []
    if not isinstance(recorded, (list, tuple)) or not all(isinstance(s, str) for s in recorded):
        raise ReIDError(f"checkpoint {origin}: 'plugins' must be a list of module names or file paths")
    return list(recorded)


def missing_recorded(recorded: Any, origin: Any = None) -> list[str]:
    """The plug-ins a checkpoint recorded (``ckpt["plugins"]``) that this process has not imported.

    Nothing is imported: a checkpoint is data, and the names in it are the file's word."""
    return [spec for spec in _recorded_list(recorded, origin) if spec not in _LOADED]


def recorded_plugins_error(recorded: Any, origin: Any, cause: Exception) -> ReIDError:
    """One error for a checkpoint whose parts are not registered: what is missing, the recorded plug-ins
    not loaded, and the flag that loads them."""
    kind, name = getattr(cause, "kind", ""), getattr(cause, "name", None)
    what = (
        f"the {kind} {name!r}, which is not registered"
        if kind and name is not None
        else f"parts that are not registered ({cause})"
    )
    missing = missing_recorded(recorded, origin)
    if not missing:
        return ReIDError(
            f"checkpoint {origin} needs {what}; if a plug-in of yours registers it, pass it with "
            f"--plugin (or {ENV_VAR})"
        )
    return ReIDError(
        f"checkpoint {origin} needs {what}; it was written with the plug-in(s) {', '.join(missing)}, "
        f"which are not loaded: loading a checkpoint never imports code, so pass each with --plugin "
        f"(or {ENV_VAR}) if you trust it"
    )
