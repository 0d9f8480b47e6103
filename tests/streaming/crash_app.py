"""Workflows for the streaming crash and scale tests (imported by worker processes).

Every activity run appends ``workflow step attempt started_at`` to the file
named by ``$STREAMFLOW_TEST_RUNS`` before it works, so the test can count
runs and compare them with what the history recorded. ``crash_once`` kills
its own worker process with SIGKILL the first time it runs (a marker file
makes it once per test).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from app.workflow import RetryPolicy, WorkflowContext, activity


def _log_run() -> None:
    info = activity.info()
    path = os.environ.get("STREAMFLOW_TEST_RUNS")
    if path:
        with open(path, "a") as f:
            f.write(f"{info.workflow_id} {info.step} {info.attempt} {time.time():.6f}\n")


async def work(x: int) -> int:
    _log_run()
    await asyncio.sleep(0.05)
    return x + 1


async def crash_once(x: int) -> int:
    _log_run()
    marker = Path(os.environ.get("STREAMFLOW_TEST_RUNS", "runs")).with_suffix(".crashed")
    if not marker.exists():
        marker.write_text("1")
        os.kill(os.getpid(), signal.SIGKILL)
    return x * 10


async def chain(ctx: WorkflowContext, n: int) -> int:
    """n activities in a row, a durable sleep in the middle."""
    value = 0
    for i in range(n):
        value = await ctx.execute_activity(work, value)
        if i == n // 2:
            await ctx.sleep(0.3)
    return value


async def crashing(ctx: WorkflowContext, x: int) -> int:
    first = await ctx.execute_activity(work, x)
    second = await ctx.execute_activity(
        crash_once, first, retry=RetryPolicy(max_attempts=3, initial_interval=0.05)
    )
    return await ctx.execute_activity(work, second)


async def signalled(ctx: WorkflowContext, n: int) -> list[int]:
    """Activities, then waits for ``go`` signals; returns what it got."""
    got: list[int] = []
    value = await ctx.execute_activity(work, n)
    for _ in range(2):
        got.append(await ctx.receive_signal("go").receive())
        value = await ctx.execute_activity(work, value)
    return [value, *got]


async def ticking(ctx: WorkflowContext, interval: float) -> int:
    """An activity and a durable sleep, over and over until a ``stop`` signal.

    Returns the number of activities run, so it spans whatever happens to the
    workers while it runs (a rebalance, a worker leaving).
    """
    stop = ctx.receive_signal("stop")
    value = 0
    while not stop.pending():
        value = await ctx.execute_activity(work, value)
        await ctx.sleep(interval)
    return value


async def linger(seconds: float) -> float:
    _log_run()
    await asyncio.sleep(seconds)
    return seconds


async def lingering(ctx: WorkflowContext, seconds: float) -> float:
    """One activity that takes ``seconds``: in flight when its worker is stopped."""
    result: float = await ctx.execute_activity(linger, seconds)
    return result


def held(path: str) -> str:
    """Runs (in a worker thread) until the file ``path`` exists, at most a minute."""
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.05)  # another process creates it: there is nothing to await
    return "released"


async def waiting(ctx: WorkflowContext, path: str) -> list[str]:
    """Waits on an activity, a timer (a receive timeout) and a signal at once."""
    pending = asyncio.ensure_future(ctx.execute_activity(held, path))
    got = await ctx.receive_signal("go").receive(timeout=3600)
    return [str(got), await pending]


HEARTBEAT_TIMEOUT = 3.0
ACTIVITY_TIMEOUT = 120.0


async def process_items(n: int) -> dict[str, int]:
    """Works through items 0..n-1, heartbeating how many are done; a retry resumes there.

    Appends ``pid attempt done time`` to ``$STREAMFLOW_TEST_RUNS.progress`` after each
    item, so the test knows which worker runs it and how far it got.
    """
    _log_run()
    info = activity.info()
    start: int = info.heartbeat_details or 0
    progress = Path(os.environ.get("STREAMFLOW_TEST_RUNS", "runs")).with_suffix(".progress")
    for i in range(start, n):
        await asyncio.sleep(0.1)  # simulated work on item i
        activity.heartbeat(i + 1)
        with progress.open("a") as f:
            f.write(f"{os.getpid()} {info.attempt} {i + 1} {time.time():.6f}\n")
    return {"attempt": info.attempt, "resumed_from": start, "done": n}


async def resumable(ctx: WorkflowContext, n: int) -> dict[str, int]:
    """One long activity that heartbeats its progress."""
    result: dict[str, int] = await ctx.execute_activity(
        process_items,
        n,
        timeout=ACTIVITY_TIMEOUT,
        heartbeat_timeout=HEARTBEAT_TIMEOUT,
        retry=RetryPolicy(max_attempts=3, initial_interval=0.05),
    )
    return result


async def counter(ctx: WorkflowContext, start: int) -> int:
    """Update ``add`` runs ``work`` on the amount and adds it; ``stop`` ends the run."""
    total = {"value": start}

    async def add(amount: int) -> int:
        total["value"] += await ctx.execute_activity(work, amount)
        return total["value"]

    def positive(amount: int) -> None:
        if amount <= 0:
            raise ValueError(f"amount must be positive, got {amount}")

    ctx.set_update_handler("add", add, validator=positive)
    await ctx.receive_signal("stop").receive()
    return total["value"]


async def kid(ctx: WorkflowContext, x: int) -> int:
    """A child workflow: an activity, a wait for the test's ``go``, another activity."""
    value = await ctx.execute_activity(work, x)
    got: int = await ctx.receive_signal("go").receive()
    result: int = await ctx.execute_activity(work, value + got)
    return result


async def family(ctx: WorkflowContext, x: int) -> int:
    """A parent that waits on its child ``<id>-kid``, then runs an activity on its result."""
    result: int = await ctx.execute_child(kid, x, id=f"{ctx.workflow_id}-kid")
    return await ctx.execute_activity(work, result)


workflows = [chain, crashing, signalled, ticking, lingering, waiting, resumable, counter]
workflows += [kid, family]
activities = [work, crash_once, linger, held, process_items]
