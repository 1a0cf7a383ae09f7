"""A name -> implementation table, one per ablation axis (see docs/architecture.md)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from olmo.errors import bad_value

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps the config value of one axis (e.g. ``"rms"``) to what implements it.

    ``field`` is the config field the axis is chosen by, so errors can name it.
    """

    def __init__(self, field: str) -> None:
        self.field = field
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(entry: T) -> T:
            if name in self._entries:
                raise KeyError(f"{self.field}: {name!r} is registered twice")
            self._entries[name] = entry
            return entry

        return add

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise bad_value(self.field, name, self.names()) from None

    def check(self, name: str) -> None:
        self.get(name)

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)
