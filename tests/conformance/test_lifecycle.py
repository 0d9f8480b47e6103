"""Cancel, queries, ids and runs, and the errors of the public API."""

from __future__ import annotations

from datetime import timedelta

import pytest

from app.workflow import (
    EventType,
    InvalidArgumentError,
    PayloadError,
    QueryNotFoundError,
    RetryPolicy,
    WorkflowAlreadyRunningError,
    WorkflowCanceledError,
    WorkflowError,
    WorkflowFailedError,
    WorkflowNotFoundError,
    WorkflowOptions,
    WorkflowStatus,
)
from tests.conformance import workflows as wf
from tests.conformance.conftest import WAIT, Recorder, Runtime, signal


async def test_cancel_runs_cleanup_then_cancels(runtime: Runtime, recorder: Recorder) -> None:
    async with runtime.open(hooks=recorder.hooks()) as ex:
        handle = await ex.execute(wf.cancel_with_cleanup, WorkflowOptions(id="cx", input="t1"))
        await recorder.wait_for("activity_start", "cx")
        await ex.cancel("cx")
        with pytest.raises(WorkflowCanceledError):
            await handle.result(timeout=WAIT)
        assert await handle.status() is WorkflowStatus.CANCELED
        state = await ex.describe("cx")
    kinds = [e.type for e in state.history]
    assert kinds[-1] is EventType.WORKFLOW_CANCELED
    assert EventType.CANCEL_REQUESTED in kinds
    cleanup = [e for e in state.history if e.activity_name == "cleanup"]
    assert [e.type for e in cleanup] == [EventType.ACTIVITY_STARTED, EventType.ACTIVITY_COMPLETED]
    assert cleanup[-1].result == "cleaned t1"
    # the interrupted activity never completed
    hang = [e for e in state.history if e.activity_name == "hang"]
    assert [e.type for e in hang] == [EventType.ACTIVITY_STARTED]


async def test_builtin_and_handler_queries(runtime: Runtime, recorder: Recorder) -> None:
    async with runtime.open(hooks=recorder.hooks()) as ex:
        handle = await ex.execute(wf.with_query, WorkflowOptions(id="q", input=2))
        await recorder.wait_for("activity_complete", "q", count=2)
        assert await ex.query("q", "status") == WorkflowStatus.RUNNING
        assert await ex.query("q", "result") is None
        assert await ex.query("q", "progress") == {"done": 2}
        with pytest.raises(QueryNotFoundError) as info:
            await ex.query("q", "nope")
        assert {"status", "result", "progress"} <= set(info.value.known)
        assert "progress" in str(info.value)
        await signal(ex, "q", "finish")
        assert await handle.result(timeout=WAIT) == 2
        # after the end: from the last state
        assert await ex.query("q", "status") == WorkflowStatus.COMPLETED
        assert await ex.query("q", "result") == 2
        assert await ex.query("q", "progress") == {"done": 2}
        state = await ex.describe("q")
    assert not [e for e in state.history if "query" in e.type.value]


async def test_queries_after_end_survive_a_restart(restartable: Runtime) -> None:
    async with restartable.open() as ex:
        handle = await ex.execute(wf.with_query, WorkflowOptions(id="qr", input=1))
        await signal(ex, "qr", "finish")
        assert await handle.result(timeout=WAIT) == 1
    async with restartable.open() as ex:
        assert await ex.query("qr", "progress") == {"done": 1}
        assert await ex.query("qr", "result") == 1
        assert await ex.get_handle("qr").result(timeout=WAIT) == 1


async def test_same_id_while_running_is_rejected_and_rerun_after_end(runtime: Runtime) -> None:
    async with runtime.open() as ex:
        first = await ex.execute(wf.wait_after_ready, WorkflowOptions(id="dup", input="a"))
        with pytest.raises(WorkflowAlreadyRunningError, match="dup"):
            await ex.execute(wf.wait_after_ready, WorkflowOptions(id="dup", input="b"))
        await signal(ex, "dup", "go", 1)
        assert await first.result(timeout=WAIT) == 1
        second = await ex.execute(wf.sequential, WorkflowOptions(id="dup", input=1))
        assert await second.result(timeout=WAIT) == [2, 4, 8]
        assert second.run_id != first.run_id
        state = await ex.describe("dup")
    assert state.run_id == second.run_id
    assert state.history[0].id == 1


async def test_result_timeout_raises_timeout_error(runtime: Runtime) -> None:
    async with runtime.open() as ex:
        handle = await ex.execute(wf.wait_after_ready, WorkflowOptions(id="slow", input="s"))
        with pytest.raises(TimeoutError) as info:
            await handle.result(timeout=timedelta(milliseconds=50))
        with pytest.raises(InvalidArgumentError, match="result timeout"):
            await handle.result(timeout=-1)
        assert not isinstance(info.value, WorkflowError)
        assert await handle.status() is WorkflowStatus.RUNNING
        await signal(ex, "slow", "go", "late")
        assert await handle.result(timeout=WAIT) == "late"


