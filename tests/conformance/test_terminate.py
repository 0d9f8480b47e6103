"""Terminate: a run ends at once, with no cleanup, recorded with its reason."""

from __future__ import annotations

import pytest

from app.workflow import (
    EventType,
    InvalidArgumentError,
    WorkflowCanceledError,
    WorkflowNotFoundError,
    WorkflowOptions,
    WorkflowStatus,
)
from tests.conformance import workflows as wf
from tests.conformance.conftest import WAIT, Recorder, Runtime


async def test_terminate_ends_the_run_without_its_cleanup(
    runtime: Runtime, recorder: Recorder
) -> None:
    async with runtime.open(hooks=recorder.hooks()) as ex:
        handle = await ex.execute(wf.cancel_with_cleanup, WorkflowOptions(id="tm", input="t"))
        await recorder.wait_for("activity_start", "tm")
        with pytest.raises(InvalidArgumentError, match="terminate reason must be a str"):
            await ex.terminate("tm", 42)
        await ex.terminate("tm", "stuck on a bad deploy")
        with pytest.raises(WorkflowCanceledError):
            await handle.result(timeout=WAIT)
        state = await ex.describe("tm")
        with pytest.raises(WorkflowNotFoundError):
            await ex.terminate("tm", "again")
    assert state.status is WorkflowStatus.CANCELED
    last = state.history[-1]
    assert last.type is EventType.WORKFLOW_CANCELED
    assert last.failure is not None
    assert (last.failure.type, last.failure.message) == ("Terminated", "stuck on a bad deploy")
    started = [e.activity_name for e in state.history if e.type is EventType.ACTIVITY_STARTED]
    assert "cleanup" not in started  # the finally block never ran
