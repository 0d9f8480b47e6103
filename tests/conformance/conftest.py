"""Runtimes the conformance suite runs on, and a hook recorder to await events.

A runtime factory opens an executor that runs the suite's workflows and
activities (``tests.conformance.workflows``). Each factory keeps its store
between ``open`` calls, so a test can stop an executor and open a new one on
the same state (the ``restart`` capability). A factory that lacks a
capability makes the tests needing it skip by name, from a fixture.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from app.testing import HookRecorder
from app.workflow import DefaultExecutor, Hooks, Signal, WorkflowStore
from providers.inmemory import InMemoryStore
from providers.sqlite import SQLiteStore
from tests.conformance import workflows as suite
from tests.conformance.streaming_runtime import BROKER as STREAMING_BROKER
from tests.conformance.streaming_runtime import streaming_runtime

WAIT = 10.0  # upper bound for any single await in the suite
# History timestamps come from wall clocks read at different moments (and on
# Temporal, by the server when it records each event), so a timer that fires
# on time can be stamped a fraction of a millisecond "early" against the event
# it is measured from. Early by more than this is a real defect.
CLOCK_SLACK = 0.005
# Temporal measures a workflow's execution timeout from when it accepted the
# start request, a moment before it stamps workflow_execution_started (13 ms
# seen on a loaded machine): against that event its timeout can look early.
TEMPORAL_START_SLACK = 0.1


def start_slack(runtime: Runtime) -> float:
    """How early a workflow timeout may look against the run's ``workflow_started``."""
    return TEMPORAL_START_SLACK if runtime.name == "temporal" else CLOCK_SLACK


Recorder = HookRecorder  # hooks that record each call and can be awaited


Opener = Callable[["Runtime", "Hooks | None", dict[str, Any]], AbstractAsyncContextManager[Any]]
"""How a runtime opens one executor: ``(runtime, hooks, overrides)``.

``overrides`` may hold ``workflows`` and ``activities`` (the suite's lists
otherwise) and runtime-specific options.
"""


@dataclass
class Runtime:
    """How to open executors of one runtime over one persistent store.

    The default opener builds a :class:`DefaultExecutor` (the embedded
    runtime) over ``store()``; other runtimes pass their own ``opener``. The
    capability ``embedded`` marks runtimes whose executor is a
    ``DefaultExecutor`` (tests of its own extras need it).
    """

    name: str
    make_store: Callable[[], WorkflowStore]
    capabilities: set[str] = field(default_factory=set)
    stores: list[WorkflowStore] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    opener: Opener | None = None

    def store(self) -> WorkflowStore:
        if not self.stores:
            self.stores.append(self.make_store())
        return self.stores[-1]

    @asynccontextmanager
    async def open(self, hooks: Hooks | None = None, **overrides: Any) -> AsyncIterator[Any]:
        if self.opener is not None:
            async with self.opener(self, hooks, overrides) as executor:
                yield executor
            return
        executor = DefaultExecutor(
            store=self.store(),
            **self.options,
            hooks=hooks,
            workflows=overrides.pop("workflows", suite.workflows),
            activities=overrides.pop("activities", suite.activities),
            **overrides,
        )
        async with executor:
            yield executor

    async def close(self) -> None:
        for store in self.stores:
            close = getattr(store, "close", None)
            if close is not None:
                await close()


def _memory(tmp_path: Path) -> Runtime:
    return Runtime("embedded-memory", InMemoryStore, {"restart", "embedded"})


def _sqlite(tmp_path: Path) -> Runtime:
    return Runtime(
        "embedded-sqlite",
        lambda: SQLiteStore(tmp_path / "wf.db"),
        {"restart", "durable", "embedded"},
    )


def _always_replay(tmp_path: Path) -> Runtime:
    # rebuilds each workflow from history after every step: catches non-determinism early
    return Runtime(
        "embedded-always-replay",
        InMemoryStore,
        {"restart", "embedded"},
        options={"always_replay": True},
    )


# A runtime factory gets only tmp_path: the session broker's address reaches
# the kafka runtime through this dict, filled only for tests that run on it
# (so other tests never start the broker).
KAFKA: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _kafka_bootstrap_hook(request: pytest.FixtureRequest) -> None:
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("runtime") == "embedded-kafka":
        KAFKA["bootstrap"] = request.getfixturevalue("kafka_bootstrap")


def _kafka(tmp_path: Path) -> Runtime:
    import dataclasses
    import hashlib

    from providers.kafka import KafkaStore

    topic = "wf-" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:20]

    def make_store() -> WorkflowStore:
        # fetch_max_wait: the test broker (Tansu) answers a fetch only when it expires.
        return KafkaStore(bootstrap_servers=KAFKA["bootstrap"], topic=topic, fetch_max_wait=0.01)

    @asynccontextmanager
    async def fresh_store(
        rt: Runtime, hooks: Hooks | None, overrides: dict[str, Any]
    ) -> AsyncIterator[Any]:
        # Each executor gets a new store that reads the topic from the start,
        # as a restarted process would; all are closed with the runtime.
        rt.stores.append(rt.make_store())
        async with dataclasses.replace(rt, opener=None).open(hooks, **overrides) as executor:
            yield executor

    return Runtime(
        "embedded-kafka", make_store, {"restart", "durable", "embedded"}, opener=fresh_store
    )


