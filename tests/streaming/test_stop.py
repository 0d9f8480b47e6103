"""Stopping a worker while activities run: it drains, stops in bounded time, and hands over.

A stop lets running activities finish and report (``drain_timeout``). Tasks
taken from the stream while it drains are left unacknowledged for the next
owner; the stop must not wait for them (it once waited forever).
"""

from __future__ import annotations

import asyncio
import uuid

from app.streaming import KafkaExecutor, StreamingWorker
from app.streaming.admin import ensure_topics
from app.streaming.settings import test_settings
from app.workflow import WorkflowContext, WorkflowOptions

STOP_BOUND = 30.0
WAIT = 60.0
STARTED: list[str] = []
first_started = asyncio.Event()


async def slow(tag: str) -> str:
    STARTED.append(tag)
    first_started.set()
    await asyncio.sleep(0.5)
    return tag.upper()


async def one_slow_step(ctx: WorkflowContext, tag: str) -> str:
    return str(await ctx.execute_activity(slow, tag))


async def test_stop_while_activities_run_then_another_worker_finishes(
    kafka_bootstrap: str,
) -> None:
    STARTED.clear()
    first_started.clear()
    settings = test_settings(
        kafka_bootstrap,
        app_id=f"stop-{uuid.uuid4().hex[:8]}",
        partitions=1,  # every task queues behind the running one
        activity_concurrency=1,
        drain_timeout=5.0,
    )
    await ensure_topics(settings)
    tags = [f"t{i}" for i in range(6)]
    worker = StreamingWorker(settings, [one_slow_step], [slow])
    await worker.start()
    try:
        async with KafkaExecutor(settings=settings) as ex:
            for tag in tags:
                await ex.execute(one_slow_step, WorkflowOptions(id=tag, input=tag))
            await asyncio.wait_for(first_started.wait(), WAIT)
    finally:
        await asyncio.wait_for(worker.stop(), STOP_BOUND)
    drained = list(STARTED)
    assert drained, "no activity ran before the stop"

    second = StreamingWorker(settings, [one_slow_step], [slow])
    await second.start()
    try:
        async with KafkaExecutor(settings=settings) as ex:
            results = await asyncio.wait_for(
                asyncio.gather(*(ex.get_handle(tag).result(timeout=WAIT) for tag in tags)), WAIT
            )
            assert results == [tag.upper() for tag in tags]
    finally:
        await asyncio.wait_for(second.stop(), STOP_BOUND)
    assert set(STARTED) == set(tags)
    for tag in drained:
        # the first worker let it finish and recorded its outcome: it did not run again
        assert STARTED.count(tag) == 1, STARTED
