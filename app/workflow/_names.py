"""Names of workflow and activity functions, and the table that resolves them.

A restarted process finds a workflow's code by the name recorded at start,
so every workflow (and, for remote workers, every activity) has a stable
name: the function's ``__name__`` unless registered under another one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ._errors import InvalidArgumentError

NAME_ATTR = "__workflow_name__"

Registrable = Iterable[Callable[..., Any]] | Mapping[str, Callable[..., Any]]


def _default_name(fn: Callable[..., Any]) -> str:
    explicit = getattr(fn, NAME_ATTR, None)
    if isinstance(explicit, str) and explicit:
        return explicit
    name = getattr(fn, "__name__", None)
    if not isinstance(name, str) or not name or name == "<lambda>":
        raise InvalidArgumentError(
            f"{fn!r} has no usable name; register it under an explicit name "
            "(e.g. workflows={'my_name': fn})"
        )
    return name


def activity_name(fn: Callable[..., Any]) -> str:
    """The name an activity is recorded under."""
    return _default_name(fn)


def named(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator giving a workflow or activity an explicit, stable name."""
    if not isinstance(name, str) or not name:
        raise InvalidArgumentError(f"name must be a non-empty string, got {name!r}")

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        setattr(fn, NAME_ATTR, name)
        return fn

    return wrap


class FunctionTable:
    """Functions by name, both ways; one kind ("workflow" or "activity") per table."""

    def __init__(self, kind: str, functions: Registrable = (), plural: str = "") -> None:
        self.kind = kind
        self.plural = plural or f"{kind}s"
        self._by_name: dict[str, Callable[..., Any]] = {}
        self._names: dict[int, str] = {}
        self.add_all(functions)

    def add_all(self, functions: Registrable) -> None:
        if isinstance(functions, Mapping):
            for name, fn in functions.items():
                self.add(fn, name)
        else:
            for fn in functions:
                self.add(fn)

    def add(self, fn: Callable[..., Any], name: str | None = None) -> str:
        if not callable(fn):
            raise InvalidArgumentError(f"{self.kind} {fn!r} is not callable")
        name = name or _default_name(fn)
        existing = self._by_name.get(name)
        if existing is not None and existing is not fn:
            raise InvalidArgumentError(
                f"two different {self.plural} are registered as {name!r}; give one an explicit name"
            )
        self._by_name[name] = fn
        self._names.setdefault(id(fn), name)
        return name

    def name_of(self, fn: Callable[..., Any]) -> str:
        """The registered name of ``fn``, registering it under its default name if new."""
        name = self._names.get(id(fn))
        if name is not None and self._by_name.get(name) is fn:
            return name
        return self.add(fn)

    def get(self, name: str) -> Callable[..., Any] | None:
        return self._by_name.get(name)

    def names(self) -> list[str]:
        return sorted(self._by_name)
