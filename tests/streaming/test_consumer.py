"""The consumer layer under the engine: every record is handled, whatever the group does.

Two at-least-once holes of the consumer used before (faust-streaming 0.15.3)
stranded workflows; each has a test here on the real broker:

- acks out of order: with record C still in flight and C+1 finished, the
  commit must stay at C, so that a member killed then leaves C to the next one
  (the old rule committed C+2);
- a rebalance while fetched records wait: records fetched but not handled when
  the partitions are revoked must be read again by the next owner, also on a
  partition that was never committed (the old code seeked back only to a
  committed offset, so the head of such a partition was skipped).

A send that fails makes the member go back to its last commit and read its
state again. :class:`OffsetTracker` itself is checked without a broker.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from app.streaming._consumer import DeliveryError, GroupConsumer, OffsetTracker, Producer
from app.streaming.settings import StreamingSettings, test_settings

WAIT = 30.0


# -- the tracker ---------------------------------------------------------------------
def test_tracker_commits_only_the_finished_prefix() -> None:
    t = OffsetTracker()
    assert t.commit_point is None
    for offset in (10, 11, 12, 13):
        t.take(offset)
    assert t.commit_point == 10
    t.finish(11)
    t.finish(13)
    assert t.commit_point == 10, "finished out of order: 10 is still in flight"
    t.finish(10)
    assert t.commit_point == 12
    t.finish(12)
    assert t.commit_point == 14
    assert t.in_flight == 0


def test_tracker_skips_offsets_that_hold_no_record() -> None:
    t = OffsetTracker()
    for offset in (3, 7, 8):  # 4-6 compacted away, or transaction markers
        t.take(offset)
    t.finish(3)
    assert t.commit_point == 7
    t.finish(8)
    assert t.commit_point == 7
    t.finish(7)
    assert t.commit_point == 9


# -- on the broker -------------------------------------------------------------------
class Owner:
    """Records the records it handles; those in ``hold`` wait for their release."""

    def __init__(self, hold: set[int] | None = None, changed: asyncio.Event | None = None) -> None:
        self.hold = hold or set()
        self.release = asyncio.Event()
        self.handled: list[int] = []
        self.finished: list[int] = []
        self.by_partition: dict[int, list[int]] = {}
        self.changed = changed or asyncio.Event()
        self.gained: list[set[int]] = []

    async def gain(self, partitions: set[int]) -> None:
        self.gained.append(set(partitions))
        self.changed.set()

    def lose(self, partitions: set[int]) -> None:
        pass

    async def handle(self, record: Any) -> None:
        self.handled.append(record.offset)
        self.changed.set()
        if record.offset in self.hold:
            await self.release.wait()
        self.finished.append(record.offset)
        self.by_partition.setdefault(record.partition, []).append(record.offset)
        self.changed.set()

    async def until(self, check: Any, what: str) -> None:
        async def wait() -> None:
            while not check():
                self.changed.clear()
                await self.changed.wait()

        try:
            await asyncio.wait_for(wait(), WAIT)
        except TimeoutError:
            raise AssertionError(
                f"{what}: handled {self.handled}, finished {self.finished}"
            ) from None


async def _create(bootstrap: str, partitions: int) -> str:
    name = f"consumer-test-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
    finally:
        await admin.close()
    return name


@pytest.fixture
async def topic(kafka_bootstrap: str) -> AsyncIterator[str]:
    yield await _create(kafka_bootstrap, 1)


async def _produce(bootstrap: str, topic: str, count: int, partition: int = 0) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(count):
            await producer.send_and_wait(topic, f"r{i}".encode(), key=b"k", partition=partition)
    finally:
        await producer.stop()


async def _committed(bootstrap: str, group: str, topic: str) -> int | None:
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await reader.start()
    try:
        value: int | None = await reader.committed(TopicPartition(topic, 0))
        return value
    finally:
        await reader.stop()


async def _member(
    settings: StreamingSettings, group: str, topic: str, owner: Owner, concurrency: int
) -> tuple[GroupConsumer, Producer]:
    producer = Producer(settings, f"{group}-producer")
    await producer.start()
    member = GroupConsumer(settings, group, topic, owner, producer, concurrency=concurrency)
    await member.start()
    return member, producer


def _settings(bootstrap: str) -> StreamingSettings:
    # commits only when a test asks for one: the tests decide when they happen
    return test_settings(bootstrap, commit_interval=3600.0)


async def test_a_record_in_flight_is_not_committed_over_and_the_next_member_gets_it(
    kafka_bootstrap: str, topic: str
) -> None:
    settings = _settings(kafka_bootstrap)
    group = f"{topic}-group"
    await _produce(kafka_bootstrap, topic, 3)
    first = Owner(hold={0})
    member, producer = await _member(settings, group, topic, first, concurrency=4)
    try:
        # 0 is in flight, 1 and 2 finished: acks out of order
        await first.until(lambda: {1, 2} <= set(first.finished), "records 1 and 2 not finished")
        assert 0 not in first.finished
        await member._commit()
        committed = await _committed(kafka_bootstrap, group, topic)
        assert committed in (None, 0), f"committed {committed} while record 0 is in flight"
    finally:
        # the member dies with record 0 unfinished (its task is cancelled, never finished)
        await member.stop(drain_timeout=0.0)
        await producer.stop()
    second = Owner()
    member, producer = await _member(settings, group, topic, second, concurrency=4)
    try:
        await second.until(lambda: 0 in second.finished, "record 0 never reached the next member")
        assert second.handled[0] == 0
    finally:
        await member.stop()
        await producer.stop()


async def test_records_fetched_when_a_rebalance_starts_are_read_again_from_the_beginning(
    kafka_bootstrap: str, topic: str
) -> None:
    settings = _settings(kafka_bootstrap)
    group = f"{topic}-group"
    changed = asyncio.Event()  # either owner handled something
    owner = Owner(changed=changed)
    member, producer = await _member(settings, group, topic, owner, concurrency=1)
    other: GroupConsumer | None = None
    other_producer: Producer | None = None
    revoking = asyncio.Event()
    revoke = member.on_partitions_revoked

    async def noted_revoke(revoked: Any) -> None:
        revoking.set()
        await revoke(revoked)

    member.on_partitions_revoked = noted_revoke  # type: ignore[method-assign]
    try:
        await member.wait_joined(WAIT)
        await owner.until(lambda: owner.gained, "the partition was never assigned")
        # Hold the member's gate: its next fetch waits with its records in hand.
        await member._gate.acquire()
        await _produce(kafka_bootstrap, topic, 5)
        # A second member joins: the group rebalances while the records wait.
        other_owner = Owner(changed=changed)
        other, other_producer = await _member(settings, group, topic, other_owner, 1)
        await asyncio.wait_for(revoking.wait(), WAIT)
        member._gate.release()
        # Nothing was committed, and the records fetched before the rebalance were
        # dropped: whoever owns the partition now must read it from its beginning.
        both = (owner, other_owner)
        await owner.until(
            lambda: sorted(set(owner.finished) | set(other_owner.finished)) == [0, 1, 2, 3, 4],
            f"records lost: {[o.finished for o in both]}",
        )
        handled_by = [o for o in both if o.finished]
        assert len(handled_by) == 1
        assert handled_by[0].finished == [0, 1, 2, 3, 4]
    finally:
        if member._gate.locked():
            member._gate.release()
        await member.stop()
        await producer.stop()
        if other is not None:
            await other.stop()
        if other_producer is not None:
            await other_producer.stop()


async def test_records_a_fetch_returns_after_a_rebalance_it_waited_through_are_handled(
    kafka_bootstrap: str,
) -> None:
    """A fetch that began before a rebalance and returns after it brings current records."""
    topic = await _create(kafka_bootstrap, 2)
    settings = _settings(kafka_bootstrap)
    group = f"{topic}-group"
    owner = Owner()
    member, producer = await _member(settings, group, topic, owner, concurrency=1)
    other_owner = Owner()
    other: GroupConsumer | None = None
    other_producer: Producer | None = None
    try:
        await owner.until(lambda: owner.gained == [{0, 1}], "the partitions were never assigned")
        assert member._consumer is not None
        real_getmany = member._consumer.getmany
        entered, proceed = asyncio.Event(), asyncio.Event()

        async def held_getmany(*args: Any, **kwargs: Any) -> Any:
            if not proceed.is_set():
                entered.set()
                await proceed.wait()
            return await real_getmany(*args, **kwargs)

        member._consumer.getmany = held_getmany
        await asyncio.wait_for(entered.wait(), WAIT)  # the loop waits in a fetch
        generation = member._generation
        other, other_producer = await _member(settings, group, topic, other_owner, 1)
        await other.wait_joined(WAIT)
        assert member._generation != generation
        kept = set(member.owned)
        assert len(kept) == 1, f"the member kept {kept}"
        for p in (0, 1):
            await _produce(kafka_bootstrap, topic, 3, partition=p)
        proceed.set()

        (mine,) = kept
        await owner.until(
            lambda: owner.by_partition.get(mine) == [0, 1, 2],
            f"the records of partition {mine}, kept through the rebalance, were lost",
        )
        await other_owner.until(
            lambda: other_owner.by_partition.get(1 - mine) == [0, 1, 2],
            f"the records of partition {1 - mine}, moved to the other member, were lost",
        )
    finally:
        await member.stop()
        await producer.stop()
        if other is not None:
            await other.stop()
        if other_producer is not None:
            await other_producer.stop()


class FailingOnce(Owner):
    """Raises a delivery failure the first time it handles ``fail_at``."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.fail_at = fail_at
        self.failed = False
        self.lost: list[set[int]] = []

    def lose(self, partitions: set[int]) -> None:
        self.lost.append(set(partitions))

    async def handle(self, record: Any) -> None:
        if record.offset == self.fail_at and not self.failed:
            self.failed = True
            self.handled.append(record.offset)
            raise DeliveryError("a send was not acknowledged")
        await super().handle(record)


async def test_a_failed_send_rewinds_to_the_last_commit_and_reads_the_state_again(
    kafka_bootstrap: str, topic: str
) -> None:
    """After a send failed, the state in memory is not trusted: it is read again."""
    settings = _settings(kafka_bootstrap)
    group = f"{topic}-group"
    await _produce(kafka_bootstrap, topic, 3)
    owner = FailingOnce(fail_at=1)
    member, producer = await _member(settings, group, topic, owner, concurrency=1)
    try:
        await owner.until(lambda: owner.finished[-3:] == [0, 1, 2], "not handled again")
        assert owner.handled == [0, 1, 0, 1, 2], "not rewound to the beginning (no commit)"
        assert owner.lost == [{0}], "the partition's state was not dropped"
        assert owner.gained == [{0}, {0}], "the partition's state was not read again"
    finally:
        await member.stop()
        await producer.stop()
