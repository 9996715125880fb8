"""The registry of unsupervised methods: ``register_usl_method("name")`` on a :class:`USLMethod` subclass."""

from __future__ import annotations

from typing import Any

from reidkit.config.options import part_options
from reidkit.registry import Registry

USL_METHODS: Registry[Any] = Registry("USL method", "usl.method")


def register_usl_method(name: str, cls: Any = None, *, options: type | None = None, overwrite: bool = False) -> Any:
    """Register a :class:`~reidkit.engine.usl.methods.base.USLMethod` subclass (decorator or call).

    ``options`` (default: the class's ``options`` attribute) is the dataclass of the method's own
    keys, set in a recipe under ``usl.<name>.*``.
    """

    return USL_METHODS.register(name, cls, overwrite=overwrite, then=part_options("usl", name, options))


# The built-in methods, one line each (imported after the registry exists: they register themselves).
from reidkit.engine.usl.methods import contrast, dec, ssg  # noqa: E402,F401
from reidkit.engine.usl.methods.base import Round, USLContext, USLMethod  # noqa: E402

__all__ = ["USL_METHODS", "Round", "USLContext", "USLMethod", "register_usl_method"]
