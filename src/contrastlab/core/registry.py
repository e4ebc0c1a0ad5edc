"""Name -> object registries for datasets, backbones and methods, with helpful errors."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


def suggest(name: str, choices: list[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``choices``, or an empty string."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


class Registry(Generic[T]):
    """A mapping from names to objects, each with a one-line summary for ``contrastlab list``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, tuple[T, str]] = {}

    def register(self, name: str, summary: str) -> Callable[[T], T]:
        def decorate(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._entries[name] = (obj, summary)
            return obj

        return decorate

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise KeyError(
                f"unknown {self.kind} '{name}'{suggest(name, list(self._entries))}; "
                f"available: {', '.join(sorted(self._entries))}"
            )
        return self._entries[name][0]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def summaries(self) -> Iterator[tuple[str, str]]:
        for name in self.names():
            yield name, self._entries[name][1]

    def __contains__(self, name: str) -> bool:
        return name in self._entries
