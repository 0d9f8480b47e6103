"""Continue-as-new in the core: the outcome, its echo, carried signals, replay, info()."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any

import pytest

from app.workflow import EventType, HistoryEvent, PayloadError, WorkflowContext, WorkflowStatus
from app.workflow._core import WorkflowInstance

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def slow(x: int) -> int:
    return x


async def hands_over(ctx: WorkflowContext, n: int) -> None:
    task = asyncio.ensure_future(ctx.execute_activity(slow, 1))  # left pending: abandoned
    await ctx.receive_signal("a").receive()
    # continue-as-new is not an Exception: this does not catch it
    with contextlib.suppress(Exception):
        ctx.continue_as_new(n + 1)
    await task


def _instance(fn: Any, run_id: str = "run") -> WorkflowInstance:
    return WorkflowInstance(workflow_id="wf", run_id=run_id, workflow_type="t", fn=fn)


def _events(*specs: tuple[EventType, dict[str, Any]]) -> list[HistoryEvent]:
    return [
        HistoryEvent(id=i, type=kind, timestamp=T0, **fields)
        for i, (kind, fields) in enumerate(specs, start=1)
    ]


def _next(history: list[HistoryEvent], kind: EventType, **fields: Any) -> HistoryEvent:
    event = HistoryEvent(id=len(history) + 1, type=kind, timestamp=T0, **fields)
    history.append(event)
    return event


def test_continue_as_new_ends_the_run_and_hands_on_unconsumed_signals() -> None:
    instance = _instance(hands_over)
    history: list[HistoryEvent] = []
    instance.apply(_next(history, EventType.WORKFLOW_STARTED, input=1))
    [started] = instance.echoes(2, T0)
    assert started.activity_name is not None and started.activity_name.endswith("slow")
    history.append(started)
    instance.apply(started)
    instance.apply(_next(history, EventType.SIGNAL_RECEIVED, signal_name="b", signal_payload=1))
    instance.apply(_next(history, EventType.SIGNAL_RECEIVED, signal_name="a", signal_payload=2))
    outcome = instance.outcome
    assert outcome is not None and outcome.status is WorkflowStatus.CONTINUED_AS_NEW
    assert outcome.result == 2
    assert outcome.next_run_id and len(outcome.next_run_id) == 32
    assert instance.pending_activities() == []  # the activity it left behind is abandoned
    assert instance.carried_signals() == [("b", 1)]
    [echo] = instance.echoes(len(history) + 1, T0)
    assert echo.type is EventType.WORKFLOW_CONTINUED_AS_NEW
    assert (echo.input, echo.new_run_id, echo.result) == (2, outcome.next_run_id, None)
    history.append(echo)
    instance.apply(echo)

    replayed = _instance(hands_over)
    replayed.replay(history)
    assert replayed.outcome is not None and replayed.outcome_recorded
    assert replayed.outcome.next_run_id == outcome.next_run_id  # the same next run on replay
    other = _instance(hands_over, "other")
    other.replay(history[:4])
    assert other.outcome is not None and other.outcome.next_run_id != outcome.next_run_id


async def order(ctx: WorkflowContext) -> None:
    await ctx.receive_signal("go").receive()
    ctx.continue_as_new(None)


def test_carried_signals_keep_their_arrival_order_across_names() -> None:
    instance = _instance(order)
    history = _events(
        (EventType.WORKFLOW_STARTED, {}),
        (EventType.SIGNAL_RECEIVED, {"signal_name": "x", "signal_payload": 1}),
        (EventType.SIGNAL_RECEIVED, {"signal_name": "y", "signal_payload": 2}),
        (EventType.SIGNAL_RECEIVED, {"signal_name": "x", "signal_payload": 3}),
        (EventType.SIGNAL_RECEIVED, {"signal_name": "go", "signal_payload": None}),
    )
    instance.replay(history)
    assert instance.carried_signals() == [("x", 1), ("y", 2), ("x", 3)]


async def probe(ctx: WorkflowContext) -> list[Any]:
    seen = []
    for _ in range(3):
        await ctx.receive_signal("t").receive()
        info = ctx.info()
        seen.append((info.history_length, info.should_continue_as_new, info.previous_run_ids))
    return seen


def test_info_counts_history_and_suggests_past_the_limit() -> None:
    instance = _instance(probe)
    history = _events(
        (
            EventType.WORKFLOW_STARTED,
            {"continue_as_new_suggested_after": 3, "previous_run_ids": ["r0"]},
        ),
        *[(EventType.SIGNAL_RECEIVED, {"signal_name": "t"}) for _ in range(3)],
    )
    instance.replay(history)
    assert instance.outcome is not None
    assert instance.outcome.result == [[2, False, ["r0"]], [3, True, ["r0"]], [4, True, ["r0"]]]


async def bad(ctx: WorkflowContext) -> str:
    try:
        ctx.continue_as_new(object())
    except PayloadError:
        return "rejected"
    return "continued"


def test_an_input_that_cannot_be_converted_fails_at_the_call() -> None:
    instance = _instance(bad)
    instance.replay(_events((EventType.WORKFLOW_STARTED, {})))
    assert instance.outcome is not None and instance.outcome.result == "rejected"


def test_a_runtime_without_continue_as_new_fails_the_call_by_name() -> None:
    instance = WorkflowInstance(
        workflow_id="wf", run_id="r", workflow_type="t", fn=order, continue_as_new="X"
    )
    instance.replay(
        _events(
            (EventType.WORKFLOW_STARTED, {}), (EventType.SIGNAL_RECEIVED, {"signal_name": "go"})
        )
    )
    assert instance.outcome is not None
    assert instance.outcome.status is WorkflowStatus.FAILED
    with pytest.raises(Exception, match="continue_as_new is not supported on X"):
        raise instance.outcome.error  # type: ignore[misc]
