"""A small keyed registry filled by a decorator; the one mechanism behind every table of formulas."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from inspector.errors import RegistryError

K = TypeVar("K")
F = TypeVar("F", bound=Callable)


class Registry(Generic[K, F]):
    """Maps keys (op overload packets, module types, format names) to functions.

    ``@registry.register(key, ...)`` binds a function to one or more keys and refuses duplicates.
    ``lookup_type`` walks a class's MRO so that subclasses of a registered layer are covered.
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._table: dict[K, F] = {}
        self._key_by_type: dict[type, K | None] = {}  # lookup_key's answers; cleared on every change
        self.version = 0  # bumped by every change: what readers cache their derived tables by

    def register(self, *keys: K) -> Callable[[F], F]:
        def bind(fn: F) -> F:
            for key in keys:
                if key in self._table:
                    raise RegistryError(f"{self.what}: {key!r} is already registered")
                self._table[key] = fn
            self._forget()
            return fn
        return bind

    def remove(self, key: K) -> F:
        """Take ``key`` out (a plugin replacing an entry, a test's throwaway one); KeyError if absent."""
        fn = self._table.pop(key)
        self._forget()
        return fn

    def _forget(self) -> None:
        """Drop the answers worked out from the table as it was (it changed)."""
        self._key_by_type.clear()
        self.version += 1

    @property
    def table(self) -> dict[K, F]:
        """The mapping itself (read it, never write it: register through the decorator)."""
        return self._table

    def get(self, key: K, default: F | None = None) -> F | None:
        return self._table.get(key, default)

    def lookup_type(self, cls: type) -> F | None:
        """The function registered for ``cls`` or its nearest registered base class."""
        key = self.lookup_key(cls)
        return None if key is None else self._table[key]

    def lookup_key(self, cls: type) -> K | None:
        """The key registered for ``cls``: ``cls`` itself or its nearest registered base (None: none)."""
        if cls in self._key_by_type:
            return self._key_by_type[cls]
        found = next((b for b in cls.__mro__ if b in self._table), None)
        self._key_by_type[cls] = found  # type: ignore[assignment]
        return found  # type: ignore[return-value]

    def __contains__(self, key: object) -> bool:
        return key in self._table

    def __iter__(self) -> Iterator[K]:
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def keys(self) -> Iterable[K]:
        return self._table.keys()
