"""The workflow the chaos scenario runs (imported by the worker processes).

Each activity run appends ``start|end workflow step attempt time`` to the file
named by ``$STREAMFLOW_TEST_RUNS``, so the scenario can count the runs of each
attempt and tell which ones a disruption cut short.
"""

from __future__ import annotations

import asyncio
import os
import time
import zlib

from app.workflow import RetryPolicy, WorkflowContext, activity

RETRY = RetryPolicy(max_attempts=100, initial_interval=0.2, max_interval=2.0)


def _log(what: str) -> None:
    path = os.environ.get("STREAMFLOW_TEST_RUNS")
    if path:
        info = activity.info()
        with open(path, "a") as f:
            f.write(f"{what} {info.workflow_id} {info.step} {info.attempt} {time.time():.6f}\n")


async def chaos_step(x: int) -> int:
    """Adds one, after 50 to 250 ms (the same for a given workflow and step)."""
    _log("start")
    info = activity.info()
    spread = zlib.crc32(f"{info.workflow_id}/{info.step}".encode()) % 200
    await asyncio.sleep(0.05 + spread / 1000)
    _log("end")
    return x + 1


async def chaotic(ctx: WorkflowContext, steps: int) -> int:
    """``steps`` activities, half of them without a timeout; a sleep; waits for ``go``."""
    total = 0
    for i in range(steps):
        timeout = 15.0 if i % 2 else None
        total = await ctx.execute_activity(chaos_step, total, timeout=timeout, retry=RETRY)
        if i == steps // 3:
            await ctx.sleep(0.5)
        if i == steps // 2:
            total += int(await ctx.receive_signal("go").receive())
    return total


def expected(steps: int, signal: int) -> int:
    """What :func:`chaotic` returns."""
    return steps + signal


workflows = [chaotic]
activities = [chaos_step]
