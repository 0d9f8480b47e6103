"""The embedded runtime when its store fails: transient errors are retried, lasting ones park."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from app.workflow import (
    DefaultExecutor,
    HistoryEvent,
    Signal,
    WorkflowContext,
    WorkflowError,
    WorkflowOptions,
    WorkflowState,
    WorkflowStatus,
)
from providers.inmemory import InMemoryStore


class FlakyStore(InMemoryStore):
    """Fails the appends whose numbers are in ``fail`` (counting from 1)."""

    def __init__(self, fail: set[int] | None = None, down: bool = False) -> None:
        super().__init__()
        self.fail = fail or set()
        self.down = down
        self.appends = 0

    async def append(self, state: WorkflowState, events: Sequence[HistoryEvent]) -> None:
        self.appends += 1
        if self.down or self.appends in self.fail:
            raise OSError(f"disk unavailable (append {self.appends})")
        await super().append(state, events)


def step(x: int) -> int:
    return x + 1


async def three_steps(ctx: WorkflowContext, x: int) -> int:
    for _ in range(3):
        x = await ctx.execute_activity(step, x)
    return x


async def waits(ctx: WorkflowContext) -> str:
    return str(await ctx.receive_signal("go").receive())


async def test_transient_store_errors_are_retried() -> None:
    store = FlakyStore(fail={2, 3, 5})
    async with DefaultExecutor(store=store, workflows=[three_steps]) as ex:
        handle = await ex.execute(three_steps, WorkflowOptions("flaky", 0))
        assert await handle.result(timeout=10) == 3
    state = await store.load("flaky")
    assert state is not None and state.status is WorkflowStatus.COMPLETED
    assert [e.id for e in state.history] == list(range(1, len(state.history) + 1))


async def test_a_store_that_stays_down_parks_the_workflow_and_fails_signals() -> None:
    store = FlakyStore()
    async with DefaultExecutor(store=store, workflows=[waits, three_steps]) as ex:
        handle = await ex.execute(waits, WorkflowOptions("down"))
        store.down = True
        with pytest.raises(OSError, match="disk unavailable"):
            await ex.signal("down", Signal("go", 1))
        running = await ex.execute(three_steps, WorkflowOptions("parked", 0))
        with pytest.raises(WorkflowError, match="could not record"):
            await running.result(timeout=10)
        store.down = False
        assert await ex.query("down", "status") == WorkflowStatus.RUNNING
    # the store is back: a new executor resumes both from what was durable
    async with DefaultExecutor(store=store, workflows=[waits, three_steps]) as ex:
        await ex.signal("down", Signal("go", "back"))
        assert await ex.get_handle("down").result(timeout=10) == "back"
        assert await ex.get_handle("parked").result(timeout=10) == 3
    assert handle.id == "down"
