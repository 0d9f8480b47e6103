"""The provider registry: executors by name (``register`` / ``new`` / ``list_providers``)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._errors import InvalidArgumentError
from ._executor import DurableExecutor
from ._store import WorkflowStore


@dataclass
class Config:
    """What a provider factory gets: a store, and provider-specific ``extra`` settings."""

    store: WorkflowStore | None = None
    extra: dict[str, Any] = field(default_factory=dict)


Factory = Callable[[Config], DurableExecutor]


class ProviderRegistry:
    """Executor factories by name. The module functions use one shared instance."""

    def __init__(self) -> None:
        self._factories: dict[str, Factory] = {}
        self._lock = threading.Lock()

    def register(self, name: str, factory: Factory) -> None:
        """Register (or replace) the factory called ``name``."""
        if not isinstance(name, str) or not name:
            raise InvalidArgumentError(f"provider name must be a non-empty string, got {name!r}")
        if not callable(factory):
            raise InvalidArgumentError(f"factory for provider {name!r} must be callable")
        with self._lock:
            self._factories[name] = factory

    def new(self, name: str, config: Config | None = None) -> DurableExecutor:
        """Build an executor with the factory called ``name``."""
        with self._lock:
            factory = self._factories.get(name)
            known = sorted(self._factories)
        if factory is None:
            raise InvalidArgumentError(
                f"no workflow provider named {name!r}; registered: {', '.join(known) or 'none'}"
            )
        if config is not None and not isinstance(config, Config):
            raise InvalidArgumentError(f"config must be a Config, got {type(config).__name__}")
        return factory(config or Config())

    def list_providers(self) -> list[str]:
        """The registered names, sorted."""
        with self._lock:
            return sorted(self._factories)


_DEFAULT_KEYS = frozenset({"hooks", "workflows", "activities", "activity_threads"})


def _default_factory(config: Config) -> DurableExecutor:
    from ._embedded import DefaultExecutor

    unknown = set(config.extra) - _DEFAULT_KEYS
    if unknown:
        raise InvalidArgumentError(
            f"unknown Config.extra keys for provider 'default': {', '.join(sorted(unknown))} "
            f"(accepted: {', '.join(sorted(_DEFAULT_KEYS))})"
        )
    return DefaultExecutor(store=config.store, **config.extra)


registry = ProviderRegistry()
registry.register("default", _default_factory)


def register(name: str, factory: Factory) -> None:
    """Register an executor factory under ``name`` in the shared registry."""
    registry.register(name, factory)


def new(name: str, config: Config | None = None) -> DurableExecutor:
    """Create an executor from the shared registry; ``"default"`` is always there."""
    return registry.new(name, config)


def list_providers() -> list[str]:
    """Names in the shared registry, sorted."""
    return registry.list_providers()
