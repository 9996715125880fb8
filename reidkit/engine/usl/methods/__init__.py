"""The registry of unsupervised methods: ``register_usl_method("name")`` on a :class:`USLMethod` subclass."""
from __future__ import annotations

from typing import Any

from reidkit.registry import Registry

USL_METHODS: Registry[Any] = Registry("USL method", "usl.method")


def register_usl_method(name: str, cls: Any = None, *, overwrite: bool = False) -> Any:
    """Register a :class:`~reidkit.engine.usl.methods.base.USLMethod` subclass (decorator or call)."""
    return USL_METHODS.register(name, cls, overwrite=overwrite)


# The built-in methods, one line each (imported after the registry exists: they register themselves).
from reidkit.engine.usl.methods import contrast, dec, ssg  # noqa: E402,F401
from reidkit.engine.usl.methods.base import Round, USLMethod  # noqa: E402

__all__ = ["USL_METHODS", "Round", "USLMethod", "register_usl_method"]
