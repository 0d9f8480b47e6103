"""Edge cases: cancel at every kind of wait, timeouts during activities, restarts mid-timer."""

from __future__ import annotations

import pytest

from app.workflow import (
    EventType,
    WorkflowCanceledError,
    WorkflowOptions,
    WorkflowStatus,
    WorkflowTimeoutError,
)
from tests.conformance import workflows as wf
from tests.conformance.conftest import WAIT, Recorder, Runtime, start_slack


async def test_cancel_during_retry_backoff_stops_retrying(
    runtime: Runtime, recorder: Recorder
) -> None:
    async with runtime.open(hooks=recorder.hooks()) as ex:
        handle = await ex.execute(wf.retry_forever, WorkflowOptions(id="cb"))
        await recorder.wait_for("retry", "cb")
        await ex.cancel("cb")
        with pytest.raises(WorkflowCanceledError):
            await handle.result(timeout=WAIT)
        state = await ex.describe("cb")
    assert [e.type for e in state.history].count(EventType.ACTIVITY_STARTED) == 1
    assert state.history[-1].type is EventType.WORKFLOW_CANCELED


async def test_cancel_can_be_handled_by_the_workflow(runtime: Runtime) -> None:
    async with runtime.open() as ex:
        handle = await ex.execute(wf.swallow_cancel, WorkflowOptions(id="sc"))
        await ex.cancel("sc")
        assert await handle.result(timeout=WAIT) == "cleaned up and finished"
        assert await handle.status() is WorkflowStatus.COMPLETED


async def test_workflow_timeout_during_an_activity(runtime: Runtime, recorder: Recorder) -> None:
    async with runtime.open(hooks=recorder.hooks()) as ex:
        handle = await ex.execute(
            wf.timeout_during_activity, WorkflowOptions(id="wta", timeout=0.2)
        )
        with pytest.raises(WorkflowTimeoutError):
            await handle.result(timeout=WAIT)
        state = await ex.describe("wta")
    assert state.status is WorkflowStatus.FAILED
    assert [e.type for e in state.history][-2:] == [
        EventType.TIMER_FIRED,
        EventType.WORKFLOW_FAILED,
    ]
    assert recorder.names("wta")[-1] == "workflow_fail"


async def test_workflow_timeout_is_kept_across_a_restart(restartable: Runtime) -> None:
    async with restartable.open() as ex:
        await ex.execute(wf.sleep_forever, WorkflowOptions(id="wtr", timeout=0.3))
    async with restartable.open() as ex:
        with pytest.raises(WorkflowTimeoutError):
            await ex.get_handle("wtr").result(timeout=WAIT)
        state = await ex.describe("wtr")
    fired = next(e for e in state.history if e.type is EventType.TIMER_FIRED)
    assert fired.step == 0
    slack = start_slack(restartable)
    assert (fired.timestamp - state.history[0].timestamp).total_seconds() >= 0.3 - slack
