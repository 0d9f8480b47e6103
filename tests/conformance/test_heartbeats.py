"""Activity heartbeats: a stalled attempt is retried early and resumes; cancels reach it."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import pytest

from app.workflow import (
    ActivityCancelledError,
    EventType,
    InvalidArgumentError,
    RetryPolicy,
    WorkflowCanceledError,
    WorkflowContext,
    WorkflowFailedError,
    WorkflowOptions,
    WorkflowStatus,
    activity,
)
from tests.conformance.conftest import WAIT, Recorder, Runtime

HEARTBEAT_TIMEOUT = 1.0
ACTIVITY_TIMEOUT = 60.0  # far longer than a heartbeat timeout: only heartbeats detect the stall
STALL = 6.0  # how long the first attempt stalls (it is abandoned long before)

# Activities run in the test's process on every runtime: they tell the test what they saw.
_events: dict[str, threading.Event] = {}


def _event(key: str) -> threading.Event:
    return _events.setdefault(key, threading.Event())


async def count_items(n: int) -> dict[str, Any]:
    """Processes items 0..n-1, heartbeating the index; attempt 1 stalls at item 3."""
    info = activity.info()
    start = info.heartbeat_details or 0
    for i in range(start, n):
        activity.heartbeat(i)
        if info.attempt == 1 and i == 3:
            await asyncio.sleep(STALL)  # stops heartbeating: a lost worker, seen from outside
            return {"attempt": 1, "resumed_from": start}
        await asyncio.sleep(0.01)
    return {"attempt": info.attempt, "resumed_from": start, "timeout": info.heartbeat_timeout}


def heartbeat_until_cancelled(key: str) -> str:
    """A plain (threaded) activity that heartbeats until told it is no longer wanted."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            activity.heartbeat(key)
        except ActivityCancelledError:
            _event(f"{key}:cancelled").set()
            raise
        _event(f"{key}:started").set()
        time.sleep(0.05)  # simulated work between heartbeats
    return "never cancelled"


async def stalls_then_resumes(ctx: WorkflowContext, n: int) -> dict[str, Any]:
    policy = RetryPolicy(max_attempts=3, initial_interval=0.01, max_interval=0.01)
    result: dict[str, Any] = await ctx.execute_activity(
        count_items,
        n,
        retry=policy,
        timeout=ACTIVITY_TIMEOUT,
        heartbeat_timeout=HEARTBEAT_TIMEOUT,
    )
    return result


async def cancellable(ctx: WorkflowContext, key: str) -> str:
    result: str = await ctx.execute_activity(
        heartbeat_until_cancelled, key, timeout=ACTIVITY_TIMEOUT, heartbeat_timeout=5.0
    )
    return result


async def bad_heartbeat_timeout(ctx: WorkflowContext, case: str) -> str:
    kwargs: dict[str, Any] = {
        "negative": {"heartbeat_timeout": -1.0},
        "zero": {"heartbeat_timeout": 0},
        "not_a_number": {"heartbeat_timeout": "3s"},
        "longer_than_timeout": {"heartbeat_timeout": 10.0, "timeout": 5.0},
    }[case]
    try:
        await ctx.execute_activity(count_items, 1, **kwargs)
    except InvalidArgumentError as exc:
        return f"invalid: {exc}"
    return "accepted"


def progress_then_fail(key: str) -> Any:
    """Attempt 1 heartbeats its progress and fails; the next returns the details it got."""
    info = activity.info()
    if info.attempt == 1:
        activity.heartbeat({"done": 3, "key": key})
        raise ConnectionError("lost the connection after item 3")
    return info.heartbeat_details


BACKOFF = 1.5  # long enough for the test to restart the executor before the retry


async def fails_then_resumes(ctx: WorkflowContext, key: str) -> Any:
    return await ctx.execute_activity(
        progress_then_fail,
        key,
        retry=RetryPolicy(max_attempts=2, initial_interval=BACKOFF, max_interval=BACKOFF, jitter=0),
        timeout=ACTIVITY_TIMEOUT,
    )


