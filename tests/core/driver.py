"""A hand-driven runtime for core tests: records events, applies them, replays them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from app.workflow import EventType, FailureInfo, HistoryEvent
from app.workflow._core import WorkflowInstance

T0 = datetime(2030, 1, 1, tzinfo=UTC)


class Driver:
    """Plays the runtime's part by hand: records events and applies them."""

    def __init__(self, fn: Any, input: Any = None, timeout: float | None = None) -> None:
        self.history: list[HistoryEvent] = []
        self.fn = fn
        self.timeout = timeout
        self.instance = self.new_instance()
        self.clock = 0.0
        self.add(EventType.WORKFLOW_STARTED, input=input)

    def new_instance(self) -> WorkflowInstance:
        return WorkflowInstance(
            workflow_id="wf", run_id="run", workflow_type="t", fn=self.fn, timeout=self.timeout
        )

    def add(self, kind: EventType, advance: float = 0.001, **fields: Any) -> HistoryEvent:
        self.clock += advance
        event = HistoryEvent(
            id=len(self.history) + 1,
            type=kind,
            timestamp=T0 + timedelta(seconds=self.clock),
            **fields,
        )
        self.history.append(event)
        self.instance.apply(event)
        self.echo()
        return event

    def echo(self) -> None:
        for act in self.instance.pending_activities():
            if not act.recorded:
                self.add(
                    EventType.ACTIVITY_STARTED,
                    advance=0,
                    activity_name=act.name,
                    input=act.input,
                    step=act.step,
                    attempt=act.attempt,
                )
        outcome = self.instance.outcome
        if outcome is not None and not self.instance.outcome_recorded:
            self.add(outcome.event_type, advance=0, result=outcome.result, failure=outcome.failure)

    def complete(self, step: int, result: Any) -> None:
        act = next(a for a in self.instance.pending_activities() if a.step == step)
        self.add(EventType.ACTIVITY_COMPLETED, step=step, attempt=act.attempt, result=result)

    def fail(self, step: int, failure: FailureInfo) -> None:
        act = next(a for a in self.instance.pending_activities() if a.step == step)
        self.add(EventType.ACTIVITY_FAILED, step=step, attempt=act.attempt, failure=failure)

    def fire(self, step: int) -> None:
        timer = self.instance.pending_timers()[step]
        ahead = max(0.0, timer.due - self.now())
        self.add(EventType.TIMER_FIRED, advance=ahead, step=step, attempt=timer.attempt)

    def now(self) -> float:
        return (T0 + timedelta(seconds=self.clock)).timestamp()

    def replay(self, fn: Any = None) -> WorkflowInstance:
        instance = WorkflowInstance(
            workflow_id="wf",
            run_id="run",
            workflow_type="t",
            fn=fn or self.fn,
            timeout=self.timeout,
        )
        for event in self.history:
            instance.apply(event)
        return instance
