"""The testing helpers: time skipping and the hook recorder."""

from __future__ import annotations

from datetime import timedelta

import pytest

from app.testing import HookRecorder, TimeSkippingExecutor
from app.workflow import EventType, Signal, WorkflowContext, WorkflowOptions

DAY = timedelta(days=1).total_seconds()


def remind(who: str) -> str:
    return f"reminded {who}"


async def reminder(ctx: WorkflowContext, who: str) -> dict[str, float | str]:
    start = ctx.now()
    await ctx.sleep(DAY)
    note = await ctx.execute_activity(remind, who)
    try:
        await ctx.receive_signal("ack").receive(timeout=7 * DAY)
        answer = "acked"
    except TimeoutError:
        answer = "no answer in a week"
    return {"note": note, "answer": answer, "days": (ctx.now() - start).total_seconds() / DAY}


async def test_time_skips_while_a_result_is_awaited() -> None:
    async with TimeSkippingExecutor(workflows=[reminder], activities=[remind]) as ex:
        handle = await ex.execute(reminder, WorkflowOptions("remind", "ada"))
        result = await handle.result(timeout=10)
        state = await ex.store.load("remind")
    assert result["note"] == "reminded ada"
    assert result["answer"] == "no answer in a week"
    assert result["days"] == pytest.approx(8, abs=0.01)
    assert ex.skipped >= 8 * DAY - 60
    assert state is not None
    fired = [e for e in state.history if e.type is EventType.TIMER_FIRED]
    assert [e.duration for e in fired] == [DAY, 7 * DAY]


async def test_time_does_not_skip_past_a_signal_sent_before_waiting() -> None:
    recorder = HookRecorder()
    async with TimeSkippingExecutor(
        hooks=recorder.hooks(), workflows=[reminder], activities=[remind]
    ) as ex:
        handle = await ex.execute(reminder, WorkflowOptions("remind2", "bob"))
        await ex.signal("remind2", Signal("ack"))  # buffered: the workflow is still asleep
        result = await handle.result(timeout=10)
    assert result["answer"] == "acked"
    assert result["days"] == pytest.approx(1, abs=0.01)
    assert recorder.names("remind2") == [
        "workflow_start",
        "signal",
        "activity_start",
        "activity_complete",
        "workflow_complete",
    ]


async def test_recorder_wait_for_times_out() -> None:
    recorder = HookRecorder()
    with pytest.raises(TimeoutError):
        await recorder.wait_for("workflow_start", "nobody", timeout=0.01)
