"""Eager dispatch: a worker that runs both roles runs the attempts it dispatches itself.

Checked from outside the worker: the task topic stays empty (or holds exactly
the overflow past ``eager_activities``), the results are right, and a partition
that moves to another worker while an attempt runs here still gets its result.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from app.streaming import KafkaExecutor, StreamingSettings, StreamingWorker
from app.streaming._activation import CHAIN_ROUNDS
from app.streaming._machine import Command, Task
from app.streaming.admin import ensure_topics
from app.streaming.settings import test_settings
from app.workflow import WorkflowContext, WorkflowOptions

WAIT = 60.0
STOP_BOUND = 30.0
RUNS: list[str] = []
release = asyncio.Event()
blocked: set[str] = set()
some_blocked = asyncio.Event()


async def double(x: int) -> int:
    RUNS.append(f"double {x}")
    return 2 * x


async def held(tag: str) -> str:
    RUNS.append(f"held {tag}")
    blocked.add(tag)
    some_blocked.set()
    await release.wait()
    return tag.upper()


async def fan_out(ctx: WorkflowContext, n: int) -> int:
    parts = await asyncio.gather(*(ctx.execute_activity(double, i) for i in range(n)))
    total = 0
    for step in range(3):  # then sequential steps, each dispatched by a result
        total += int(await ctx.execute_activity(double, step))
    return sum(int(p) for p in parts) + total


async def long_chain(ctx: WorkflowContext, n: int) -> int:
    total = 0
    for step in range(n):  # each step dispatched by the result of the one before
        total += int(await ctx.execute_activity(double, step))
    return total


async def one_held(ctx: WorkflowContext, tag: str) -> str:
    return str(await ctx.execute_activity(held, tag))


class Joining(StreamingWorker):
    """A worker that says when it has read a partition it gained and resumed its runs."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gained = asyncio.Event()

    async def gain(self, partitions: set[int]) -> None:
        await super().gain(partitions)
        self.gained.set()


def metric(worker: StreamingWorker, where: str) -> float:
    value = worker.metrics.registry.get_sample_value(
        "streamflow_activity_dispatches_total", {"where": where}
    )
    return value or 0.0


async def tasks_on_topic(settings: StreamingSettings) -> int:
    """How many records the task topic holds (read from its beginning to its end)."""
    topic = settings.topology.activity_tasks(settings.task_queue)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        assert tps, f"no topic {topic}"
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        count = 0
        # to the reported ends (a fresh consumer's first fetch may bring nothing yet),
        # then to a fetch that brings nothing (the test broker under-reports the ends)
        async with asyncio.timeout(WAIT):
            while True:
                batch = await consumer.getmany(timeout_ms=300)
                count += sum(len(records) for records in batch.values())
                if not batch and all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                    return count
    finally:
        await consumer.stop()


def settings_for(bootstrap: str, **overrides: Any) -> StreamingSettings:
    return test_settings(bootstrap, app_id=f"eager-{uuid.uuid4().hex[:8]}", **overrides)


async def run_fan_outs(settings: StreamingSettings, count: int, n: int) -> StreamingWorker:
    await ensure_topics(settings)
    worker = StreamingWorker(settings, [fan_out], [double])
    await worker.start()
    try:
        async with KafkaExecutor(settings=settings) as ex:
            handles = [
                await ex.execute(fan_out, WorkflowOptions(id=f"f{i}", input=n))
                for i in range(count)
            ]
            results = await asyncio.wait_for(
                asyncio.gather(*(h.result(timeout=WAIT) for h in handles)), WAIT
            )
    finally:
        await asyncio.wait_for(worker.stop(), STOP_BOUND)
    expected = 2 * sum(range(n)) + 2 * sum(range(3))
    assert results == [expected] * count
    return worker


async def test_a_worker_with_both_roles_runs_every_attempt_itself(kafka_bootstrap: str) -> None:
    RUNS.clear()
    settings = settings_for(kafka_bootstrap)
    worker = await run_fan_outs(settings, count=4, n=10)
    attempts = 4 * (10 + 3)
    assert len(RUNS) == attempts  # each attempt ran once
    assert metric(worker, "eager") == attempts and metric(worker, "topic") == 0
    assert await tasks_on_topic(settings) == 0


async def test_a_chain_longer_than_one_activation_stays_on_the_worker(
    kafka_bootstrap: str,
) -> None:
    """An activation applies a few rounds of quick steps; the attempt its last
    round dispatches runs here too (it used to go through the task topic)."""
    RUNS.clear()
    settings = settings_for(kafka_bootstrap, partitions=1)
    await ensure_topics(settings)
    worker = StreamingWorker(settings, [long_chain], [double])
    await worker.start()
    steps = 5 * CHAIN_ROUNDS + 3
    try:
        async with KafkaExecutor(settings=settings) as ex:
            handle = await ex.execute(long_chain, WorkflowOptions(id="chain", input=steps))
            assert await handle.result(timeout=WAIT) == 2 * sum(range(steps))
    finally:
        await asyncio.wait_for(worker.stop(), STOP_BOUND)
    assert len(RUNS) == steps
    assert metric(worker, "eager") == steps and metric(worker, "topic") == 0
    assert await tasks_on_topic(settings) == 0


