"""Many clients on one deployment: each reads only its own replies partition.

Replies are keyed by client id, so every reply to a client lands in the one
partition its id hashes to. Clients sharing a partition tell their replies
apart by key; clients on other partitions never read them at all.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import uuid
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from app.streaming import KafkaExecutor, StreamingWorker
from app.streaming._messages import encode_history_records, partition_for, partitioner
from app.streaming.admin import ensure_topics
from app.streaming.settings import test_settings
from app.workflow import EventType, HistoryEvent, Hooks, Signal, WorkflowContext, WorkflowOptions

WAIT = 60.0
PARTITIONS = 4


async def double(x: int) -> int:
    return 2 * x


async def doubler(ctx: WorkflowContext, x: int) -> int:
    bonus = await ctx.receive_signal("bonus", int).receive()
    return int(await ctx.execute_activity(double, x)) + bonus


def client_ids() -> list[str]:
    """Four client ids: two sharing a replies partition, two on other partitions each."""
    ids = (f"client-{i}" for i in itertools.count())
    by_partition: dict[int, list[str]] = {}
    for cid in ids:
        by_partition.setdefault(partition_for(cid, PARTITIONS), []).append(cid)
        shared = [group for group in by_partition.values() if len(group) >= 2]
        if shared and len(by_partition) >= 3:
            others = [group[0] for group in by_partition.values() if group is not shared[0]]
            return shared[0][:2] + others[:2]
    raise AssertionError("unreachable")


def test_the_partitioner_picks_what_kafkas_default_picks() -> None:
    """Records keyed by a workflow id meet in one partition whoever sends them."""
    rng = random.Random(7)
    default = DefaultPartitioner()
    for _ in range(5_000):
        key = rng.randbytes(rng.randint(0, 48))
        partitions = list(range(rng.randint(1, 64)))
        assert partitioner(key, partitions, partitions) == default(key, partitions, partitions)
        assert partitioner(key, partitions, []) == default(key, partitions, [])  # cached now
    assert partitioner(None, [0, 1, 2], [2]) == 2  # no key: an available partition


async def test_each_client_reads_only_its_replies_partition(kafka_bootstrap: str) -> None:
    settings = test_settings(
        kafka_bootstrap, app_id=f"clients-{uuid.uuid4().hex[:8]}", partitions=PARTITIONS
    )
    await ensure_topics(settings)
    ids = client_ids()
    worker = StreamingWorker(settings, [doubler], [double])
    await worker.start()
    try:
        clients = [KafkaExecutor(settings=settings, client_id=cid) for cid in ids]
        for client in clients:
            await client.start()
        try:

            async def drive(n: int, client: KafkaExecutor) -> int:
                wid = f"wf-{n}"
                handle = await client.execute(doubler, WorkflowOptions(id=wid, input=n))
                await client.signal(wid, Signal(name="bonus", payload=100))
                return int(await handle.result(timeout=WAIT))

            # all at once: replies to the two clients sharing a partition interleave
            results = await asyncio.wait_for(
                asyncio.gather(*(drive(n, c) for n, c in enumerate(clients))), WAIT
            )
            assert results == [2 * n + 100 for n in range(len(clients))]
            for client in clients:
                assert client._tail is not None
                mine = partition_for(client.client_id, PARTITIONS)
                assigned = client._tail.assignment()
                assert {tp for tp in assigned if tp.topic == settings.topology.replies} == {
                    TopicPartition(settings.topology.replies, mine)
                }
                # the same consumer tails the whole history topic
                assert {tp for tp in assigned if tp.topic == settings.topology.history} == {
                    TopicPartition(settings.topology.history, p) for p in range(PARTITIONS)
                }
        finally:
            for client in clients:
                await client.aclose()
    finally:
        await worker.stop()


async def test_a_lost_publish_is_sent_again_and_a_late_owner_still_answers(
    kafka_bootstrap: str,
) -> None:
    """Calls wait through a time without any worker and survive a command that was lost.

    The start is published while no worker runs (no partition has an owner): it
    waits in the topic and is answered once one joins. The first publish of a
    signal is then dropped on the way (as if the broker had lost it): the
    client publishes it again, with the same id, and it is applied once.
    """
    settings = test_settings(
        kafka_bootstrap, app_id=f"resend-{uuid.uuid4().hex[:8]}", partitions=PARTITIONS
    )
    await ensure_topics(settings)
    worker = StreamingWorker(settings, [doubler], [double])
    async with KafkaExecutor(settings=settings) as ex:
        starting = asyncio.ensure_future(ex.execute(doubler, WorkflowOptions(id="late", input=4)))
        await _until_published(kafka_bootstrap, settings.topology.commands)
        assert not starting.done()
        await worker.start()
        try:
            handle = await asyncio.wait_for(starting, WAIT)
            assert ex._producer is not None
            real_send = ex._producer.send_and_wait
            dropped: list[bytes] = []

            async def lose_the_first(topic: str, value: bytes, **kwargs: object) -> object:
                if not dropped:
                    dropped.append(value)
                    return None  # "acknowledged", never stored
                return await real_send(topic, value, **kwargs)

            ex._producer.send_and_wait = lose_the_first  # type: ignore[method-assign]
            await asyncio.wait_for(ex.signal("late", Signal("bonus", 1)), WAIT)
            ex._producer.send_and_wait = real_send  # type: ignore[method-assign]
            assert dropped, "the first publish was not intercepted"
            assert await handle.result(timeout=WAIT) == 9
            state = await ex.describe("late")
            signals = [e for e in state.history if e.type.value == "signal_received"]
            assert len(signals) == 1, signals
        finally:
            await worker.stop()


async def _until_published(bootstrap: str, topic: str) -> None:
    """Return once ``topic`` holds a record."""
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await reader.start()
    try:
        reader.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
        await asyncio.wait_for(reader.getone(), WAIT)
    finally:
        await reader.stop()


async def test_a_client_starts_past_the_whole_last_batch_of_the_history(
    kafka_bootstrap: str,
) -> None:
    """The test broker reports a partition's end as its last batch's first offset + 1:
    events written in one batch before a client started must not fire its hooks."""
    settings = test_settings(kafka_bootstrap, app_id=f"clients-{uuid.uuid4().hex[:8]}")
    await ensure_topics(settings)
    topic = settings.topology.history

    def records(wid: str, first_id: int, count: int) -> list[tuple[bytes, list[Any]]]:
        events = [
            HistoryEvent(
                id=first_id + i,
                type=EventType.ACTIVITY_COMPLETED,
                timestamp=datetime.now(UTC),
                activity_name="double",
                result=i,
                step=first_id + i,
                attempt=1,
            )
            for i in range(count)
        ]
        return encode_history_records(wid, "run-1", "doubler", events, batch_bytes=0)

    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        batch = producer.create_batch()
        for value, headers in records("before", 1, 3):
            assert batch.append(key=b"before", value=value, timestamp=None, headers=headers)
        await (await producer.send_batch(batch, topic, partition=0))

        heard: list[tuple[str, Any]] = []
        later = asyncio.Event()

        def completed(workflow_id: str, result: Any) -> None:
            heard.append((workflow_id, result))
            if workflow_id == "after":
                later.set()

        async with KafkaExecutor(settings=settings, hooks=Hooks(on_activity_complete=completed)):
            (value, headers), *_ = records("after", 1, 1)
            await producer.send_and_wait(topic, value, key=b"after", partition=0, headers=headers)
            await asyncio.wait_for(later.wait(), WAIT)
    finally:
        await producer.stop()
    assert heard == [("after", 0)]  # hooks run in order: the batch's would have come first
