"""Growing the partition count on a live system: a new generation of topics.

The test broker cannot add partitions in place, so growth creates generation
2 with more partitions. Running workflows of generation 1 are handed over by
their partition owners; commands that still reach generation 1 (an old
client, an activity result in flight) are forwarded; clients follow the
generation announced on the control topic.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest

from app.streaming import KafkaExecutor, StreamingWorker
from app.streaming.admin import ensure_topics, grow, read_generation
from app.streaming.settings import test_settings
from app.workflow import (
    CompressionCodec,
    EncryptionCodec,
    EventType,
    Signal,
    WorkflowContext,
    WorkflowOptions,
    WorkflowStatus,
)
from tests.streaming import crash_app

WAIT = 60.0


def _codec(kind: str) -> list[Any] | None:
    if kind == "plain":
        return None
    return [CompressionCodec(64), EncryptionCodec(base64.b64encode(bytes(32)).decode(), "k1")]


# encrypted: the hand-over carries encoded headers and history, decoded by the new owner
@pytest.mark.parametrize("kind", ["plain", "encrypted"])
async def test_grow_into_a_new_generation_keeps_running_workflows(
    kafka_bootstrap: str, kind: str
) -> None:
    codec = _codec(kind)
    app_id = f"grow-{uuid.uuid4().hex[:10]}"
    gen1 = test_settings(kafka_bootstrap, app_id=app_id, partitions=2)
    await ensure_topics(gen1)
    old_worker = StreamingWorker(gen1, crash_app.workflows, crash_app.activities, codec=codec)
    await old_worker.start()
    new_worker: StreamingWorker | None = None
    try:
        async with KafkaExecutor(
            settings=gen1, workflows=crash_app.workflows, codec=codec
        ) as old_client:
            ids = [f"wf-{i}" for i in range(8)]
            handles = [
                await old_client.execute(crash_app.signalled, WorkflowOptions(id=wid, input=i))
                for i, wid in enumerate(ids)
            ]
            for wid in ids:  # each waits for its first signal, its first activity done
                await old_client.signal(wid, Signal(name="go", payload=1))

            gen2 = await grow(gen1, 4)
            assert gen2.generation == 2 and gen2.topology.partitions == 4
            assert await read_generation(gen1) == (2, 4)
            new_worker = StreamingWorker(
                gen2, crash_app.workflows, crash_app.activities, codec=codec
            )
            await new_worker.start()

            async with KafkaExecutor(
                settings=gen1, workflows=crash_app.workflows, codec=codec
            ) as client:
                assert client.settings.generation == 2  # followed the control topic
                # half get their last signal through the new generation's client ...
                for wid in ids[:4]:
                    await client.signal(wid, Signal(name="go", payload=2))
                # ... half through the old client, forwarded by the old generation
                for wid in ids[4:]:
                    await old_client.signal(wid, Signal(name="go", payload=2))
                results = await asyncio.wait_for(
                    asyncio.gather(*(h.result(timeout=WAIT) for h in handles)), WAIT
                )
                # a new workflow started through the old client lands in generation 2
                late = await old_client.execute(
                    crash_app.chain, WorkflowOptions(id="late", input=2)
                )
                assert await late.result(timeout=WAIT) == 2
                states = [await client.describe(wid) for wid in ids]
                late_state = await client.describe("late")
            assert results == [[i + 3, 1, 2] for i in range(8)]
            for state in states:
                assert state.status is WorkflowStatus.COMPLETED
                history = state.history
                assert [e.id for e in history] == list(range(1, len(history) + 1))
                kinds = Counter(e.type for e in history)
                assert kinds[EventType.SIGNAL_RECEIVED] == 2
                assert kinds[EventType.ACTIVITY_COMPLETED] == 3
            assert late_state.status is WorkflowStatus.COMPLETED
        # the handed-over runs live in generation 2; generation 1 only forwards them
        replays = new_worker.metrics.registry.get_sample_value("streamflow_replays_total")
        assert replays is not None and replays >= 8
    finally:
        if new_worker is not None:
            await new_worker.stop()
        await old_worker.stop()


HELD_RUNS: list[str] = []
held_started = asyncio.Event()
release_held = asyncio.Event()


async def held(tag: str) -> str:
    HELD_RUNS.append(tag)
    held_started.set()
    await release_held.wait()
    return tag.upper()


async def held_across_growth(ctx: WorkflowContext, tag: str) -> list[str]:
    done, go = await asyncio.gather(
        ctx.execute_activity(held, tag), ctx.receive_signal("go", str).receive()
    )
    return [str(done), go]


async def test_an_attempt_running_during_the_handover_runs_once(kafka_bootstrap: str) -> None:
    """The new generation leaves attempts started before the handover to the old one.

    Its own activity workers do not know them (their done-tasks table is the
    new generation's): dispatched again, a running or finished attempt would
    run a second time. Neither the import nor a later takeover dispatches them.
    """
    HELD_RUNS.clear()
    held_started.clear()
    release_held.clear()
    app_id = f"grow-held-{uuid.uuid4().hex[:8]}"
    gen1 = test_settings(kafka_bootstrap, app_id=app_id, partitions=2)
    await ensure_topics(gen1)
    workflows, activities = [held_across_growth], [held]
    old_worker = StreamingWorker(gen1, workflows, activities)
    await old_worker.start()
    new_worker: StreamingWorker | None = None
    try:
        async with KafkaExecutor(settings=gen1) as old_client:
            await old_client.execute(held_across_growth, WorkflowOptions(id="h", input="h"))
            await asyncio.wait_for(held_started.wait(), WAIT)
            gen2 = await grow(gen1, 4)
            new_worker = StreamingWorker(gen2, workflows, activities)
            await new_worker.start()
            async with KafkaExecutor(settings=gen1, workflows=workflows) as client:
                assert client.settings.generation == 2
                # Applied by generation 2, after the handover (signal() returns once
                # the owner applied it): generation 2 has decided what to dispatch.
                await client.signal("h", Signal(name="go", payload="go"))
                # Another generation-2 worker takes the partition over: resuming the
                # run, it must not dispatch the inherited attempt either.
                await new_worker.stop()
                new_worker = StreamingWorker(gen2, workflows, activities)
                await new_worker.start()
                assert await client.query("h", "status") == WorkflowStatus.RUNNING
                release_held.set()
                result = await client.get_handle("h").result(timeout=WAIT)
                state = await client.describe("h")
        assert result == ["H", "go"]
        assert HELD_RUNS == ["h"]
        kinds = Counter(e.type for e in state.history)
        assert kinds[EventType.ACTIVITY_STARTED] == kinds[EventType.ACTIVITY_COMPLETED] == 1
    finally:
        release_held.set()
        if new_worker is not None:
            await new_worker.stop()
        await old_worker.stop()


async def test_in_place_growth_routes_to_the_partition_that_owns_the_run(
    kafka_bootstrap: str,
) -> None:
    """Apache Kafka can add partitions in place; workflow ids then hash elsewhere.

    The test broker cannot, so the growth is simulated: the commands topic has 4
    partitions, and workflows are started where 2 partitions would have put them
    (as before the growth). The worker knows ``previous_partitions=2``: commands
    for those runs, now hashed to another partition, are routed to their owner.
    """
    from aiokafka import AIOKafkaProducer

    from app.streaming._machine import Command, CommandKind
    from app.streaming._messages import encode_command, partition_for

    app_id = f"inplace-{uuid.uuid4().hex[:10]}"
    settings = test_settings(kafka_bootstrap, app_id=app_id, partitions=4)
    await ensure_topics(settings)
    worker = StreamingWorker(
        settings.model_copy(update={"previous_partitions": 2}),
        crash_app.workflows,
        crash_app.activities,
    )
    await worker.start()
    moved = [
        w for w in (f"old-{i}" for i in range(40)) if partition_for(w, 4) != partition_for(w, 2)
    ]
    ids = moved[:6]
    assert len(ids) == 6
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        async with KafkaExecutor(settings=settings, workflows=crash_app.workflows) as client:
            for i, wid in enumerate(ids):  # started before the growth: hashed over 2
                start = Command(
                    command_id=uuid.uuid4().hex,
                    kind=CommandKind.START,
                    workflow_id=wid,
                    issued_at=datetime.now(UTC),
                    name="signalled",
                    payload=i,
                )
                await producer.send_and_wait(
                    settings.topology.commands,
                    encode_command(start),
                    key=wid.encode(),
                    partition=partition_for(wid, 2),
                )
            for wid in ids:  # after the growth: the client hashes over 4
                await client.signal(wid, Signal(name="go", payload=1))
                await client.signal(wid, Signal(name="go", payload=2))
            results = await asyncio.wait_for(
                asyncio.gather(*(client.get_handle(w).result(timeout=WAIT) for w in ids)), WAIT
            )
            assert results == [[i + 3, 1, 2] for i in range(6)]
            # a new workflow starts on the partition its id hashes to now
            fresh = await client.execute(crash_app.chain, WorkflowOptions(id=moved[6], input=1))
            assert await fresh.result(timeout=WAIT) == 1
        forwarded = worker.metrics.registry.get_sample_value(
            "streamflow_commands_total", {"kind": "signal", "outcome": "forwarded"}
        )
        assert forwarded is not None and forwarded >= 12
    finally:
        await producer.stop()
        await worker.stop()


async def test_streaming_provider_in_the_registry(kafka_bootstrap: str) -> None:
    from app.workflow import Config, InvalidArgumentError, list_providers, new

    assert "streaming" in list_providers()
    settings = test_settings(kafka_bootstrap, app_id=f"reg-{uuid.uuid4().hex[:8]}")
    await ensure_topics(settings)
    worker = StreamingWorker(settings, crash_app.workflows, crash_app.activities)
    await worker.start()
    try:
        executor = new("streaming", Config(extra={"settings": settings}))
        assert isinstance(executor, KafkaExecutor)
        async with executor:
            handle = await executor.execute(crash_app.chain, WorkflowOptions(id="r", input=2))
            assert await handle.result(timeout=WAIT) == 2
    finally:
        await worker.stop()
    with pytest.raises(InvalidArgumentError, match="bogus"):
        new("streaming", Config(extra={"bogus": 1}))
