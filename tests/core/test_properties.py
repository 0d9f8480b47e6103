"""Property: whatever order events arrive in, replaying the history rebuilds the same state.

Hypothesis draws a small workflow program (activities, fan-outs, sleeps,
signal waits with or without timeouts, retried activities) and then, step by
step, which of the things the workflow waits for happens next: an activity
completes or fails, a timer fires, a signal arrives, a cancel comes. After
every event the whole history is replayed into a fresh instance, which must
reach exactly the live instance's state.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.workflow import EventType, FailureInfo, HistoryEvent, RetryPolicy, WorkflowContext
from app.workflow._core import WorkflowInstance

T0 = datetime(2031, 5, 1, tzinfo=UTC)
RETRY = RetryPolicy(max_attempts=3, initial_interval=1, max_interval=4)


def work(x: Any) -> Any:
    return x


async def program(ctx: WorkflowContext, ops: list[list[Any]]) -> list[Any]:
    out: list[Any] = []
    try:
        for op, arg in ops:
            if op == "act":
                out.append(await ctx.execute_activity(work, arg, retry=RETRY))
            elif op == "gather":
                calls = [ctx.execute_activity(work, i, retry=RETRY) for i in range(arg)]
                out.append(await asyncio.gather(*calls, return_exceptions=True))
            elif op == "sleep":
                await ctx.sleep(arg)
                out.append("slept")
            elif op == "signal":
                try:
                    out.append(await ctx.receive_signal("s").receive(timeout=arg))
                except TimeoutError:
                    out.append("timeout")
            elif op == "timeout_act":
                out.append(await ctx.execute_activity(work, arg, timeout=2, retry=RETRY))
    except Exception as exc:  # an activity failing for good ends the program, not the test
        out.append(type(exc).__name__)
    finally:
        out.append(ctx.random().randint(0, 1000))
    return out


OPS = st.one_of(
    st.tuples(st.just("act"), st.integers(0, 9)),
    st.tuples(st.just("gather"), st.integers(1, 4)),
    st.tuples(st.just("sleep"), st.sampled_from([0.5, 3.0])),
    st.tuples(st.just("signal"), st.sampled_from([None, 2.0])),
    st.tuples(st.just("timeout_act"), st.integers(0, 9)),
).map(list)


class Run:
    def __init__(self, ops: list[list[Any]]) -> None:
        self.ops = ops
        self.history: list[HistoryEvent] = []
        self.clock = 0.0
        self.live = self.fresh()
        self.add(EventType.WORKFLOW_STARTED, input=ops)

    def fresh(self) -> WorkflowInstance:
        return WorkflowInstance(workflow_id="p", run_id="r", workflow_type="program", fn=program)

    def add(self, kind: EventType, advance: float = 0.01, **fields: Any) -> None:
        self.clock += advance
        event = HistoryEvent(
            id=len(self.history) + 1,
            type=kind,
            timestamp=T0 + timedelta(seconds=self.clock),
            **fields,
        )
        self.history.append(event)
        self.live.apply(event)
        for act in self.live.pending_activities():
            if not act.recorded:
                self.add(
                    EventType.ACTIVITY_STARTED,
                    advance=0,
                    activity_name=act.name,
                    input=act.input,
                    step=act.step,
                    attempt=act.attempt,
                )
        outcome = self.live.outcome
        if outcome is not None and not self.live.outcome_recorded:
            self.add(outcome.event_type, advance=0, result=outcome.result, failure=outcome.failure)

    def choices(self) -> list[tuple[str, Any]]:
        if self.live.outcome is not None:
            return []
        out: list[tuple[str, Any]] = []
        for act in self.live.pending_activities():
            out += [("complete", act), ("fail", act)]
        out += [("fire", t) for t in self.live.pending_timers().values()]
        out += [("signal", None), ("cancel", None)]
        return out

    def do(self, choice: tuple[str, Any]) -> None:
        what, item = choice
        if what == "complete":
            step, attempt = item.step, item.attempt
            self.add(EventType.ACTIVITY_COMPLETED, step=step, attempt=attempt, result=item.input)
        elif what == "fail":
            failure = FailureInfo(type="builtins.OSError", message="flaky")
            step, attempt = item.step, item.attempt
            self.add(EventType.ACTIVITY_FAILED, step=step, attempt=attempt, failure=failure)
        elif what == "fire":
            ahead = max(0.0, item.due - (T0 + timedelta(seconds=self.clock)).timestamp())
            self.add(EventType.TIMER_FIRED, advance=ahead, step=item.step, attempt=item.attempt)
        elif what == "signal":
            self.add(EventType.SIGNAL_RECEIVED, signal_name="s", signal_payload=len(self.history))
        else:
            self.add(EventType.CANCEL_REQUESTED)

    def replayed(self) -> WorkflowInstance:
        instance = self.fresh()
        for event in self.history:
            instance.apply(event)
        return instance


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(OPS, min_size=1, max_size=6), data=st.data())
def test_replay_rebuilds_the_live_state_at_every_step(ops: list[list[Any]], data: Any) -> None:
    run = Run(ops)
    for _ in range(60):
        choices = run.choices()
        if not choices:
            break
        weights = [c for c in choices if c[0] != "cancel"] or choices
        pool = weights if data.draw(st.integers(0, 19)) else choices  # cancel now and then
        run.do(data.draw(st.sampled_from(pool)))
        replayed = run.replayed()
        assert replayed.snapshot() == run.live.snapshot(), run.history
        assert replayed.summary() == run.live.summary()
    ids = [e.id for e in run.history]
    assert ids == list(range(1, len(ids) + 1))
