"""Signals: buffering, order, waiting, timeouts, iteration."""

from __future__ import annotations

import pytest

from app.workflow import EventType, InvalidArgumentError, Signal, WorkflowOptions
from tests.conformance import workflows as wf
from tests.conformance.conftest import WAIT, Recorder, Runtime, signal


async def test_signals_sent_before_wait_are_buffered_in_order(runtime: Runtime) -> None:
    async with runtime.open() as ex:
        handle = await ex.execute(wf.signals_in_order, WorkflowOptions(id="buf", input=3))
        for i in range(3):
            await signal(ex, "buf", "item", {"n": i})
        await signal(ex, "buf", "go")
        assert await handle.result(timeout=WAIT) == [{"n": 0}, {"n": 1}, {"n": 2}]
        state = await ex.describe("buf")
    received = [e for e in state.history if e.type is EventType.SIGNAL_RECEIVED]
    assert [e.signal_name for e in received] == ["item", "item", "item", "go"]


async def test_signal_after_the_workflow_waits(runtime: Runtime, recorder: Recorder) -> None:
    async with runtime.open(hooks=recorder.hooks()) as ex:
        handle = await ex.execute(wf.wait_after_ready, WorkflowOptions(id="after", input="t"))
        await recorder.wait_for("activity_complete", "after")
        await ex.signal("after", Signal("go", {"ok": True}, sender_id="tester"))
        assert await handle.result(timeout=WAIT) == {"ok": True}
        state = await ex.describe("after")
    sig = next(e for e in state.history if e.type is EventType.SIGNAL_RECEIVED)
    assert sig.signal_payload == {"ok": True}
    assert sig.sender_id == "tester"
    assert recorder.names("after").count("signal") == 1


async def test_receive_times_out(runtime: Runtime) -> None:
    async with runtime.open() as ex:
        handle = await ex.execute(wf.receive_with_timeout, WorkflowOptions(id="rto", input=0.1))
        assert await handle.result(timeout=WAIT) == "timed out"
        state = await ex.describe("rto")
    assert [e.type for e in state.history].count(EventType.TIMER_FIRED) == 1


async def test_receive_within_timeout(runtime: Runtime) -> None:
    async with runtime.open() as ex:
        handle = await ex.execute(wf.receive_with_timeout, WorkflowOptions(id="rok", input=30))
        await signal(ex, "rok", "reply", "yes")
        assert await handle.result(timeout=WAIT) == "got yes"
        state = await ex.describe("rok")
    # the timeout timer was canceled, never fired
    assert EventType.TIMER_FIRED not in [e.type for e in state.history]


async def test_async_for_over_a_channel(runtime: Runtime) -> None:
    async with runtime.open() as ex:
        handle = await ex.execute(wf.iterate_signals, WorkflowOptions(id="iter", input=3))
        for payload in ["a", "b", "c"]:
            await signal(ex, "iter", "item", payload)
        assert await handle.result(timeout=WAIT) == ["a", "b", "c"]


async def test_signal_validation_fails_at_the_call(runtime: Runtime) -> None:
    with pytest.raises(InvalidArgumentError, match=r"Signal\.name"):
        Signal(name="")
    async with runtime.open() as ex:
        with pytest.raises(InvalidArgumentError, match="must be a Signal"):
            await ex.signal("x", "not a signal")  # type: ignore[arg-type]
