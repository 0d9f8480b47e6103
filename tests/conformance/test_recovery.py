"""Restarting the executor: resume, no re-run, timers keep their due time, divergence."""

from __future__ import annotations

import pytest

from app.workflow import (
    EventType,
    NonDeterminismError,
    WorkflowContext,
    WorkflowError,
    WorkflowOptions,
    WorkflowStatus,
)
from tests.conformance import workflows as wf
from tests.conformance.conftest import WAIT, Recorder, Runtime, signal

RUNS: list[str] = []


def counted(tag: str) -> str:
    RUNS.append(tag)
    return tag.upper()


async def resumable(ctx: WorkflowContext, tag: str) -> list[str]:
    first = await ctx.execute_activity(counted, f"{tag}-1")
    second = await ctx.execute_activity(counted, f"{tag}-2")
    go = await ctx.receive_signal("go").receive()
    third = await ctx.execute_activity(counted, f"{tag}-3")
    return [first, second, go, third]


KW = {"workflows": {"resumable": resumable}, "activities": [counted]}
# After a restart, a task the stopped worker held reaches the new one only once the
# runtime's own timeout for it passed (Temporal: the workflow task's 2 s, an activity's
# 5 s heartbeat), and the new one replays first: on a loaded machine that is past WAIT.
RESTART_WAIT = 3 * WAIT


async def test_resume_after_restart_runs_nothing_twice(restartable: Runtime) -> None:
    RUNS.clear()
    recorder = Recorder()
    async with restartable.open(hooks=recorder.hooks(), **KW) as ex:
        await ex.execute(resumable, WorkflowOptions(id="res", input="a"))
        await recorder.wait_for("activity_complete", "res", count=2)
        await signal(ex, "res", "go", "sig")  # durable before signal() returns
    async with restartable.open(**KW) as ex:
        # a streaming worker may finish the run while it is being stopped
        assert await ex.query("res", "status") in (WorkflowStatus.RUNNING, WorkflowStatus.COMPLETED)
        result = await ex.get_handle("res").result(timeout=RESTART_WAIT)
        assert result == ["A-1", "A-2", "sig", "A-3"]
    assert RUNS == ["a-1", "a-2", "a-3"]


async def test_timer_keeps_its_original_due_time(restartable: Runtime) -> None:
    async with restartable.open() as ex:
        await ex.execute(wf.sleeper, WorkflowOptions(id="due", input=0.5))
    async with restartable.open() as ex:
        await ex.get_handle("due").result(timeout=RESTART_WAIT)
        state = await ex.describe("due")
    started = state.history[0].timestamp
    fired = next(e for e in state.history if e.type is EventType.TIMER_FIRED)
    waited = (fired.timestamp - started).total_seconds()
    assert waited >= 0.5
    # the restart did not start the sleep over: one timer, fired once
    assert [e.type for e in state.history].count(EventType.TIMER_FIRED) == 1


async def evolving_v1(ctx: WorkflowContext, tag: str) -> str:
    await ctx.execute_activity(counted, tag)
    return str(await ctx.receive_signal("go").receive())


async def evolving_v2(ctx: WorkflowContext, tag: str) -> str:
    await ctx.sleep(1)  # a changed first step: replay must notice
    return str(await ctx.receive_signal("go").receive())


async def test_changed_code_raises_non_determinism_and_recovers(restartable: Runtime) -> None:
    recorder = Recorder()
    v1 = {"workflows": {"evolving": evolving_v1}, "activities": [counted]}
    v2 = {"workflows": {"evolving": evolving_v2}, "activities": [counted]}
    async with restartable.open(hooks=recorder.hooks(), **v1) as ex:
        await ex.execute(evolving_v1, WorkflowOptions(id="nd", input="x"))
        await recorder.wait_for("activity_complete", "nd")
    async with restartable.open(**v2) as ex:
        with pytest.raises(NonDeterminismError) as info:
            await ex.get_handle("nd").result(timeout=RESTART_WAIT)
        err = info.value
        assert err.event_id == 2
        assert "activity 'counted'" in err.recorded and "activity_started" in err.recorded
        assert "sleep" in err.expected
        assert "event 2" in str(err)
        # stuck, not failed: still running, the reason visible
        assert await ex.query("nd", "status") == WorkflowStatus.RUNNING
        await signal(ex, "nd", "go", "kept")  # recorded while stuck
        state = await ex.describe("nd")
        assert "NonDeterminismError" in (state.error or "")
    async with restartable.open(**v1) as ex:  # the old code is deployed again
        assert await ex.get_handle("nd").result(timeout=RESTART_WAIT) == "kept"
        state = await ex.describe("nd")
    assert state.error is None
    assert state.status is WorkflowStatus.COMPLETED


async def test_unknown_workflow_type_is_an_error_on_that_workflow(restartable: Runtime) -> None:
    recorder = Recorder()
    async with restartable.open(hooks=recorder.hooks(), **KW) as ex:
        await ex.execute(resumable, WorkflowOptions(id="orphan", input="o"))
        await recorder.wait_for("activity_complete", "orphan", count=2)
    async with restartable.open(workflows=[wf.sequential], activities=[wf.double]) as ex:
        with pytest.raises(WorkflowError, match=r"'resumable'.*not registered"):
            await ex.get_handle("orphan").result(timeout=RESTART_WAIT)
        # the executor itself keeps working
        handle = await ex.execute(wf.sequential, WorkflowOptions(id="fine", input=1))
        assert await handle.result(timeout=WAIT) == [2, 4, 8]
    async with restartable.open(**KW) as ex:
        await signal(ex, "orphan", "go", "g")
        result = await ex.get_handle("orphan").result(timeout=RESTART_WAIT)
        assert result == ["O-1", "O-2", "g", "O-3"]


async def test_replay_safe_values_are_stable(restartable: Runtime) -> None:
    async with restartable.open() as ex:
        handle = await ex.execute(wf.replay_safe_values, WorkflowOptions(id="rs"))
        values = await handle.result(timeout=WAIT)
    assert values["workflow_id"] == "rs" and values["run_id"] == handle.run_id
    async with restartable.open() as ex:
        # a query after the end replays the stored history: it must compute the same values
        assert await ex.query("rs", "values") == values
