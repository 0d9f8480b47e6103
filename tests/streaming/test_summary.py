"""What ``result()`` and ``status`` poll: the state without its history.

A look at a running workflow's state must cost the same at any history
length, so the client asks for a summary (the state and its first event); a
worker from before the summary query answers ``query_not_found``, and the
client then asks for the whole state instead.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from app.streaming import KafkaExecutor, StreamingWorker, _machine
from app.streaming.admin import ensure_topics
from app.streaming.settings import test_settings
from app.workflow import WorkflowContext, WorkflowOptions, WorkflowStatus

STOP_BOUND = 30.0
WAIT = 60.0
STEPS = 12


async def add_one(x: int) -> int:
    return x + 1


async def steps(ctx: WorkflowContext, n: int) -> int:
    value = 0
    for _ in range(n):
        value = int(await ctx.execute_activity(add_one, value))
    return value


@pytest.mark.parametrize("old_worker", [False, True])
async def test_a_summary_carries_the_first_event_only(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch, old_worker: bool
) -> None:
    if old_worker:  # the worker knows only the whole-state query
        monkeypatch.setattr(_machine, "STATE_QUERIES", (_machine.DESCRIBE,))
    settings = test_settings(kafka_bootstrap, app_id=f"summary-{uuid.uuid4().hex[:8]}")
    await ensure_topics(settings)
    worker = StreamingWorker(settings, [steps], [add_one])
    await worker.start()
    try:
        async with KafkaExecutor(settings=settings) as ex:
            handle = await ex.execute(steps, WorkflowOptions(id="s", input=STEPS))
            assert await handle.result(timeout=WAIT) == STEPS
            summary, _ = await ex._state("s", None, history=False)
            whole, _ = await ex._state("s", None)
    finally:
        await asyncio.wait_for(worker.stop(), STOP_BOUND)
    assert summary.status is whole.status is WorkflowStatus.COMPLETED
    assert summary.result == whole.result == STEPS
    assert len(whole.history) > STEPS
    assert len(summary.history) == (len(whole.history) if old_worker else 1)
    assert summary.history[0] == whole.history[0]
