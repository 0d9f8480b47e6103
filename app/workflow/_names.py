"""Names of workflow and activity functions, and the table that resolves them.

A restarted process finds a workflow's code by the name recorded at start,
so every workflow (and, for remote workers, every activity) has a stable
name: the function's ``__name__`` unless registered under another one. An
activity may be a bound method of an object that holds a client (a database,
an LLM client); it is named ``ClassName.method_name``. A bound method is a new
object on every attribute access, so the table identifies it by its object and
function, not by ``id()``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Hashable, Iterable, Mapping
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
    if inspect.ismethod(fn):
        owner = fn.__self__
        cls = owner if isinstance(owner, type) else type(owner)
        return f"{cls.__name__}.{name}"
    return name


def _identity(fn: Callable[..., Any]) -> Hashable:
    """What makes two callables the same activity: a bound method is its object and function."""
    if inspect.ismethod(fn):
        return (id(fn.__self__), id(fn.__func__))
    return id(fn)


def _same(a: Callable[..., Any], b: Callable[..., Any]) -> bool:
    if a is b:
        return True
    return (
        inspect.ismethod(a)
        and inspect.ismethod(b)
        and a.__self__ is b.__self__
        and a.__func__ is b.__func__
    )


def _ambiguity(
    kind: str, plural: str, name: str, old: Callable[..., Any], new: Callable[..., Any]
) -> str:
    if inspect.ismethod(old) and inspect.ismethod(new) and old.__func__ is new.__func__:
        return (
            f"two different {type(new.__self__).__name__} objects register their method "
            f"{new.__name__!r} as the {kind} {name!r}; a recorded step could not tell them "
            f"apart: register each under its own name (e.g. activities={{'{name}.a': ..., "
            f"'{name}.b': ...}}) or register one object only"
        )
    return f"two different {plural} are registered as {name!r}; give one an explicit name"


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
        self._names: dict[Hashable, str] = {}
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
        if existing is not None and not _same(existing, fn):
            raise InvalidArgumentError(_ambiguity(self.kind, self.plural, name, existing, fn))
        self._by_name[name] = fn
        self._names.setdefault(_identity(fn), name)
        return name

    def name_of(self, fn: Callable[..., Any]) -> str:
        """The registered name of ``fn``, registering it under its default name if new."""
        name = self._names.get(_identity(fn))
        if name is not None:
            known = self._by_name.get(name)
            if known is not None and _same(known, fn):
                return name
        return self.add(fn)

    def get(self, name: str) -> Callable[..., Any] | None:
        return self._by_name.get(name)

    def names(self) -> list[str]:
        return sorted(self._by_name)
