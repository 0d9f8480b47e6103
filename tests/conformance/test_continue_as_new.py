"""Continue-as-new: a run hands over to a fresh one of the same workflow id."""

from __future__ import annotations

import asyncio

import pytest

from app.workflow import (
    EventType,
    InvalidArgumentError,
    WorkflowOptions,
    WorkflowStatus,
)
from tests.conformance import workflows as wf
from tests.conformance.conftest import WAIT, Runtime, signal

SIGNALS = 60
EVERY = 10


def _counter(target: int = SIGNALS, every: int = EVERY) -> dict[str, int]:
    return {"total": 0, "count": 0, "target": target, "every": every, "runs": 1}


async def test_counter_continues_as_new_and_loses_no_signal(runtime: Runtime) -> None:
    async with runtime.open() as ex:
        handle = await ex.execute(wf.counter, WorkflowOptions(id="cnt", input=_counter()))
        # the first half one by one, the rest all at once: many arrive during a hand-off
        for n in range(1, SIGNALS // 2 + 1):
            await signal(ex, "cnt", "add", n)
        await asyncio.wait_for(
            asyncio.gather(
                *(signal(ex, "cnt", "add", n) for n in range(SIGNALS // 2 + 1, SIGNALS + 1))
            ),
            WAIT,
        )
        result = await handle.result(timeout=WAIT)
        assert result == {"total": SIGNALS * (SIGNALS + 1) // 2, "count": SIGNALS, "runs": 6}
        state = await ex.describe("cnt")
        assert state.status is WorkflowStatus.COMPLETED
        assert len(state.previous_run_ids) == 5
        assert handle.run_id == state.previous_run_ids[0]
        assert state.run_id not in state.previous_run_ids
        assert await handle.status() is WorkflowStatus.CONTINUED_AS_NEW
        assert await ex.get_handle("cnt").result(timeout=WAIT) == result
        # queries of the workflow id reach its last run
        assert await asyncio.wait_for(ex.query("cnt", "run_number"), WAIT) == 6
        assert await asyncio.wait_for(ex.query("cnt", "status"), WAIT) == "completed"
    first = state.history[0]
    assert first.type is EventType.WORKFLOW_STARTED
    assert first.previous_run_ids == state.previous_run_ids


async def test_a_run_ends_with_continued_as_new(runtime: Runtime) -> None:
    async with runtime.open() as ex:
        handle = await ex.execute(wf.counter, WorkflowOptions(id="two", input=_counter(3, 2)))
        await signal(ex, "two", "add", 1)
        await signal(ex, "two", "add", 2)
        await signal(ex, "two", "add", 3)
        assert await handle.result(timeout=WAIT) == {"total": 6, "count": 3, "runs": 2}
        state = await ex.describe("two")
    assert [e.type for e in state.history][:2] == [
        EventType.WORKFLOW_STARTED,
        EventType.SIGNAL_RECEIVED,
    ]
    assert state.history[0].input["count"] == 2
    assert state.history[-1].type is EventType.WORKFLOW_COMPLETED


async def test_unconsumed_signals_carry_over_even_past_the_next_continue(
    runtime: Runtime,
) -> None:
    counter = {**_counter(7, 2), "gate": 1}
    async with runtime.open() as ex:
        handle = await ex.execute(wf.counter, WorkflowOptions(id="carry", input=counter))
        for n in range(1, 8):
            await signal(ex, "carry", "add", n)
        await signal(ex, "carry", "go")
        # run 1 takes 1 and 2 and hands 3..7 on; run 2 takes 3 and 4 and hands 5..7 on ...
        assert await handle.result(timeout=WAIT) == {"total": 28, "count": 7, "runs": 4}
        state = await ex.describe("carry")
    assert [e.type for e in state.history] == [
        EventType.WORKFLOW_STARTED,
        EventType.SIGNAL_RECEIVED,
        EventType.WORKFLOW_COMPLETED,
    ]
    assert state.history[1].signal_payload == 7
    assert len(state.previous_run_ids) == 3


async def test_info_history_length_and_suggestion(runtime: Runtime) -> None:
    options = WorkflowOptions(id="probe", input=False, continue_as_new_suggested_after=3)
    async with runtime.open() as ex:
        handle = await ex.execute(wf.info_probe, options)
        for _ in range(4):
            await signal(ex, "probe", "tick")
        result = await handle.result(timeout=WAIT)
    # event 1 started, 2 and 3 the signals: the hint turns on at 3 events, in every run
    assert result["seen"] == [[2, False], [3, True]]
    assert result["previous"] == 1
    assert result["workflow_id"] == "probe"
    assert result["run_id"] != handle.run_id


async def test_invalid_continue_as_new_fails_at_the_call(runtime: Runtime) -> None:
    with pytest.raises(InvalidArgumentError, match="continue_as_new_suggested_after"):
        WorkflowOptions(id="bad", continue_as_new_suggested_after=0)
    with pytest.raises(InvalidArgumentError, match="continue_as_new_suggested_after"):
        WorkflowOptions(id="bad", continue_as_new_suggested_after=True)  # type: ignore[arg-type]
    async with runtime.open() as ex:
        handle = await ex.execute(wf.bad_continue_as_new, WorkflowOptions(id="bad"))
        assert await handle.result(timeout=WAIT) == "rejected: PayloadError"


async def test_a_restart_resumes_the_current_run_of_the_chain(restartable: Runtime) -> None:
    async with restartable.open() as ex:
        handle = await ex.execute(wf.counter, WorkflowOptions(id="rst", input=_counter(12, 4)))
        for n in range(1, 7):
            await signal(ex, "rst", "add", n)
    async with restartable.open() as ex:
        for n in range(7, 13):
            await signal(ex, "rst", "add", n)
        assert await ex.get_handle("rst").result(timeout=WAIT) == {
            "total": 78,
            "count": 12,
            "runs": 3,
        }
        assert len((await ex.describe("rst")).previous_run_ids) == 2
        assert handle.id == "rst"