async def test_not_found_errors(runtime: Runtime) -> None:
    async with runtime.open() as ex:
        with pytest.raises(WorkflowNotFoundError, match="ghost"):
            await ex.signal("ghost", wf_signal())
        with pytest.raises(WorkflowNotFoundError, match="ghost"):
            await ex.cancel("ghost")
        with pytest.raises(WorkflowNotFoundError, match="ghost"):
            await ex.query("ghost", "status")
        handle = await ex.execute(wf.sequential, WorkflowOptions(id="ended", input=1))
        await handle.result(timeout=WAIT)
        with pytest.raises(WorkflowNotFoundError, match="not running"):
            await ex.signal("ended", wf_signal())
        with pytest.raises(WorkflowNotFoundError, match="not running"):
            await ex.cancel("ended")


def wf_signal() -> object:
    from app.workflow import Signal

    return Signal("go")


async def test_payload_error_at_execute(runtime: Runtime) -> None:
    async with runtime.open() as ex:
        with pytest.raises(PayloadError, match="not JSON-serializable"):
            await ex.execute(wf.sequential, WorkflowOptions(id="bad", input=object()))
        with pytest.raises(WorkflowNotFoundError):
            await ex.describe("bad")


async def test_workflow_exception_is_the_cause(runtime: Runtime) -> None:
    async with runtime.open() as ex:
        handle = await ex.execute(wf.failing_workflow, WorkflowOptions(id="wfail", input="nope"))
        with pytest.raises(WorkflowFailedError) as info:
            await handle.result(timeout=WAIT)
        state = await ex.describe("wfail")
    assert isinstance(info.value.__cause__, RuntimeError)
    assert str(info.value.__cause__) == "nope"
    assert state.status is WorkflowStatus.FAILED
    assert state.error == "RuntimeError: nope"
    assert state.history[-1].failure is not None
    assert "failing_workflow" in state.history[-1].failure.stack


async def test_failed_result_survives_restart(restartable: Runtime) -> None:
    async with restartable.open() as ex:
        handle = await ex.execute(wf.retry_exhausted, WorkflowOptions(id="fr", input=2))
        with pytest.raises(WorkflowFailedError):
            await handle.result(timeout=WAIT)
    async with restartable.open() as ex:
        with pytest.raises(WorkflowFailedError) as info:
            await ex.get_handle("fr").result(timeout=WAIT)
    cause = info.value.__cause__
    assert cause is not None and type(cause).__name__ == "ActivityError"
    assert isinstance(cause.__cause__, ValueError)


async def test_invalid_arguments_fail_at_the_call(runtime: Runtime) -> None:
    for bad in (
        {"max_attempts": 0},
        {"initial_interval": -1},
        {"backoff_coefficient": 0.5},
        {"max_interval": 0.01, "initial_interval": 1},
        {"jitter": 1.5},
        {"max_attempts": "3"},
    ):
        with pytest.raises(InvalidArgumentError) as info:
            RetryPolicy(**bad)  # type: ignore[arg-type]
        assert isinstance(info.value, ValueError) and isinstance(info.value, WorkflowError)
        assert "RetryPolicy." in str(info.value)
    assert RetryPolicy(initial_interval=timedelta(milliseconds=250)).initial_interval == 0.25
    with pytest.raises(InvalidArgumentError, match=r"WorkflowOptions\.id"):
        WorkflowOptions(id="")
    with pytest.raises(InvalidArgumentError, match=r"WorkflowOptions\.timeout"):
        WorkflowOptions(id="x", timeout=-5)
    async with runtime.open() as ex:
        with pytest.raises(InvalidArgumentError, match="async def"):
            await ex.execute(wf.double, WorkflowOptions(id="x"))
        with pytest.raises(InvalidArgumentError, match="WorkflowOptions"):
            await ex.execute(wf.sequential, {"id": "x"})  # type: ignore[arg-type]
        with pytest.raises(InvalidArgumentError, match=r"\(ctx\) or \(ctx, input\)"):
            await ex.execute(wf.too_many_inputs, WorkflowOptions(id="x"))
        handle = await ex.execute(wf.calls_two_input_activity, WorkflowOptions(id="arity"))
        with pytest.raises(WorkflowFailedError) as info:
            await handle.result(timeout=WAIT)
        assert isinstance(info.value.__cause__, InvalidArgumentError)
        assert "at most one required parameter" in str(info.value.__cause__)


# A bound on a hang, not on speed: on Temporal the 1,000 steps take 50 s on a quiet
# 2-core machine and over 60 s beside the other half of the suite and a CPU burner.
@pytest.mark.timeout(360)
async def test_thousand_step_workflow(long_histories: Runtime) -> None:
    async with long_histories.open() as ex:
        handle = await ex.execute(wf.long_chain, WorkflowOptions(id="long", input=1000))
        assert await handle.result(timeout=300) == sum(2 * i for i in range(1000))
        state = await ex.describe("long")
    assert len(state.history) == 2 + 2 * 1000
    assert [e.id for e in state.history] == list(range(1, 2003))


async def test_many_workflows_concurrently(runtime: Runtime) -> None:
    async with runtime.open() as ex:
        handles = [
            await ex.execute(wf.sequential, WorkflowOptions(id=f"many-{i}", input=i))
            for i in range(50)
        ]
        for i, handle in enumerate(handles):
            assert await handle.result(timeout=WAIT) == [2 * i, 4 * i, 8 * i]
