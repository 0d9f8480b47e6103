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
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


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


_DEFAULT_KEYS = frozenset({"hooks", "workflows", "activities", "activity_threads", "codec"})


def store_backed_factory(
    provider: str,
    make_store: Callable[[dict[str, Any]], WorkflowStore] | None = None,
    store_keys: frozenset[str] = frozenset(),
) -> Factory:
    """A factory for an embedded executor whose store a provider builds.

    ``Config.extra`` may hold the ``DefaultExecutor`` keys (hooks, workflows,
    activities, activity_threads, codec) and ``store_keys``, which are handed to
    ``make_store`` when ``Config.store`` is not given. Any other key fails
    at the call, naming the keys that are accepted.
    """
    accepted = _DEFAULT_KEYS | store_keys

    def factory(config: Config) -> DurableExecutor:
        from ._embedded import DefaultExecutor

        unknown = set(config.extra) - accepted
        if unknown:
            raise InvalidArgumentError(
                f"unknown Config.extra keys for provider {provider!r}: "
                f"{', '.join(sorted(unknown))} (accepted: {', '.join(sorted(accepted))})"
            )
        executor_options = {k: v for k, v in config.extra.items() if k in _DEFAULT_KEYS}
        store = config.store
        built = store is None and make_store is not None
        if built:
            assert make_store is not None
            store = make_store({k: v for k, v in config.extra.items() if k in store_keys})
        return DefaultExecutor(store=store, close_store=built, **executor_options)

    return factory


_default_factory = store_backed_factory("default")


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
