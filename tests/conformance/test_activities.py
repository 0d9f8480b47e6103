"""Activities: order, retries, timeouts, fan-out, payload types."""

from __future__ import annotations

import pytest

from app.workflow import (
    ActivityError,
    EventType,
    NonRetryableError,
    WorkflowFailedError,
    WorkflowOptions,
    WorkflowStatus,
)
from tests.conformance import workflows as wf
from tests.conformance.conftest import WAIT, Recorder, Runtime


async def test_sequential_activities_record_each_step(runtime: Runtime) -> None:
    async with runtime.open() as ex:
        handle = await ex.execute(wf.sequential, WorkflowOptions(id="seq", input=3))
        assert await handle.result(timeout=WAIT) == [6, 12, 24]
        assert await handle.status() is WorkflowStatus.COMPLETED
        state = await ex.describe("seq")
    kinds = [e.type for e in state.history]
    assert kinds == [
        EventType.WORKFLOW_STARTED,
        *[EventType.ACTIVITY_STARTED, EventType.ACTIVITY_COMPLETED] * 3,
        EventType.WORKFLOW_COMPLETED,
    ]
    assert [e.id for e in state.history] == list(range(1, len(kinds) + 1))
    names = [e.activity_name for e in state.history if e.type is EventType.ACTIVITY_COMPLETED]
    assert names == ["double", "async_double", "double"]
    assert [e.result for e in state.history if e.type is EventType.ACTIVITY_COMPLETED] == [
        6,
        12,
        24,
    ]
    assert state.result == [6, 12, 24]
    assert state.run_id == handle.run_id


async def test_retry_until_success(runtime: Runtime, recorder: Recorder) -> None:
    async with runtime.open(hooks=recorder.hooks()) as ex:
        handle = await ex.execute(wf.retry_until_success, WorkflowOptions(id="retry", input=7))
        assert await handle.result(timeout=WAIT) == {"value": 7, "attempt": 3}
        state = await ex.describe("retry")
    failed = [e for e in state.history if e.type is EventType.ACTIVITY_FAILED]
    assert [e.attempt for e in failed] == [1, 2]
    assert all(e.error and "ConnectionError" in e.error for e in failed)
    started = [e.attempt for e in state.history if e.type is EventType.ACTIVITY_STARTED]
    assert started == [1, 2, 3]
    backoffs = [e for e in state.history if e.type is EventType.TIMER_FIRED]
    assert len(backoffs) == 2
    assert recorder.names("retry").count("retry") == 2


async def test_retry_exhausted_raises_activity_error(runtime: Runtime) -> None:
    async with runtime.open() as ex:
        handle = await ex.execute(wf.retry_exhausted, WorkflowOptions(id="exhaust", input=5))
        with pytest.raises(WorkflowFailedError) as info:
            await handle.result(timeout=WAIT)
        assert await handle.status() is WorkflowStatus.FAILED
    activity_error = info.value.__cause__
    assert isinstance(activity_error, ActivityError)
    assert activity_error.attempts == 3
    assert activity_error.activity_name == "always_fail"
    assert isinstance(activity_error.__cause__, ValueError)
    assert str(activity_error.__cause__) == "boom 5"
    assert "always_fail" in str(info.value) and "3 attempts" in str(info.value)


async def test_non_retryable_error_stops_retries(runtime: Runtime) -> None:
    async with runtime.open() as ex:
        handle = await ex.execute(wf.non_retryable, WorkflowOptions(id="nonretry", input=42))
        with pytest.raises(WorkflowFailedError) as info:
            await handle.result(timeout=WAIT)
        state = await ex.describe("nonretry")
    cause = info.value.__cause__
    assert isinstance(cause, ActivityError) and cause.attempts == 1
    assert isinstance(cause.__cause__, NonRetryableError)
    assert [e.type for e in state.history].count(EventType.ACTIVITY_STARTED) == 1


async def test_workflow_can_catch_activity_error(runtime: Runtime) -> None:
    async with runtime.open() as ex:
        handle = await ex.execute(wf.catches_activity_error, WorkflowOptions(id="catch", input=1))
        assert await handle.result(timeout=WAIT) == "fail_for_good:1:NonRetryableError"


async def test_activity_timeout_is_retried_then_fails(runtime: Runtime) -> None:
    async with runtime.open() as ex:
        handle = await ex.execute(wf.activity_timeout, WorkflowOptions(id="atimeout", input=0.1))
        with pytest.raises(WorkflowFailedError) as info:
            await handle.result(timeout=WAIT)
        state = await ex.describe("atimeout")
    cause = info.value.__cause__
    assert isinstance(cause, ActivityError)
    assert cause.attempts == 2
    assert isinstance(cause.__cause__, TimeoutError)
    assert [e.attempt for e in state.history if e.type is EventType.ACTIVITY_STARTED] == [1, 2]
    assert not [e for e in state.history if e.type is EventType.ACTIVITY_COMPLETED]


async def test_gather_of_twenty_activities(runtime: Runtime) -> None:
    async with runtime.open() as ex:
        handle = await ex.execute(wf.fan_out, WorkflowOptions(id="fan", input=20))
        assert await handle.result(timeout=WAIT) == [i * 2 for i in range(20)]
        state = await ex.describe("fan")
    started = [e for e in state.history if e.type is EventType.ACTIVITY_STARTED]
    assert sorted(e.step for e in started) == list(range(1, 21))
    completed = [e for e in state.history if e.type is EventType.ACTIVITY_COMPLETED]
    assert len(completed) == 20


async def test_dataclass_and_pydantic_payloads_round_trip(runtime: Runtime) -> None:
    order = wf.Order(order_id="A-1", amount=12.5, items=["x", "y"])
    async with runtime.open() as ex:
        handle = await ex.execute(wf.typed_order, WorkflowOptions(id="typed", input=order))
        receipt = await handle.result(timeout=WAIT)
        state = await ex.describe("typed")
    assert receipt == wf.Receipt(order_id="A-1", total=12.5, lines=2)
    assert state.input == {"order_id": "A-1", "amount": 12.5, "items": ["x", "y"]}


async def test_activity_info_inside_activity(runtime: Runtime) -> None:
    async with runtime.open() as ex:
        handle = await ex.execute(wf.activity_info, WorkflowOptions(id="info"))
        info = await handle.result(timeout=WAIT)
    assert info["workflow_id"] == "info"
    assert info["attempt"] == 1
    assert info["name"] == "describe"
    assert info["activity_id"]


async def test_unserializable_activity_result_fails_without_retry(runtime: Runtime) -> None:
    async with runtime.open() as ex:
        handle = await ex.execute(wf.bad_activity_result, WorkflowOptions(id="badresult"))
        with pytest.raises(WorkflowFailedError) as info:
            await handle.result(timeout=WAIT)
    cause = info.value.__cause__
    assert isinstance(cause, ActivityError) and cause.attempts == 1
    assert "not JSON-serializable" in str(cause)
