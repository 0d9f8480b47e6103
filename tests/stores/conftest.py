"""Store factories for the conformance suite.

A provider joins the suite by adding one :class:`StoreFactory` to
``FACTORIES``: every test in ``test_store_conformance.py`` then runs against
it. A factory opens a store at a location (a per-test directory it may use or
ignore) and lists its capabilities; a test that needs a capability the store
lacks is skipped, by name, in the fixture that provides it. A factory whose
backend is not reachable (a broker, a server) skips in ``open``, saying so.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from app.workflow._store import AppendingStore, WorkflowStore
from providers.inmemory import InMemoryStore
from providers.sqlite import SQLiteStore

DURABLE = "durable"
"""Closing the store and opening it again at the same location keeps the data."""


@dataclass(frozen=True)
class StoreFactory:
    """How to open one kind of store, and what it can do."""

    name: str
    open: Callable[[Path], AbstractAsyncContextManager[WorkflowStore]]
    capabilities: frozenset[str] = frozenset()


@asynccontextmanager
async def _inmemory(_: Path) -> AsyncIterator[WorkflowStore]:
    store = InMemoryStore()
    try:
        yield store
    finally:
        await store.close()


@asynccontextmanager
async def _sqlite(location: Path) -> AsyncIterator[WorkflowStore]:
    async with SQLiteStore(location / "workflows.db") as store:
        yield store


FACTORIES: dict[str, StoreFactory] = {
    factory.name: factory
    for factory in (
        StoreFactory("inmemory", _inmemory),
        StoreFactory("sqlite", _sqlite, frozenset({DURABLE})),
    )
}


@pytest.fixture(params=list(FACTORIES), ids=str)
def store_factory(request: pytest.FixtureRequest) -> StoreFactory:
    """The factory of the store under test."""
    return FACTORIES[request.param]


@pytest.fixture
def store_location(tmp_path: Path) -> Path:
    """Where the store under test keeps its data (same for every reopen)."""
    location = tmp_path / "store"
    location.mkdir()
    return location


class _Handle:
    """Keeps at most one store of a factory open at a location."""

    def __init__(self, factory: StoreFactory, location: Path) -> None:
        self._factory = factory
        self._location = location
        self._stack: AsyncExitStack | None = None

    async def open(self) -> WorkflowStore:
        await self.close()
        self._stack = AsyncExitStack()
        return await self._stack.enter_async_context(self._factory.open(self._location))

    async def close(self) -> None:
        if self._stack is not None:
            stack, self._stack = self._stack, None
            await stack.aclose()


@pytest.fixture
async def _handle(store_factory: StoreFactory, store_location: Path) -> AsyncIterator[_Handle]:
    handle = _Handle(store_factory, store_location)
    try:
        yield handle
    finally:
        await handle.close()


@pytest.fixture
async def store(_handle: _Handle) -> WorkflowStore:
    """An open store; closed after the test."""
    return await _handle.open()


@pytest.fixture
def appending_store(store: WorkflowStore) -> AppendingStore:
    """The store under test, when it can append (skipped otherwise)."""
    if not isinstance(store, AppendingStore):
        pytest.skip(f"{type(store).__name__} has no append")
    return store


Reopen = Callable[[], Awaitable[WorkflowStore]]


@pytest.fixture
def reopen(store_factory: StoreFactory, store: WorkflowStore, _handle: _Handle) -> Reopen:
    """Close the store under test and open a new one at the same location.

    Skipped for stores that are not durable.
    """
    if DURABLE not in store_factory.capabilities:
        pytest.skip(f"{store_factory.name} store is not {DURABLE}")
    return _handle.open
