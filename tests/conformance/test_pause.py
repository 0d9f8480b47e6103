"""Pause and resume: held work, buffered signals, answers to queries, order kept."""

from __future__ import annotations

import asyncio

import pytest

from app.workflow import EventType, WorkflowError, WorkflowOptions
from tests.conformance import workflows as wf
from tests.conformance.conftest import WAIT, Recorder, Runtime, signal

TIMER_PAST_DUE = 0.8  # a paused run's 0.3 s timer must not fire in this long


def _types(history: list) -> list[EventType]:  # type: ignore[type-arg]
    return [e.type for e in history]


async def test_a_paused_run_holds_signals_and_dispatches_nothing_until_resumed(
    pausable: Runtime, recorder: Recorder
) -> None:
    async with pausable.open(hooks=recorder.hooks()) as ex:
        handle = await ex.execute(wf.pausable, WorkflowOptions(id="pz", input=3))
        await signal(ex, "pz", "item", 1)
        await recorder.wait_for("activity_complete", "pz")
        await ex.pause("pz", "maintenance window")
        with pytest.raises(WorkflowError, match="already paused"):
            await ex.pause("pz")
        await signal(ex, "pz", "item", 2)  # accepted and recorded, not applied
        await signal(ex, "pz", "item", 3)
        assert await ex.query("pz", "status") == "running"
        paused = await ex.describe("pz")
        await ex.resume("pz", "window over")
        with pytest.raises(WorkflowError, match="not paused"):
            await ex.resume("pz")
        assert await handle.result(timeout=WAIT) == [2, 4, 6]
        state = await ex.describe("pz")
    at = _types(paused.history).index(EventType.WORKFLOW_PAUSED)
    after_pause = _types(paused.history)[at + 1 :]
    assert after_pause == [EventType.SIGNAL_RECEIVED, EventType.SIGNAL_RECEIVED]
    assert paused.history[at].reason == "maintenance window"
    kinds = _types(state.history)
    resumed = kinds.index(EventType.WORKFLOW_RESUMED)
    assert state.history[resumed].reason == "window over"
    # the held signals were applied at the resume: the next attempt comes after it
    starts = [i for i, k in enumerate(kinds) if k is EventType.ACTIVITY_STARTED]
    assert len(starts) == 3 and starts[0] < at < resumed < starts[1]


async def test_a_due_timer_waits_for_the_resume(pausable: Runtime, recorder: Recorder) -> None:
    async with pausable.open(hooks=recorder.hooks()) as ex:
        handle = await ex.execute(wf.pausable, WorkflowOptions(id="pt", input=0))
        await ex.pause("pt")
        # nothing can be awaited for a timer that must not fire: give it time to
        await asyncio.sleep(TIMER_PAST_DUE)
        held = await ex.describe("pt")
        assert EventType.TIMER_FIRED not in _types(held.history)
        await ex.resume("pt")
        assert await handle.result(timeout=WAIT) == []
        state = await ex.describe("pt")
    kinds = _types(state.history)
    assert kinds.index(EventType.WORKFLOW_RESUMED) < kinds.index(EventType.TIMER_FIRED)


async def test_a_pause_survives_a_restart(restartable: Runtime, recorder: Recorder) -> None:
    if "no-pause" in restartable.capabilities:
        pytest.skip(f"{restartable.name} has no pause")
    async with restartable.open(hooks=recorder.hooks()) as ex:
        await ex.execute(wf.pausable, WorkflowOptions(id="pr", input=2))
        await ex.pause("pr", "deploy")
        await signal(ex, "pr", "item", 5)
    async with restartable.open() as ex:
        await signal(ex, "pr", "item", 6)
        with pytest.raises(WorkflowError, match="already paused"):
            await ex.pause("pr")
        held = await ex.describe("pr")
        assert EventType.ACTIVITY_STARTED not in _types(held.history)
        await ex.resume("pr")
        assert await ex.get_handle("pr").result(timeout=WAIT) == [10, 12]