WORKFLOWS = [stalls_then_resumes, cancellable, bad_heartbeat_timeout, fails_then_resumes]
ACTIVITIES = [count_items, heartbeat_until_cancelled, progress_then_fail]


async def test_stalled_attempt_is_retried_within_heartbeat_timeout(runtime: Runtime) -> None:
    async with runtime.open(workflows=WORKFLOWS, activities=ACTIVITIES) as ex:
        handle = await ex.execute(stalls_then_resumes, WorkflowOptions(id="hb-stall", input=8))
        result = await handle.result(timeout=WAIT + STALL)
        state = await ex.describe("hb-stall")
    # the retry resumed at the last heartbeated item, not at 0
    assert result == {"attempt": 2, "resumed_from": 3, "timeout": HEARTBEAT_TIMEOUT}
    started = [e for e in state.history if e.type is EventType.ACTIVITY_STARTED]
    failed = [e for e in state.history if e.type is EventType.ACTIVITY_FAILED]
    assert [e.attempt for e in started] == [1, 2]
    assert [e.attempt for e in failed] == [1]
    assert failed[0].failure is not None and failed[0].failure.type == "builtins.TimeoutError"
    assert "heartbeat" in (failed[0].error or "")
    # detected by the heartbeat timeout, long before the attempt's own timeout
    detected = (failed[0].timestamp - started[0].timestamp).total_seconds()
    assert HEARTBEAT_TIMEOUT * 0.9 <= detected < STALL < ACTIVITY_TIMEOUT


async def test_heartbeat_details_reach_the_retry_after_a_restart(
    restartable: Runtime, recorder: Recorder
) -> None:
    rt = restartable
    async with rt.open(recorder.hooks(), workflows=WORKFLOWS, activities=ACTIVITIES) as ex:
        await ex.execute(fails_then_resumes, WorkflowOptions(id="hb-restart", input="k"))
        # stop while the retry waits out its backoff
        await recorder.wait_for("retry", "hb-restart", timeout=WAIT)
    async with rt.open(workflows=WORKFLOWS, activities=ACTIVITIES) as ex:
        result = await ex.get_handle("hb-restart").result(timeout=WAIT + BACKOFF)
    # the details lived through the restart: they are kept with the failed attempt's event
    assert result == {"done": 3, "key": "k"}


async def test_cancel_reaches_a_heartbeating_activity(runtime: Runtime, recorder: Recorder) -> None:
    key = f"cancel-{uuid.uuid4().hex[:8]}"
    async with runtime.open(
        hooks=recorder.hooks(), workflows=WORKFLOWS, activities=ACTIVITIES
    ) as ex:
        handle = await ex.execute(cancellable, WorkflowOptions(id="hb-cancel", input=key))
        assert await asyncio.to_thread(_event(f"{key}:started").wait, WAIT)
        await ex.cancel("hb-cancel")
        with pytest.raises(WorkflowCanceledError):
            await handle.result(timeout=WAIT)
        assert await handle.status() is WorkflowStatus.CANCELED
        # the activity's next heartbeat raised ActivityCancelledError
        assert await asyncio.to_thread(_event(f"{key}:cancelled").wait, WAIT)


@pytest.mark.parametrize("case", ["negative", "zero", "not_a_number", "longer_than_timeout"])
async def test_invalid_heartbeat_timeout_fails_at_the_call(runtime: Runtime, case: str) -> None:
    wid = f"hb-bad-{case}"
    async with runtime.open(workflows=WORKFLOWS, activities=ACTIVITIES) as ex:
        handle = await ex.execute(bad_heartbeat_timeout, WorkflowOptions(id=wid, input=case))
        try:
            result = await handle.result(timeout=WAIT)
        except WorkflowFailedError as exc:  # pragma: no cover - reported if it regresses
            raise AssertionError(f"the workflow failed instead of catching: {exc}") from exc
    assert result.startswith("invalid: activity heartbeat_timeout")
    if case == "longer_than_timeout":
        assert "must not exceed its timeout" in result


def test_heartbeat_outside_an_activity_raises() -> None:
    with pytest.raises(RuntimeError, match="outside a running activity"):
        activity.heartbeat(1)
