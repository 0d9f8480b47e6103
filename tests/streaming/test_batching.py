"""Results that arrive together for one workflow are applied in one activation.

Through the task topic (eager dispatch off), with the executor held while
twenty activities finish: their results are then fetched together, and the
workflow's header is written once or twice for all of them, not twenty times.
The history on the topic is still complete and in order.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

from app.streaming import KafkaExecutor, StreamingWorker
from app.streaming._eager import merge
from app.streaming._machine import Effects, Reply
from app.streaming.admin import ensure_topics
from app.streaming.settings import test_settings
from app.workflow import EventType, HistoryEvent, WorkflowContext, WorkflowOptions

WAIT = 60.0
STOP_BOUND = 30.0
FAN_OUT = 20
go = asyncio.Event()
started: set[int] = set()
all_started = asyncio.Event()


async def part(i: int) -> int:
    started.add(i)
    if len(started) == FAN_OUT:
        all_started.set()
    await go.wait()
    return i * i


async def gather_parts(ctx: WorkflowContext, n: int) -> int:
    values = await asyncio.gather(*(ctx.execute_activity(part, i) for i in range(n)))
    return sum(int(v) for v in values)


def event(i: int, kind: EventType = EventType.ACTIVITY_COMPLETED) -> HistoryEvent:
    return HistoryEvent(id=i, type=kind, timestamp=datetime.now(UTC))


def test_merging_keeps_each_event_with_the_run_that_recorded_it() -> None:
    into = Effects(events=[event(1)], retries={1})
    merge(into, Effects(events=[event(2)], reply=Reply(ok=True)))
    assert [e.id for e in into.events] == [1, 2] and into.retries == {1}
    # the next command continued the run as new: its ended entry gets the earlier events
    merge(
        into,
        Effects(
            events=[event(1, EventType.WORKFLOW_STARTED)],
            ended=[("run-1", [event(3, EventType.WORKFLOW_CONTINUED_AS_NEW)], set())],
            started=True,
        ),
    )
    assert [(run, [e.id for e in events], r) for run, events, r in into.ended] == [
        ("run-1", [1, 2, 3], {1})
    ]
    assert [e.type for e in into.events] == [EventType.WORKFLOW_STARTED]
    assert into.retries == set() and into.started


async def test_results_fetched_together_are_written_once(kafka_bootstrap: str) -> None:
    go.clear()
    all_started.clear()
    started.clear()
    settings = test_settings(
        kafka_bootstrap,
        app_id=f"batch-{uuid.uuid4().hex[:8]}",
        eager_activities=0,
        partitions=1,
    )
    await ensure_topics(settings)
    worker = StreamingWorker(settings, [gather_parts], [part])
    writes: list[int] = []
    write_header = worker.store.write_header

    async def counted(run: Any, partition: int) -> None:
        writes.append(len(run.state.history))
        await write_header(run, partition)

    worker.store.write_header = counted  # type: ignore[method-assign]
    await worker.start()
    try:
        async with KafkaExecutor(settings=settings) as ex:
            handle = await ex.execute(gather_parts, WorkflowOptions(id="g", input=FAN_OUT))
            await asyncio.wait_for(all_started.wait(), WAIT)
            assert worker.activity_worker is not None
            results = worker.activity_worker.results
            sent: list[bytes] = []
            all_sent = asyncio.Event()
            send = results.send

            async def counted_send(*, key: bytes, value: bytes) -> None:
                await send(key=key, value=value)
                sent.append(key)
                if len(sent) == FAN_OUT:
                    all_sent.set()

            results.send = counted_send  # type: ignore[method-assign]
            async with worker.consumer.gate:  # the executor takes nothing meanwhile
                before = len(writes)
                go.set()
                await asyncio.wait_for(all_sent.wait(), WAIT)
                # every result is on the broker before the executor goes on
                await asyncio.wait_for(worker.activity_worker.producer.flush(), WAIT)
            assert await handle.result(timeout=WAIT) == sum(i * i for i in range(FAN_OUT))
            history = (await ex.describe("g")).history
    finally:
        await asyncio.wait_for(worker.stop(), STOP_BOUND)
    # at most the batch the executor had fetched before it was held, then the rest
    assert len(writes) - before <= 2, writes
    completed = [e.step for e in history if e.type is EventType.ACTIVITY_COMPLETED]
    assert sorted(completed) == sorted({e.step for e in history if e.step is not None})
    assert len(completed) == FAN_OUT
    assert [e.id for e in history] == list(range(1, len(history) + 1))
