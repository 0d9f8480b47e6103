"""Durable timers: sleep and workflow timeout."""

from __future__ import annotations

import pytest

from app.workflow import (
    EventType,
    WorkflowFailedError,
    WorkflowOptions,
    WorkflowStatus,
    WorkflowTimeoutError,
)
from tests.conformance import workflows as wf
from tests.conformance.conftest import CLOCK_SLACK, WAIT, Runtime


async def test_sleep_fires_a_durable_timer(runtime: Runtime) -> None:
    async with runtime.open() as ex:
        handle = await ex.execute(wf.sleeper, WorkflowOptions(id="sleep", input=0.2))
        elapsed = float(await handle.result(timeout=WAIT))
        state = await ex.describe("sleep")
    assert elapsed >= 0.2
    fired = [e for e in state.history if e.type is EventType.TIMER_FIRED]
    assert len(fired) == 1 and fired[0].duration == pytest.approx(0.2)
    assert (fired[0].timestamp - state.history[0].timestamp).total_seconds() >= 0.2 - CLOCK_SLACK


async def test_workflow_timeout(runtime: Runtime) -> None:
    async with runtime.open() as ex:
        handle = await ex.execute(wf.sleep_forever, WorkflowOptions(id="wto", timeout=0.2))
        with pytest.raises(WorkflowTimeoutError) as info:
            await handle.result(timeout=WAIT)
        assert isinstance(info.value, WorkflowFailedError)
        assert await handle.status() is WorkflowStatus.FAILED
        assert await ex.query("wto", "status") == WorkflowStatus.FAILED
        state = await ex.describe("wto")
    assert state.history[-1].type is EventType.WORKFLOW_FAILED
    assert "timed out" in (state.error or "")
