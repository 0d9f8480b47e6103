"""One history record per activation: a HistoryBatch, read back by every reader.

A worker writes the events one activation records as one ``HistoryBatch``
record (headers ``types`` and ``retries``), and one event alone as a
``HistoryEvent``; with ``history_batch_bytes=0`` every event is its own
``HistoryEvent``, as before batches. The client (its hooks and results) and
the visibility index read a topic holding both shapes, as during an upgrade,
and skip records they cannot decode.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from app.streaming import KafkaExecutor, StreamingWorker, VisibilityIndex
from app.streaming._messages import decode_history_records
from app.streaming._wire import WireError, codec
from app.streaming.admin import ensure_topics
from app.streaming.settings import StreamingSettings, test_settings
from app.workflow import Hooks, RetryPolicy, WorkflowContext, WorkflowOptions, WorkflowStatus
from app.workflow._types import EventType

WAIT = 60.0
PARTITIONS = 2
RETRY = RetryPolicy(max_attempts=3, initial_interval=0.01, max_interval=0.01)
_failed_once: set[str] = set()


async def triple(x: int) -> int:
    return 3 * x


async def fails_once(key: str) -> str:
    if key not in _failed_once:
        _failed_once.add(key)
        raise RuntimeError(f"first attempt of {key}")
    return key


async def fan_and_retry(ctx: WorkflowContext, n: int) -> list[Any]:
    tripled = await asyncio.gather(*(ctx.execute_activity(triple, i) for i in range(n)))
    again = await ctx.execute_activity(fails_once, ctx.workflow_id, retry=RETRY)
    return [*tripled, again]


async def read_records(settings: StreamingSettings) -> list[Any]:
    """Every record of the history topic, in offset order within each partition."""
    topic = settings.topology.history
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=10,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records: list[Any] = []
        async with asyncio.timeout(WAIT):
            for tp in tps:
                while await consumer.position(tp) < ends[tp]:
                    records += (await consumer.getmany(tp, timeout_ms=500)).get(tp, [])
    finally:
        await consumer.stop()
    return records


def unusable_records() -> list[bytes]:
    """History records no reader can decode: not Avro, a batch whose types and events
    disagree, a batch whose event is not a HistoryEvent message."""
    batch = codec("history_batch")
    return [
        b"not avro at all",
        batch.encode({"types": ["workflow_completed"], "events": []}),
        batch.encode({"types": ["workflow_completed"], "events": [b"junk"]}),
    ]


UNUSABLE = unusable_records()


async def publish_unusable(settings: StreamingSettings) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)
    await producer.start()
    try:
        for value in UNUSABLE:
            # a header a client wants: it decodes them, fails, and says so
            headers = [("types", b"workflow_completed")]
            await producer.send_and_wait(settings.topology.history, value, b"bad", headers=headers)
    finally:
        await producer.stop()


class Skipped(logging.Handler):
    """Counts the client's warnings about history records it could not decode."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0
        self.all = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "undecodable history record" in record.getMessage():
            self.count += 1
            if self.count == len(UNUSABLE):
                self.all.set()


async def run_one(settings: StreamingSettings, ex: KafkaExecutor, wid: str) -> list[Any]:
    worker = StreamingWorker(settings, [fan_and_retry], [triple, fails_once])
    await worker.start()
    try:
        handle = await ex.execute(fan_and_retry, WorkflowOptions(id=wid, input=4))
        return list(await handle.result(timeout=WAIT))
    finally:
        await worker.stop()


async def test_batches_and_single_events_read_alike(kafka_bootstrap: str) -> None:
    app_id = f"batches-{uuid.uuid4().hex[:8]}"
    settings = test_settings(kafka_bootstrap, app_id=app_id, partitions=PARTITIONS)
    await ensure_topics(settings)
    _failed_once.clear()  # each workflow's first attempt fails, in this run too
    calls: list[tuple[str, str]] = []
    both_done = asyncio.Event()

    def done(wid: str, _: Any) -> None:
        calls.append((wid, "done"))
        if sum(1 for c in calls if c[1] == "done") == 2:
            both_done.set()

    hooks = Hooks(
        on_activity_complete=lambda wid, _: calls.append((wid, "complete")),
        on_retry=lambda wid, _: calls.append((wid, "retry")),
        on_workflow_complete=done,
    )
    skipped = Skipped()
    logging.getLogger("app.streaming.client").addHandler(skipped)
    try:
        async with KafkaExecutor(settings=settings, hooks=hooks) as ex:
            await publish_unusable(settings)
            # first a worker from before batches (one record per event), then one with them
            old = settings.model_copy(update={"history_batch_bytes": 0})
            assert await run_one(old, ex, "single") == [0, 3, 6, 9, "single"]
            assert await run_one(settings, ex, "batched") == [0, 3, 6, 9, "batched"]
            await asyncio.wait_for(both_done.wait(), WAIT)
            await asyncio.wait_for(skipped.all.wait(), WAIT)
    finally:
        logging.getLogger("app.streaming.client").removeHandler(skipped)

    # hooks: the same calls for both shapes, the retry once
    for wid in ("single", "batched"):
        mine = [kind for w, kind in calls if w == wid]
        assert mine == ["complete"] * 4 + ["retry", "complete", "done"], (wid, mine)

    records = await read_records(settings)
    unusable = [r for r in records if r.key == b"bad"]
    assert len(unusable) == len(UNUSABLE)
    for record in unusable:
        with pytest.raises(WireError):
            decode_history_records(record.value)
    records = [r for r in records if r.key != b"bad"]
    shapes: dict[str, list[int]] = {"single": [], "batched": []}
    events: dict[str, list[Any]] = {"single": [], "batched": []}
    for record in records:
        wid = record.key.decode()
        decoded = decode_history_records(record.value)
        headers = dict(record.headers)
        types = [e.type.value for _, _, _, e in decoded]
        if codec("history_batch").wrote(record.value):
            assert headers["types"].decode().split(",") == types
            retried = headers.get("retries", b"").decode()
            assert {int(i) for i in retried.split(",") if i} == {
                e.id for _, _, _, e in decoded if e.type is EventType.ACTIVITY_FAILED
            }
        else:
            assert headers["type"].decode() == types[0] and len(types) == 1
            failed = types[0] == EventType.ACTIVITY_FAILED.value
            assert ("retry" in headers) == failed
        shapes[wid].append(len(decoded))
        events[wid] += [e for _, _, _, e in decoded]

    assert set(shapes["single"]) == {1}
    assert max(shapes["batched"]) > 1
    assert len(shapes["batched"]) < len(shapes["single"])
    # the same events in the same order, ids counting from 1 without a gap
    for wid in shapes:
        assert [e.id for e in events[wid]] == list(range(1, len(events[wid]) + 1))
    assert [e.type for e in events["single"]] == [e.type for e in events["batched"]]

    # the visibility index takes both shapes
    index = VisibilityIndex(settings)
    try:
        await index.catch_up()
        page = await index.list()
        by_id = {s.workflow_id: s for s in page.items}
        assert {w: s.status for w, s in by_id.items()} == {
            "single": WorkflowStatus.COMPLETED,
            "batched": WorkflowStatus.COMPLETED,
        }
        assert by_id["single"].history_length == by_id["batched"].history_length
    finally:
        await index.aclose()