# The same for the nats runtime: the session's NATS server URL.
NATS: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _nats_url_hook(request: pytest.FixtureRequest) -> None:
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("runtime") == "embedded-nats":
        NATS["url"] = request.getfixturevalue("nats_url")


def _nats(tmp_path: Path) -> Runtime:
    import dataclasses
    import hashlib

    from providers.nats import NatsStore

    bucket = "wf_" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:20]

    @asynccontextmanager
    async def fresh_store(
        rt: Runtime, hooks: Hooks | None, overrides: dict[str, Any]
    ) -> AsyncIterator[Any]:
        # Each executor gets a new store on the same bucket, as a restarted
        # process would; all are closed with the runtime.
        rt.stores.append(rt.make_store())
        async with dataclasses.replace(rt, opener=None).open(hooks, **overrides) as executor:
            yield executor

    return Runtime(
        "embedded-nats",
        lambda: NatsStore(NATS["url"], bucket=bucket),
        {"restart", "durable", "embedded"},
        opener=fresh_store,
    )


# The same for the temporal runtime: the session's Temporal dev server.
TEMPORAL: dict[str, str] = {}


@pytest.fixture(autouse=True)
def _temporal_address_hook(request: pytest.FixtureRequest) -> None:
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("runtime") == "temporal":
        TEMPORAL["address"] = request.getfixturevalue("temporal_address")


def _temporal(tmp_path: Path) -> Runtime:
    from tests.providers_temporal.runtime import temporal_runtime

    # TemporalExecutor, one fresh namespace per test (the suite reuses workflow ids)
    # Temporal replays a workflow when it has a task, not when a worker starts
    return temporal_runtime(
        Runtime,
        lambda: TEMPORAL["address"],
        {"restart", "no-replay-at-start", "no-pause", "no-reset"},
    )


RUNTIMES = {
    "embedded-memory": _memory,
    "embedded-sqlite": _sqlite,
    "embedded-always-replay": _always_replay,
    "embedded-kafka": _kafka,
    "embedded-nats": _nats,
    "temporal": _temporal,
    "streaming": lambda tmp_path: streaming_runtime(tmp_path, Runtime),
}


@pytest.fixture(autouse=True)
def _streaming_broker_hook(request: pytest.FixtureRequest) -> None:
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("runtime") == "streaming":
        STREAMING_BROKER["bootstrap"] = request.getfixturevalue("kafka_bootstrap")


@pytest.fixture(params=sorted(RUNTIMES))
async def runtime(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Runtime]:
    rt = RUNTIMES[request.param](tmp_path)
    try:
        yield rt
    finally:
        await rt.close()


@pytest.fixture
def restartable(runtime: Runtime) -> Runtime:
    if "restart" not in runtime.capabilities:
        pytest.skip(f"{runtime.name} cannot restart its executor in a test")
    return runtime


@pytest.fixture
def embedded(runtime: Runtime) -> Runtime:
    if "embedded" not in runtime.capabilities:
        pytest.skip(f"{runtime.name} is not the embedded DefaultExecutor")
    return runtime


# Tests that need more than their fixtures ask for, by name: the behaviour they
# need. A runtime without it has "no-<behaviour>" among its capabilities.
NEEDS = {"test_changed_code_raises_non_determinism_and_recovers": "replay-at-start"}


@pytest.fixture(autouse=True)
def _needs(request: pytest.FixtureRequest) -> None:
    need = NEEDS.get(request.node.originalname)
    if need is not None and "runtime" in request.fixturenames:
        rt: Runtime = request.getfixturevalue("runtime")
        if f"no-{need}" in rt.capabilities:
            pytest.skip(f"{rt.name} cannot {need.replace('-', ' ')}")


@pytest.fixture
def resettable(runtime: Runtime) -> Runtime:
    if "no-reset" in runtime.capabilities:
        pytest.skip(f"{runtime.name} has no reset (it raises, naming the feature)")
    return runtime


@pytest.fixture
def pausable(runtime: Runtime) -> Runtime:
    if "no-pause" in runtime.capabilities:
        pytest.skip(f"{runtime.name} has no pause (it raises, naming the feature)")
    return runtime


@pytest.fixture
def long_histories(runtime: Runtime) -> Runtime:
    if runtime.options.get("always_replay"):
        pytest.skip("always-replay mode is quadratic in history length")
    return runtime


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


async def signal(executor: Any, workflow_id: str, name: str, payload: Any = None) -> None:
    await executor.signal(workflow_id, Signal(name=name, payload=payload))