async def test_past_the_limit_and_when_off_attempts_go_through_the_task_topic(
    kafka_bootstrap: str,
) -> None:
    RUNS.clear()
    limited = settings_for(kafka_bootstrap, eager_activities=4, partitions=1)
    worker = await run_fan_outs(limited, count=1, n=10)
    # the fan-out's first 4 run here, 6 go to the topic; the sequential steps find room
    assert metric(worker, "eager") == 4 + 3 and metric(worker, "topic") == 6
    assert await tasks_on_topic(limited) == 6
    assert len(RUNS) == 13

    off = settings_for(kafka_bootstrap, eager_activities=0)
    worker = await run_fan_outs(off, count=2, n=5)
    assert metric(worker, "eager") == 0 and metric(worker, "topic") == 2 * (5 + 3)
    assert await tasks_on_topic(off) == 2 * (5 + 3)


async def test_a_partition_that_moves_while_its_attempt_runs_here_gets_the_result(
    kafka_bootstrap: str,
) -> None:
    """The attempt's result goes to the new owner through the commands topic."""
    RUNS.clear()
    blocked.clear()
    release.clear()
    some_blocked.clear()
    settings = settings_for(kafka_bootstrap, partitions=2)
    await ensure_topics(settings)
    first = StreamingWorker(settings, [one_held], [held])
    second = Joining(settings, [one_held], [held])
    tags = [f"h{i}" for i in range(6)]
    await first.start()
    try:
        async with KafkaExecutor(settings=settings) as ex:
            for tag in tags:
                await ex.execute(one_held, WorkflowOptions(id=tag, input=tag))

            async def all_blocked() -> None:
                while blocked != set(tags):
                    some_blocked.clear()
                    await some_blocked.wait()

            await asyncio.wait_for(all_blocked(), WAIT)
            assert metric(first, "eager") == len(tags)
            await second.start()  # the group rebalances: one partition moves to it

            await asyncio.wait_for(second.gained.wait(), WAIT)
            assert len(first.consumer.owned) == 1
            release.set()
            results = await asyncio.wait_for(
                asyncio.gather(*(ex.get_handle(t).result(timeout=WAIT) for t in tags)), WAIT
            )
            assert results == [t.upper() for t in tags]
    finally:
        release.set()
        await asyncio.wait_for(second.stop(), STOP_BOUND)
        await asyncio.wait_for(first.stop(), STOP_BOUND)
    # the new owner applied the results of the moved workflows (it resumed them on the
    # topic, unless their results, published by the first worker, came first)
    applied = second.metrics.registry.get_sample_value(
        "streamflow_commands_total", {"kind": "activity_result", "outcome": "ok"}
    )
    assert applied is not None and applied >= 1
    assert metric(second, "eager") == 0
    for tag in tags:
        assert 1 <= RUNS.count(f"held {tag}") <= 2, RUNS


@pytest.mark.parametrize("when", ["at once", "after a turn of the loop"])
async def test_an_attempt_that_fails_to_run_here_goes_through_the_task_topic(
    kafka_bootstrap: str, when: str
) -> None:
    """A bug in running an attempt here (not the activity's own failure) releases it:
    the executor re-drives it through the task topic when it is due, even when it
    failed before the activation that started it had recorded it."""
    RUNS.clear()
    settings = settings_for(kafka_bootstrap, partitions=1, redrive_after=0.5, redrive_max=1.0)
    await ensure_topics(settings)
    worker = StreamingWorker(settings, [long_chain], [double])
    runner = worker.activity_worker
    assert runner is not None
    real_run = runner.run
    failed: list[str] = []

    async def run_failing_once(task: Task) -> Command:
        if task.task_id not in failed:
            failed.append(task.task_id)
            if when != "at once":
                await asyncio.sleep(0)
            raise RuntimeError("a bug in running the attempt")
        return await real_run(task)

    runner.run = run_failing_once  # type: ignore[method-assign]
    await worker.start()
    try:
        async with KafkaExecutor(settings=settings) as ex:
            handle = await ex.execute(long_chain, WorkflowOptions(id="fails-here", input=2))
            assert await handle.result(timeout=WAIT) == 2 * sum(range(2))
    finally:
        await asyncio.wait_for(worker.stop(), STOP_BOUND)
    assert len(failed) == 2 and RUNS == ["double 0", "double 1"]
    assert await tasks_on_topic(settings) == 2  # each re-driven once, on the topic
