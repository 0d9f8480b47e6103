"""Store factories for the conformance suite.

A provider joins the suite by adding one :class:`StoreFactory` to
``FACTORIES``: every test in ``test_store_conformance.py`` then runs against
it. A factory opens a store at a location (a per-test directory it may use or
ignore) and lists its capabilities; a test that needs a capability the store
lacks is skipped, by name, in the fixture that provides it. A factory whose
backend (a broker, a server) cannot be started or reached fails, saying so:
it never skips.
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


# A factory gets only a location: the session broker's address reaches the
# kafka factory through this dict, filled only for tests that run on kafka
# (so other tests never start the broker).
KAFKA: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _kafka_bootstrap_hook(request: pytest.FixtureRequest) -> None:
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("store_factory") == "kafka":
        KAFKA["bootstrap"] = request.getfixturevalue("kafka_bootstrap")


@asynccontextmanager
async def _kafka(location: Path) -> AsyncIterator[WorkflowStore]:
    import hashlib

    from providers.kafka import KafkaStore

    # One topic per location: reopening at the same location reads it back.
    topic = "wf-" + hashlib.sha256(str(location).encode()).hexdigest()[:20]
    # fetch_max_wait: the test broker (Tansu) answers a fetch only when it expires.
    async with KafkaStore(
        bootstrap_servers=KAFKA["bootstrap"], topic=topic, fetch_max_wait=0.01
    ) as store:
        yield store


# The same for the nats factory: the session's NATS server URL, filled only
# for tests that run on nats.
NATS: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _nats_url_hook(request: pytest.FixtureRequest) -> None:
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("store_factory") == "nats":
        NATS["url"] = request.getfixturevalue("nats_url")


@asynccontextmanager
async def _nats(location: Path) -> AsyncIterator[WorkflowStore]:
    import hashlib

    from providers.nats import NatsStore

    # One bucket per location: reopening at the same location reads it back.
    bucket = "wf_" + hashlib.sha256(str(location).encode()).hexdigest()[:20]
    async with NatsStore(NATS["url"], bucket=bucket) as store:
        yield store


# The same for the dapr and inngest factories: the URLs of the session's fake
# servers (tests/fakes), started only for tests that run on them.
HTTP_FAKES: dict[str, str] = {}
INNGEST_EVENT_KEY = "conformance-event-key"


@pytest.fixture(scope="session")
def _http_fakes(request: pytest.FixtureRequest) -> dict[str, str]:
    from tests.fakes.dapr_server import FakeDapr
    from tests.fakes.inngest_server import FakeInngest

    dapr = FakeDapr().start()
    request.addfinalizer(dapr.stop)
    inngest = FakeInngest(event_key=INNGEST_EVENT_KEY).start()
    request.addfinalizer(inngest.stop)
    return {"dapr": dapr.url, "inngest": inngest.url}


@pytest.fixture(autouse=True)
def _http_fakes_hook(request: pytest.FixtureRequest) -> None:
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("store_factory") in ("dapr", "inngest"):
        HTTP_FAKES.update(request.getfixturevalue("_http_fakes"))


@asynccontextmanager
async def _dapr(location: Path) -> AsyncIterator[WorkflowStore]:
    import hashlib

    from providers.dapr import DaprStore

    # One key prefix per location: reopening at the same location reads it back.
    prefix = "wf-" + hashlib.sha256(str(location).encode()).hexdigest()[:20] + "-"
    async with DaprStore(HTTP_FAKES["dapr"], key_prefix=prefix) as store:
        yield store


@asynccontextmanager
async def _inngest(location: Path) -> AsyncIterator[WorkflowStore]:
    import hashlib

    from providers.inngest import InngestStore

    # One path prefix (a namespace of the fake server) per location.
    base_url = HTTP_FAKES["inngest"] + "/" + hashlib.sha256(str(location).encode()).hexdigest()[:20]
    async with InngestStore(base_url, event_key=INNGEST_EVENT_KEY) as store:
        yield store


FACTORIES: dict[str, StoreFactory] = {
    factory.name: factory
    for factory in (
        StoreFactory("inmemory", _inmemory),
        StoreFactory("sqlite", _sqlite, frozenset({DURABLE})),
        StoreFactory("kafka", _kafka, frozenset({DURABLE})),
        StoreFactory("nats", _nats, frozenset({DURABLE})),
        StoreFactory("dapr", _dapr, frozenset({DURABLE})),
        StoreFactory("inngest", _inngest, frozenset({DURABLE})),
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
