"""``ctx.patched`` / ``ctx.deprecate_patch`` in the core: markers, lookahead, steps."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.testing import replay
from app.workflow import EventType, HistoryEvent, NonDeterminismError, WorkflowContext
from app.workflow._core import WorkflowInstance

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def act_a(x: int) -> int:
    return x + 1


def act_b(x: int) -> int:
    return x + 2


class Run:
    """Records a run the way a runtime does: an input, then the echoes it produced."""

    def __init__(self, fn: Callable[..., Any], history: list[HistoryEvent] | None = None) -> None:
        self.history: list[HistoryEvent] = list(history or [])
        self.instance = WorkflowInstance(workflow_id="wf", run_id="r", workflow_type="t", fn=fn)
        self.instance.replay(self.history)  # the list grows as events are recorded

    def _event(self, kind: EventType, **fields: Any) -> HistoryEvent:
        n = len(self.history) + 1
        return HistoryEvent(id=n, type=kind, timestamp=T0 + timedelta(seconds=n), **fields)

    def input(self, kind: EventType, **fields: Any) -> None:
        event = self._event(kind, **fields)
        self.history.append(event)
        self.instance.apply(event)
        echoes = self.instance.echoes(len(self.history) + 1, T0)
        for echo in echoes:
            self.history.append(echo)
            self.instance.apply(echo)

    def complete_activity(self, result: Any) -> None:
        (act,) = self.instance.pending_activities()
        self.input(
            EventType.ACTIVITY_COMPLETED,
            activity_name=act.name,
            result=result,
            step=act.step,
            attempt=act.attempt,
        )

    def kinds(self) -> list[EventType]:
        return [e.type for e in self.history]


async def v1(ctx: WorkflowContext, x: int) -> int:
    a = int(await ctx.execute_activity(act_a, x))
    await ctx.receive_signal("go").receive()
    return int(await ctx.execute_activity(act_a, a))


async def v2(ctx: WorkflowContext, x: int) -> int:
    if ctx.patched("use-b"):
        a = int(await ctx.execute_activity(act_b, x))
    else:
        a = int(await ctx.execute_activity(act_a, x))
    await ctx.receive_signal("go").receive()
    return int(await ctx.execute_activity(act_a, a))


async def v3(ctx: WorkflowContext, x: int) -> int:
    ctx.deprecate_patch("use-b")
    a = int(await ctx.execute_activity(act_b, x))
    await ctx.receive_signal("go").receive()
    return int(await ctx.execute_activity(act_a, a))


async def v4(ctx: WorkflowContext, x: int) -> int:  # the deprecate_patch call removed too
    a = int(await ctx.execute_activity(act_b, x))
    await ctx.receive_signal("go").receive()
    return int(await ctx.execute_activity(act_a, a))


def started_then_first_activity(fn: Callable[..., Any]) -> Run:
    run = Run(fn)
    run.input(EventType.WORKFLOW_STARTED, input=1)
    run.complete_activity(2 if fn is v1 else 3)
    return run


def test_a_new_run_records_a_marker_that_takes_no_step() -> None:
    run = started_then_first_activity(v2)
    assert run.kinds()[:3] == [
        EventType.WORKFLOW_STARTED,
        EventType.MARKER_RECORDED,
        EventType.ACTIVITY_STARTED,
    ]
    assert run.history[1].change_id == "use-b"
    assert run.history[2].activity_name == "act_b" and run.history[2].step == 1


def test_an_old_history_takes_the_old_branch_and_goes_on_live() -> None:
    old = started_then_first_activity(v1).history
    run = Run(v2, old)  # v2 deployed over a run v1 started
    run.input(EventType.SIGNAL_RECEIVED, signal_name="go")
    assert EventType.MARKER_RECORDED not in run.kinds()
    assert [a.name for a in run.instance.pending_activities()] == ["act_a"]
    run.complete_activity(3)
    assert run.instance.outcome is not None and run.instance.outcome.result == 3


def test_deprecate_patch_replays_histories_with_the_marker_and_records_it_when_new() -> None:
    patched = started_then_first_activity(v2).history
    assert replay(v3, patched).ok
    assert replay(v4, patched).ok  # a marker nobody asks for is let through
    fresh = started_then_first_activity(v3)
    assert [e.change_id for e in fresh.history if e.change_id] == ["use-b"]
    assert replay(v2, fresh.history).ok


def test_the_replayer_names_the_first_diverging_event() -> None:
    old = started_then_first_activity(v1).history
    assert replay(v2, old).ok
    result = replay(v4, old)
    assert not result.ok and result.event_id == 2
    assert "act_b" in result.reason and "act_a" in result.reason
    with pytest.raises(NonDeterminismError):
        result.raise_if_diverged()
    # v1 over a history that took the new branch
    assert replay(v1, started_then_first_activity(v2).history).event_id == 3


async def asks_twice(ctx: WorkflowContext) -> list[bool]:
    return [ctx.patched("p"), ctx.patched("p"), ctx.patched("q")]


def test_one_answer_and_one_marker_per_change_id() -> None:
    run = Run(asks_twice)
    run.input(EventType.WORKFLOW_STARTED)
    assert [e.change_id for e in run.history if e.change_id] == ["p", "q"]
    assert run.instance.outcome is not None and run.instance.outcome.result == [True, True, True]
    assert replay(asks_twice, run.history).ok
