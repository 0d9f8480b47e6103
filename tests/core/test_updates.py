"""Updates in the core: validation, the handler as a workflow task, its recorded answer."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.workflow import (
    EventType,
    HistoryEvent,
    InvalidArgumentError,
    UpdateNotFoundError,
    UpdateRejectedError,
    WorkflowContext,
)
from app.workflow._core import WorkflowInstance

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def double(x: int) -> int:
    return 2 * x


def _positive(amount: int) -> None:
    if amount <= 0:
        raise ValueError(f"amount must be positive, got {amount}")


async def counter(ctx: WorkflowContext) -> int:
    total = {"value": 0}

    async def add(amount: int) -> int:
        total["value"] += await ctx.execute_activity(double, amount)
        return total["value"]

    async def boom() -> None:
        raise RuntimeError("no")

    ctx.set_update_handler("add", add, validator=_positive)
    ctx.set_update_handler("boom", boom)
    await ctx.receive_signal("stop").receive()
    return total["value"]


class Run:
    """Records a run as a runtime does: an input, then the echoes it produced."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.history: list[HistoryEvent] = []
        self.instance = WorkflowInstance(workflow_id="wf", run_id="r", workflow_type="t", fn=fn)
        self.input(EventType.WORKFLOW_STARTED)

    def input(self, kind: EventType, **fields: Any) -> None:
        n = len(self.history) + 1
        event = HistoryEvent(id=n, type=kind, timestamp=T0 + timedelta(seconds=n), **fields)
        self.history.append(event)
        self.instance.apply(event)
        for echo in self.instance.echoes(len(self.history) + 1, T0 + timedelta(seconds=n)):
            self.history.append(echo)
            self.instance.apply(echo)

    def accept(self, update_id: str, name: str, arg: Any = None) -> None:
        self.instance.validate_update(name, arg)
        self.input(
            EventType.UPDATE_ACCEPTED, signal_name=name, signal_payload=arg, change_id=update_id
        )

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


def test_an_update_runs_an_activity_and_records_its_answer() -> None:
    run = Run(counter)
    run.accept("u1", "add", 3)
    assert run.kinds()[-2:] == [EventType.UPDATE_ACCEPTED, EventType.ACTIVITY_STARTED]
    state = run.instance.update("u1")
    assert state is not None and not state.done
    run.complete_activity(6)
    done = run.history[-1]
    assert done.type is EventType.UPDATE_COMPLETED
    assert (done.change_id, done.signal_name, done.result) == ("u1", "add", 6)
    assert run.instance.update("u1") == state and state.recorded and state.result == 6

    replayed = WorkflowInstance(workflow_id="wf", run_id="r", workflow_type="t", fn=counter)
    replayed.replaying = True
    replayed.replay(run.history)
    assert replayed.snapshot() == run.instance.snapshot()


def test_validation_refuses_without_recording() -> None:
    run = Run(counter)
    before = list(run.history)
    with pytest.raises(UpdateRejectedError, match="amount must be positive, got 0"):
        run.accept("u1", "add", 0)
    with pytest.raises(UpdateNotFoundError, match="known updates: add, boom"):
        run.accept("u2", "nope")
    assert run.history == before
    assert run.instance.update("u1") is None


def test_a_failing_handler_is_answered_with_its_failure() -> None:
    run = Run(counter)
    run.accept("u1", "boom")
    done = run.history[-1]
    assert done.type is EventType.UPDATE_COMPLETED
    assert done.failure is not None and done.failure.message == "no"
    assert run.instance.outcome is None  # the workflow goes on


def test_an_update_running_when_the_run_ends_is_answered_first() -> None:
    run = Run(counter)
    run.accept("u1", "add", 2)
    run.input(EventType.SIGNAL_RECEIVED, signal_name="stop")
    assert run.kinds()[-2:] == [EventType.UPDATE_COMPLETED, EventType.WORKFLOW_COMPLETED]
    failure = run.history[-2].failure
    assert failure is not None and "ended (completed) before update 'add' finished" in (
        failure.message
    )


def test_accepting_one_update_id_twice_diverges() -> None:
    run = Run(counter)
    run.accept("u1", "add", 2)
    with pytest.raises(Exception, match="accepted a second time"):
        run.input(EventType.UPDATE_ACCEPTED, signal_name="add", signal_payload=2, change_id="u1")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("", lambda: 1), "update name must be a non-empty string"),
        (("x", 5), "update handler for 'x' must be callable"),
        (("x", lambda: 1, 5), "update validator for 'x' must be callable or None"),
        (("x", lambda a, b: 1), "at most one required parameter"),
    ],
)
def test_set_update_handler_checks_its_arguments(args: tuple[Any, ...], message: str) -> None:
    errors: list[BaseException] = []

    async def wf(ctx: WorkflowContext) -> None:
        try:
            ctx.set_update_handler(*args)
        except InvalidArgumentError as err:
            errors.append(err)

    Run(wf)
    assert len(errors) == 1 and message in str(errors[0])
