"""Runtimes the conformance suite runs on, and a hook recorder to await events.

A runtime factory opens an executor that runs the suite's workflows and
activities (``tests.conformance.workflows``). Each factory keeps its store
between ``open`` calls, so a test can stop an executor and open a new one on
the same state (the ``restart`` capability). A factory that lacks a
capability makes the tests needing it skip by name, from a fixture.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from app.workflow import DefaultExecutor, Hooks, Signal, WorkflowStore
from providers.inmemory import InMemoryStore
from providers.sqlite import SQLiteStore
from tests.conformance import workflows as suite

WAIT = 10.0  # upper bound for any single await in the suite


class Recorder:
    """Hooks that log every call and let a test await one."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self._changed = asyncio.Condition()

    def _record(self, name: str) -> Callable[[str, Any], Any]:
        async def hook(workflow_id: str, value: Any) -> None:
            async with self._changed:
                self.calls.append((name, workflow_id, value))
                self._changed.notify_all()

        return hook

    def hooks(self) -> Hooks:
        return Hooks(
            on_workflow_start=self._record("workflow_start"),
            on_workflow_complete=self._record("workflow_complete"),
            on_workflow_fail=self._record("workflow_fail"),
            on_activity_start=self._record("activity_start"),
            on_activity_complete=self._record("activity_complete"),
            on_signal=self._record("signal"),
            on_retry=self._record("retry"),
        )

    def names(self, workflow_id: str) -> list[str]:
        return [name for name, wid, _ in self.calls if wid == workflow_id]

    async def wait_for(
        self, name: str, workflow_id: str, count: int = 1, timeout: float = WAIT
    ) -> None:
        """Wait until hook ``name`` has fired ``count`` times for ``workflow_id``."""

        def reached() -> bool:
            return self.names(workflow_id).count(name) >= count

        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(reached)


@dataclass
class Runtime:
    """How to open executors of one runtime over one persistent store."""

    name: str
    make_store: Callable[[], WorkflowStore]
    capabilities: set[str] = field(default_factory=set)
    stores: list[WorkflowStore] = field(default_factory=list)

    def store(self) -> WorkflowStore:
        if not self.stores:
            self.stores.append(self.make_store())
        return self.stores[-1]

    options: dict[str, Any] = field(default_factory=dict)

    @asynccontextmanager
    async def open(
        self, hooks: Hooks | None = None, **overrides: Any
    ) -> AsyncIterator[DefaultExecutor]:
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
    return Runtime("embedded-memory", InMemoryStore, {"restart"})


def _sqlite(tmp_path: Path) -> Runtime:
    return Runtime(
        "embedded-sqlite", lambda: SQLiteStore(tmp_path / "wf.db"), {"restart", "durable"}
    )


def _always_replay(tmp_path: Path) -> Runtime:
    # rebuilds each workflow from history after every step: catches non-determinism early
    return Runtime(
        "embedded-always-replay", InMemoryStore, {"restart"}, options={"always_replay": True}
    )


RUNTIMES = {
    "embedded-memory": _memory,
    "embedded-sqlite": _sqlite,
    "embedded-always-replay": _always_replay,
}


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
def long_histories(runtime: Runtime) -> Runtime:
    if runtime.options.get("always_replay"):
        pytest.skip("always-replay mode is quadratic in history length")
    return runtime


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


async def signal(executor: Any, workflow_id: str, name: str, payload: Any = None) -> None:
    await executor.signal(workflow_id, Signal(name=name, payload=payload))
