"""Child workflows: started and awaited by a parent, in its history, under its close policy."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.workflow import (
    EventType,
    WorkflowCanceledError,
    WorkflowNotFoundError,
    WorkflowOptions,
    WorkflowStatus,
)
from tests.conformance import workflows as wf
from tests.conformance.conftest import WAIT, Runtime, signal


def _events(history: list[Any], kind: EventType) -> list[Any]:
    return [e for e in history if e.type is kind]


async def _started(ex: Any, workflow_id: str, activities: int = 0) -> Any:
    """The state of ``workflow_id`` once it exists with ``activities`` completed (polled)."""
    async with asyncio.timeout(WAIT):
        while True:
            try:
                state = await ex.describe(workflow_id)
            except WorkflowNotFoundError:
                state = None
            if state is not None and (
                len(_events(state.history, EventType.ACTIVITY_COMPLETED)) >= activities
            ):
                return state
            await asyncio.sleep(0.02)


async def _ended(ex: Any, workflow_id: str) -> Any:
    """The state of ``workflow_id`` once its run has ended (polled: no handle to await)."""
    await _started(ex, workflow_id)  # a child is started in the background
    async with asyncio.timeout(WAIT):
        while True:
            state = await ex.describe(workflow_id)
            if state.status is not WorkflowStatus.RUNNING:
                return state
            await asyncio.sleep(0.02)


async def test_a_parent_fans_out_to_children_and_sums_their_results(runtime: Runtime) -> None:
    async with runtime.open() as ex:
        handle = await ex.execute(wf.parent_fans_out, WorkflowOptions(id="fan", input=5))
        assert await handle.result(timeout=WAIT) == 2 * (0 + 1 + 2 + 3 + 4)
        parent = await ex.describe("fan")
        child = await ex.describe("fan-c3")
    started = _events(parent.history, EventType.CHILD_WORKFLOW_STARTED)
    completed = _events(parent.history, EventType.CHILD_WORKFLOW_COMPLETED)
    assert sorted(e.child_workflow_id for e in started) == [f"fan-c{i}" for i in range(5)]
    assert {e.child_workflow_type for e in started} == {"child_double"}
    assert sorted(e.result for e in completed) == [0, 2, 4, 6, 8]
    assert all(e.attempt == 1 for e in started + completed)
    assert child.status is WorkflowStatus.COMPLETED and child.result == 6
    first = child.history[0]
    assert first.type is EventType.WORKFLOW_STARTED
    assert (first.parent_workflow_id, first.parent_run_id) == ("fan", parent.run_id)


async def test_a_failed_child_raises_child_workflow_error_with_its_cause(
    runtime: Runtime,
) -> None:
    async with runtime.open() as ex:
        handle = await ex.execute(wf.parent_of_failing, WorkflowOptions(id="pf", input="bad"))
        assert await handle.result(timeout=WAIT) == "pf-child after 1: bad"
        parent = await ex.describe("pf")
        child = await ex.describe("pf-child")
    failed = _events(parent.history, EventType.CHILD_WORKFLOW_FAILED)
    assert len(failed) == 1 and failed[0].failure.message == "bad"
    assert child.status is WorkflowStatus.FAILED


async def test_a_failed_child_is_retried_by_its_policy(runtime: Runtime) -> None:
    async with runtime.open() as ex:
        key = f"retry-{runtime.name}"
        wf.CHILD_RUNS.pop(key, None)
        handle = await ex.execute(wf.parent_retries_child, WorkflowOptions(id="pr", input=key))
        assert await handle.result(timeout=WAIT) == 3
        parent = await ex.describe("pr")
    started = _events(parent.history, EventType.CHILD_WORKFLOW_STARTED)
    assert [e.attempt for e in started] == [1, 2, 3]
    assert [e.attempt for e in _events(parent.history, EventType.CHILD_WORKFLOW_FAILED)] == [1, 2]


async def test_a_parent_signals_its_child_once(runtime: Runtime) -> None:
    async with runtime.open() as ex:
        handle = await ex.execute(wf.parent_signals_child, WorkflowOptions(id="ps", input=7))
        assert await handle.result(timeout=WAIT) == 107
        parent = await ex.describe("ps")
        child = await ex.describe("ps-child")
    sent = _events(parent.history, EventType.CHILD_WORKFLOW_SIGNALED)
    assert [(e.child_workflow_id, e.signal_name, e.signal_payload) for e in sent] == [
        ("ps-child", "go", 7)
    ]
    received = _events(child.history, EventType.SIGNAL_RECEIVED)
    assert [(e.signal_name, e.signal_payload) for e in received] == [("go", 7)]


async def test_a_child_timeout_fails_the_child(runtime: Runtime) -> None:
    async with runtime.open() as ex:
        handle = await ex.execute(wf.parent_with_child_timeout, WorkflowOptions(id="pt"))
        assert await handle.result(timeout=WAIT) == "WorkflowTimeoutError"
        child = await ex.describe("pt-child")
    assert child.status is WorkflowStatus.FAILED


@pytest.mark.parametrize(
    ("policy", "status", "cleaned_up"),
    [("cancel", WorkflowStatus.CANCELED, True), ("terminate", WorkflowStatus.CANCELED, False)],
)
async def test_a_parent_that_ends_closes_its_child_by_policy(
    runtime: Runtime, policy: str, status: WorkflowStatus, cleaned_up: bool
) -> None:
    wid = f"close-{policy}"
    async with runtime.open() as ex:
        handle = await ex.execute(wf.parent_leaves_child, WorkflowOptions(id=wid, input=policy))
        assert await handle.result(timeout=WAIT) == f"{wid}-child"
        child = await _ended(ex, f"{wid}-child")
        # the status query agrees with the history (on Temporal: a terminate's reason)
        assert await ex.query(f"{wid}-child", "status") is status
    assert child.status is status
    cleanups = [
        e
        for e in child.history
        if e.type is EventType.ACTIVITY_STARTED and e.activity_name == "cleanup"
    ]
    assert bool(cleanups) is cleaned_up
    if policy == "terminate":
        assert child.history[-1].failure is not None
        assert child.history[-1].failure.type == "Terminated"


async def test_an_abandoned_child_runs_on(runtime: Runtime) -> None:
    async with runtime.open() as ex:
        handle = await ex.execute(wf.parent_leaves_child, WorkflowOptions(id="ab", input="abandon"))
        assert await handle.result(timeout=WAIT) == "ab-child"
        assert (await _started(ex, "ab-child")).status is WorkflowStatus.RUNNING
        await ex.cancel("ab-child")
        child = await _ended(ex, "ab-child")
    assert child.status is WorkflowStatus.CANCELED


async def test_cancelling_the_parent_cancels_the_child_it_awaits(runtime: Runtime) -> None:
    async with runtime.open() as ex:
        handle = await ex.execute(wf.parent_awaits_child, WorkflowOptions(id="pc", input=1))
        await _started(ex, "pc-child", activities=1)
        await ex.cancel("pc")
        with pytest.raises(WorkflowCanceledError):
            await handle.result(timeout=WAIT)
        parent = await _ended(ex, "pc")
        child = await _ended(ex, "pc-child")
    assert parent.status is WorkflowStatus.CANCELED
    assert child.status is WorkflowStatus.CANCELED


async def test_a_parent_and_its_child_survive_a_restart(restartable: Runtime) -> None:
    rt = restartable
    async with rt.open() as ex:
        await ex.execute(wf.parent_awaits_child, WorkflowOptions(id="prs", input=10))
        await _started(ex, "prs-child", activities=1)  # the child waits for "go"
    async with rt.open() as ex:
        await signal(ex, "prs-child", "go", 5)
        # two runs resume one after the other: on Temporal each first waits out the
        # workflow task its stopped worker held (2 s), so the bound is wider here
        assert await ex.get_handle("prs").result(timeout=3 * WAIT) == 15
        parent = await ex.describe("prs")
    assert len(_events(parent.history, EventType.CHILD_WORKFLOW_STARTED)) == 1
    assert [e.result for e in _events(parent.history, EventType.CHILD_WORKFLOW_COMPLETED)] == [15]


async def test_invalid_child_options_fail_at_the_call(runtime: Runtime) -> None:
    async with runtime.open() as ex:
        handle = await ex.execute(wf.bad_children, WorkflowOptions(id="bad"))
        errors = await handle.result(timeout=WAIT)
    assert len(errors) == 5
    assert "must be an `async def` function" in errors[0]
    assert "cannot have its parent's id 'bad'" in errors[1]
    assert "parent_close_policy must be a ParentClosePolicy" in errors[2]
    assert "retry must be a RetryPolicy" in errors[3]
    assert "child workflow timeout" in errors[4]


async def test_a_parent_cancels_one_child(runtime: Runtime) -> None:
    async with runtime.open() as ex:
        handle = await ex.execute(wf.cancels_its_child, WorkflowOptions(id="ck", input="x"))
        outcome = await handle.result(timeout=WAIT)
        child = await _ended(ex, "ck-kid")
        parent = await ex.describe("ck")
    assert outcome.startswith("child ended:"), outcome
    assert child.status is WorkflowStatus.CANCELED
    sent = [e.signal_name for e in _events(parent.history, EventType.CHILD_WORKFLOW_SIGNALED)]
    assert sent == ["__cancel__"]
