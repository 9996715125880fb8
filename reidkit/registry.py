"""One registry class for every pluggable kind (backbones, datasets, losses, USL methods).

A registry maps a name to an object (a builder function, a class, an entry record).
``REGISTRY.register("name")`` is a decorator (or ``register("name", obj)`` a direct call), so a
user adds a part from their own code without editing the package; ``get`` raises one
:class:`ReIDError` naming the kind, the unknown name, the nearest valid name and all valid names.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from reidkit.errors import ReIDError, UnknownName

T = TypeVar("T")

__all__ = ["Registry"]


class Registry(Generic[T]):
    """Name -> object, with did-you-mean errors. ``key`` names the config key users set."""

    def __init__(self, kind: str, key: str | None = None) -> None:
        self.kind = kind
        self.key = key
        self._items: dict[str, T] = {}

    def register(
        self, name: str, obj: T | None = None, *, overwrite: bool = False, then: Callable[[T], Any] | None = None
    ) -> Any:
        """Register ``obj`` under ``name``; without ``obj`` return a decorator that does it. ``then`` is called
        with the object once registered (a part's options: reidkit.config.options.part_options)."""
        if not isinstance(name, str) or not name:
            raise ReIDError(f"{self.kind} registry: a name must be a non-empty string, got {name!r}")

        def add(item: T) -> T:
            if name in self._items and not overwrite and self._items[name] is not item:
                raise ReIDError(f"{self.kind} {name!r} is already registered; pass overwrite=True to replace it")
            self._items[name] = item
            if then is not None:
                then(item)
            return item

        if obj is None:
            return add
        return add(obj)

    def unregister(self, name: str) -> None:
        """Remove ``name`` (no error when absent): for tests and plugins that clean up."""
        self._items.pop(name, None)

    def get(self, name: str) -> T:
        """The object registered as ``name``; one clear error with the nearest name otherwise."""
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise self.unknown(name) from None

    def unknown(self, name: Any) -> UnknownName:
        """The error for an unknown name (raise it): the message of :meth:`unknown_message`."""
        return UnknownName(self.unknown_message(name), self.kind, name)

    def unknown_message(self, name: Any) -> str:
        """The error text for an unknown name (nearest match first, then every valid name)."""
        names = list(self._items)
        close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        where = f" ({self.key})" if self.key else ""
        return f"unknown {self.kind} {name!r}{where}{hint}; valid names: {', '.join(names)}"

    def names(self) -> list[str]:
        """Registered names in registration order."""
        return list(self._items)

    def items(self) -> list[tuple[str, T]]:
        """(name, object) pairs in registration order."""
        return list(self._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self)} names)"

    # dict-like conveniences kept for callers that treated registries as dicts
    def keys(self) -> list[str]:
        """Same as :meth:`names`."""
        return self.names()

    def values(self) -> list[T]:
        """The registered objects in order."""
        return list(self._items.values())


def make_register(registry: Registry[Any]) -> Callable[..., Any]:
    """A module-level ``register_*`` function bound to ``registry``."""

    def register(name: str, obj: Any = None, *, overwrite: bool = False) -> Any:
        return registry.register(name, obj, overwrite=overwrite)

    register.__doc__ = f"Register a {registry.kind} by name (decorator or direct call)."
    return register
