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
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.workflow import EventType, FailureInfo, RetryPolicy, WorkflowContext
from tests.core.driver import Driver

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


def choices(run: Driver) -> list[tuple[str, Any]]:
    """What may happen next to a run that has not ended."""
    instance = run.instance
    if instance.outcome is not None:
        return []
    out: list[tuple[str, Any]] = []
    for act in instance.pending_activities():
        out += [("complete", act.step), ("fail", act.step)]
    out += [("fire", step) for step in instance.pending_timers()]
    return [*out, ("signal", None), ("cancel", None)]


def happen(run: Driver, choice: tuple[str, Any]) -> None:
    what, step = choice
    if what == "complete":
        act = next(a for a in run.instance.pending_activities() if a.step == step)
        run.complete(step, act.input)
    elif what == "fail":
        run.fail(step, FailureInfo(type="builtins.OSError", message="flaky"))
    elif what == "fire":
        run.fire(step)
    elif what == "signal":
        run.add(EventType.SIGNAL_RECEIVED, signal_name="s", signal_payload=len(run.history))
    else:
        run.add(EventType.CANCEL_REQUESTED)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(OPS, min_size=1, max_size=6), data=st.data())
def test_replay_rebuilds_the_live_state_at_every_step(ops: list[list[Any]], data: Any) -> None:
    run = Driver(program, ops)
    for _ in range(60):
        options = choices(run)
        if not options:
            break
        calm = [c for c in options if c[0] != "cancel"]
        pool = calm if data.draw(st.integers(0, 19)) else options  # cancel now and then
        happen(run, data.draw(st.sampled_from(pool)))
        replayed = run.replay()
        assert replayed.snapshot() == run.instance.snapshot(), run.history
        assert replayed.summary() == run.instance.summary()
    ids = [e.id for e in run.history]
    assert ids == list(range(1, len(ids) + 1))
