"""Updates: a durable request/response to a running workflow."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from app.workflow import (
    EventType,
    ExecutorStoppedError,
    InvalidArgumentError,
    UpdateFailedError,
    UpdateNotFoundError,
    UpdateRejectedError,
    WorkflowNotFoundError,
    WorkflowOptions,
)
from tests.conformance import workflows as wf
from tests.conformance.conftest import WAIT, Recorder, Runtime, signal


async def _update(ex: Any, workflow_id: str, name: str, arg: Any = None, **kw: Any) -> Any:
    return await asyncio.wait_for(ex.update(workflow_id, name, arg, **kw), WAIT)


def _count(history: list[Any], kind: EventType) -> int:
    return sum(1 for e in history if e.type is kind)


async def test_an_accepted_update_runs_an_activity_and_returns_its_result(
    runtime: Runtime,
) -> None:
    async with runtime.open() as ex:
        handle = await ex.execute(wf.with_updates, WorkflowOptions(id="upd", input=1))
        assert await _update(ex, "upd", "add", 5) == 11
        assert await _update(ex, "upd", "add", 2) == 15
        assert await _update(ex, "upd", "peek") == 15
        await signal(ex, "upd", "finish")
        assert await handle.result(timeout=WAIT) == 15
        state = await ex.describe("upd")
    accepted = [e for e in state.history if e.type is EventType.UPDATE_ACCEPTED]
    completed = [e for e in state.history if e.type is EventType.UPDATE_COMPLETED]
    assert [(e.signal_name, e.signal_payload) for e in accepted] == [
        ("add", 5),
        ("add", 2),
        ("peek", None),
    ]
    assert [e.result for e in completed] == [11, 15, 15]
    assert [e.change_id for e in completed] == [e.change_id for e in accepted]
    assert _count(state.history, EventType.ACTIVITY_COMPLETED) == 2


async def test_a_rejected_update_records_nothing(runtime: Runtime) -> None:
    async with runtime.open() as ex:
        await ex.execute(wf.with_updates, WorkflowOptions(id="rej", input=0))
        before = len((await ex.describe("rej")).history)
        with pytest.raises(UpdateRejectedError, match="amount must be zero or more, got -1"):
            await _update(ex, "rej", "add", -1)
        assert len((await ex.describe("rej")).history) == before
        assert await _update(ex, "rej", "add", 1) == 2  # the workflow goes on
        await signal(ex, "rej", "finish")


async def test_an_unknown_update_name_records_nothing(runtime: Runtime) -> None:
    async with runtime.open() as ex:
        await ex.execute(wf.with_updates, WorkflowOptions(id="unk", input=0))
        before = len((await ex.describe("unk")).history)
        with pytest.raises(UpdateNotFoundError, match=r"'nope'.*add, fail, hold, peek"):
            await _update(ex, "unk", "nope", 1)
        assert len((await ex.describe("unk")).history) == before
        await signal(ex, "unk", "finish")


async def test_a_failing_handler_raises_at_the_caller(runtime: Runtime) -> None:
    async with runtime.open() as ex:
        handle = await ex.execute(wf.with_updates, WorkflowOptions(id="ufail", input=3))
        with pytest.raises(UpdateFailedError, match="broken on purpose"):
            await _update(ex, "ufail", "fail", "broken on purpose")
        await signal(ex, "ufail", "finish")
        assert await handle.result(timeout=WAIT) == 3  # the workflow itself did not fail


async def test_the_same_update_id_runs_once(runtime: Runtime) -> None:
    async with runtime.open() as ex:
        await ex.execute(wf.with_updates, WorkflowOptions(id="dup", input=0))
        first = await _update(ex, "dup", "add", 4, update_id="u-1")
        again = await _update(ex, "dup", "add", 4, update_id="u-1")
        assert first == again == 8
        state = await ex.describe("dup")
        await signal(ex, "dup", "finish")
    assert _count(state.history, EventType.UPDATE_ACCEPTED) == 1
    assert _count(state.history, EventType.ACTIVITY_COMPLETED) == 1


async def test_the_same_update_id_runs_once_across_a_restart(restartable: Runtime) -> None:
    async with restartable.open() as ex:
        await ex.execute(wf.with_updates, WorkflowOptions(id="dupr", input=0))
        assert await _update(ex, "dupr", "add", 3, update_id="u-r") == 6
    async with restartable.open() as ex:
        assert await _update(ex, "dupr", "add", 3, update_id="u-r") == 6
        assert await _update(ex, "dupr", "add", 1, update_id="u-r2") == 8
        state = await ex.describe("dupr")
        await signal(ex, "dupr", "finish")
    assert _count(state.history, EventType.UPDATE_ACCEPTED) == 2
    assert _count(state.history, EventType.ACTIVITY_COMPLETED) == 2


async def test_an_update_running_across_a_restart_gets_its_answer(
    restartable: Runtime, recorder: Recorder
) -> None:
    async with restartable.open(hooks=recorder.hooks()) as ex:
        await ex.execute(wf.with_updates, WorkflowOptions(id="hold", input=0))
        first = asyncio.ensure_future(ex.update("hold", "hold", "t", update_id="h-1"))
        await recorder.wait_for("activity_complete", "hold")  # accepted, its activity ran
        first.cancel()  # the caller goes away with the executor; the update stays
        with contextlib.suppress(asyncio.CancelledError):
            await first
    async with restartable.open() as ex:
        again = asyncio.ensure_future(ex.update("hold", "hold", "t", update_id="h-1"))
        await signal(ex, "hold", "release", "let go")
        assert await asyncio.wait_for(again, WAIT) == "let go"
        state = await ex.describe("hold")
        await signal(ex, "hold", "finish")
    assert _count(state.history, EventType.UPDATE_ACCEPTED) == 1
    assert _count(state.history, EventType.ACTIVITY_COMPLETED) == 1


async def test_stopping_the_executor_ends_a_waiting_update_call(
    embedded: Runtime, recorder: Recorder
) -> None:
    async with embedded.open(hooks=recorder.hooks()) as ex:
        await ex.execute(wf.with_updates, WorkflowOptions(id="stop", input=0))
        waiting = asyncio.ensure_future(ex.update("stop", "hold", "t", update_id="s-1"))
        await recorder.wait_for("activity_complete", "stop")
    with pytest.raises(ExecutorStoppedError, match=r"update 's-1'.*call update again"):
        await asyncio.wait_for(waiting, WAIT)


async def test_update_arguments_are_checked_at_the_call(runtime: Runtime) -> None:
    async with runtime.open() as ex:
        await ex.execute(wf.with_updates, WorkflowOptions(id="uarg", input=0))
        with pytest.raises(InvalidArgumentError, match="update name"):
            await _update(ex, "uarg", "", 1)
        with pytest.raises(InvalidArgumentError, match="update_id"):
            await _update(ex, "uarg", "add", 1, update_id=5)
        with pytest.raises(InvalidArgumentError, match="update_id"):
            await _update(ex, "uarg", "add", 1, update_id=" ")
        with pytest.raises(InvalidArgumentError, match="workflow_id"):
            await _update(ex, "", "add", 1)
        await signal(ex, "uarg", "finish")


async def test_an_update_to_a_completed_workflow_fails(runtime: Runtime) -> None:
    async with runtime.open() as ex:
        handle = await ex.execute(wf.with_updates, WorkflowOptions(id="udone", input=0))
        assert await _update(ex, "udone", "add", 1, update_id="before") == 2
        await signal(ex, "udone", "finish")
        assert await handle.result(timeout=WAIT) == 2
        with pytest.raises(WorkflowNotFoundError, match="not running"):
            await _update(ex, "udone", "add", 1)
        # an update answered before the end still gets its answer
        assert await _update(ex, "udone", "add", 1, update_id="before") == 2
