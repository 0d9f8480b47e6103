"""A consumer group member that processes every record at least once.

Each worker role (the executor, the activity runner) is one
:class:`GroupConsumer`: an aiokafka consumer in the role's group, a producer
for what its records produce, and a :class:`PartitionOwner` that handles the
records and keeps the state of the partitions it is given.

What makes a record's effects durable before its offset is committed:

- :class:`OffsetTracker` commits only the prefix of taken records that are
  all finished, so a record still being handled (an activity still running
  while later ones finished) is never skipped by a commit;
- a commit first waits for every record the producer was given and checks
  each acknowledgement (:meth:`Producer.flush`): a failed send is never
  committed over; the partitions are rewound and their state read again;
- a partition without a committed offset starts at its beginning (aiokafka's
  ``auto_offset_reset="earliest"`` through its own position logic; nothing
  fetched is discarded behind its back);
- a partition gained is paused until its owner has read its state back
  (:meth:`PartitionOwner.gain`), so no record is handled on a partial state.

faust-streaming's consumer, used before, had two holes here: it committed
past a record still in flight when acks came out of order, and it dropped
records fetched while a rebalance paused the flow on a partition that had
never been committed. See docs/architecture.md, "Delivery and idempotence".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor
from aiokafka.errors import KafkaError

from app.workflow._tasks import cancel_and_wait

from ._messages import partitioner
from ._security import start_client
from .settings import StreamingSettings

log = logging.getLogger("app.streaming.consumer")
_REWIND_CALM = 30.0  # s without a rewind after which the backoff starts over
_REWIND_MAX_DELAY = 5.0

MAX_RECORD = 16 * 1024 * 1024
"""Largest record the producer sends (run headers repeat their latest events)."""


class DeliveryError(RuntimeError):
    """A record given to the producer was not acknowledged by the brokers."""


class OffsetTracker:
    """Which offset of one partition may be committed, with records finished out of order.

    Records are *taken* in offset order and *finished* in any order; the
    commit point is the offset of the first taken record not yet finished
    (everything before it is done), or one past the last taken record when
    all are. Offsets need not be contiguous (compaction, transaction markers).
    """

    def __init__(self) -> None:
        self._taken: deque[int] = deque()
        self._finished: set[int] = set()
        self._next: int | None = None

    def take(self, offset: int) -> None:
        self._taken.append(offset)

    def finish(self, offset: int) -> None:
        self._finished.add(offset)
        taken, finished = self._taken, self._finished
        while taken and taken[0] in finished:
            done = taken.popleft()
            finished.discard(done)
            self._next = done + 1

    @property
    def commit_point(self) -> int | None:
        """The offset to commit (the next one to read), or None when nothing was taken."""
        if self._taken:
            return self._taken[0]
        return self._next

    @property
    def in_flight(self) -> int:
        return len(self._taken) - len(self._finished)


class Producer:
    """An ``acks=all`` producer that checks every acknowledgement at each flush."""

    def __init__(self, settings: StreamingSettings, client_id: str) -> None:
        self._settings = settings
        self._client_id = client_id
        self._producer: AIOKafkaProducer | None = None
        self._outstanding: list[asyncio.Future[Any]] = []

    async def start(self) -> None:
        s = self._settings
        self._producer = AIOKafkaProducer(
            **s.kafka_options(),
            client_id=self._client_id,
            acks="all",
            linger_ms=0,
            partitioner=partitioner,
            max_request_size=MAX_RECORD,
            request_timeout_ms=int(self._settings.request_timeout * 1000),
        )
        await start_client(self._producer.start, s, s.bootstrap_servers, s.request_timeout)

    async def stop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Any]:
        """Buffer one record; the returned future completes with its acknowledgement."""
        if self._producer is None:
            raise DeliveryError(f"the producer of {self._client_id} is not running")
        fut: asyncio.Future[Any] = await self._producer.send(
            topic, value, key=key, partition=partition, headers=headers
        )
        self._outstanding.append(fut)
        return fut

    async def flush(self) -> None:
        """Wait for every record sent so far; :class:`DeliveryError` if one failed."""
        pending, self._outstanding = self._outstanding, []
        if not pending:
            return
        outcomes = await asyncio.gather(*pending, return_exceptions=True)
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        if failed:
            raise DeliveryError(
                f"{len(failed)} of {len(pending)} records were not acknowledged by "
                f"{self._settings.bootstrap_servers}: {failed[0]!r}"
            )


Record = Any
"""An aiokafka ``ConsumerRecord`` (aiokafka ships no types)."""


class PartitionOwner(Protocol):
    """What a :class:`GroupConsumer` drives: the state and handling of its partitions."""

    async def gain(self, partitions: set[int]) -> None:
        """Read the state of ``partitions`` back; records of them follow once it returns."""

    def lose(self, partitions: set[int]) -> None:
        """Forget ``partitions``: another member may own them now."""

    async def handle(self, record: Record) -> None:
        """Handle one record. Raising rewinds every partition to its last commit.

        An owner handling one record at a time may also have
        ``handle_many(records)``: a partition's records fetched together, in order.
        """


class GroupConsumer(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """One member of ``group`` on ``topic``, handing records to ``owner``.

    Args:
        settings: broker and timings.
        group: the consumer group.
        topic: the topic consumed.
        owner: handles records and keeps the partitions' state.
        producer: what the owner sends with; flushed before every commit.
        concurrency: records handled at once (1: in order, one at a time).
    """

    def __init__(
        self,
        settings: StreamingSettings,
        group: str,
        topic: str,
        owner: PartitionOwner,
        producer: Producer,
        *,
        concurrency: int = 1,
    ) -> None:
        self.settings = settings
        self.group = group
        self.topic = topic
        self.owner = owner
        self.producer = producer
        self.concurrency = concurrency
        self.owned: set[int] = set()
        """Partitions whose state is read and whose records are being handled."""
        self.on_record: Callable[[Record], None] | None = None
        """Called with each record taken (metrics)."""
        self._assigned: set[int] = set()
        self._before: set[int] = set()
        self._recovering: set[int] = set()
        self._read: set[int] = set()  # read during a rebalance: owned if it stays here
        self._generation: int | None = None
        self._epoch = 0  # bumped at each revoke and rewind: a fetch from before is dropped
        self._trackers: dict[int, OffsetTracker] = {}
        self._committed: dict[int, int] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._recovery: asyncio.Task[None] | None = None
        self._gate = asyncio.Lock()  # held while records are handled; a revoke waits for it
        self._revoking = False
        self._rebalancing = False  # from a revoke until the next assignment
        self._stopping = False
        self._joined = asyncio.Event()
        self._inflight: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()
        self._suspect = False  # a send failed: the state in memory may be ahead of the logs
        self._last_commit = time.monotonic()
        # The sticky assignor keeps a partition with its owner across rebalances, so
        # a join or a leave moves only what it must: a partition kept is not read
        # again. Its state lives on the class, so each member gets a class of its own.
        self._assignor: Any = type(
            "StickyAssignor",
            (StickyPartitionAssignor,),
            {"member_assignment": None, "generation": -1},
        )

    # -- lifecycle -----------------------------------------------------------------
    async def start(self) -> None:
        """Join the group; records flow once partitions are assigned and read."""
        s = self.settings
        self._consumer = AIOKafkaConsumer(
            **s.kafka_options(),
            group_id=self.group,
            group_instance_id=s.instance_id,
            client_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=int(s.session_timeout * 1000),
            heartbeat_interval_ms=int(s.heartbeat_interval * 1000),
            rebalance_timeout_ms=int(s.rebalance_timeout * 1000),
            fetch_max_wait_ms=s.fetch_wait_ms,
            max_partition_fetch_bytes=MAX_RECORD,
            request_timeout_ms=int(max(40.0, s.session_timeout * 2) * 1000),
            # one protocol: the test broker takes over a second longer to settle a
            # group whose members offer two
            partition_assignment_strategy=(self._assignor,),
        )
        try:
            await start_client(self._consumer.start, s, s.bootstrap_servers, s.request_timeout)
        except BaseException:
            with contextlib.suppress(Exception):
                await self._consumer.stop()
            self._consumer = None
            raise
        self._consumer.subscribe([self.topic], listener=self)
        self._loop_task = asyncio.create_task(self._run(), name=f"{self.group}.loop")

    @property
    def ready(self) -> bool:
        """Joined the group, and every partition assigned is read back."""
        return (
            self._joined.is_set()
            and not self._recovering
            and not self._rebalancing
            and not self._stopping
        )

    def status(self) -> str:
        """One line on where this member is (for /readyz)."""
        if self._stopping:
            return f"{self.group}: stopping"
        if not self._joined.is_set():
            return f"{self.group}: joining the group"
        if self._rebalancing:
            return f"{self.group}: rebalancing"
        if self._recovering:
            return f"{self.group}: reading partitions {sorted(self._recovering)}"
        return f"{self.group}: partitions {sorted(self.owned)}"

    @property
    def gate(self) -> asyncio.Lock:
        """Held while records are handled and across a commit, a rewind or a revoke.

        The owner holds it to apply what did not come from a record (an
        attempt it ran itself) in the same order as the records.
        """
        return self._gate

    def effects_lost(self) -> None:
        """Something the owner sent failed: the next commit rewinds instead."""
        self._suspect = True

    async def wait_joined(self, timeout: float) -> None:
        """Return once the first assignment arrived."""
        await asyncio.wait_for(self._joined.wait(), timeout)

    def highwater(self, partition: int) -> int | None:
        """The partition's end offset as of the last fetch."""
        if self._consumer is None:
            return None
        value: int | None = self._consumer.highwater(TopicPartition(self.topic, partition))
        return value

    async def stop(self, drain_timeout: float = 0.0) -> None:
        """Stop taking records, let those in flight finish (up to ``drain_timeout``), commit."""
        self._stopping = True
        async with self._gate:  # no record is being handled once it is ours
            for task in (self._loop_task, self._recovery):
                if task is not None:
                    task.cancel()
        await cancel_and_wait((self._loop_task, self._recovery))
        if self._inflight:
            _, late = await asyncio.wait(set(self._inflight), timeout=drain_timeout)
            await cancel_and_wait(late)
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._commit(), self.settings.request_timeout)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._consumer.stop(), self.settings.request_timeout)
        self.owned = set()

    # -- the loop ------------------------------------------------------------------
    async def _run(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        delay, last = 0.0, -_REWIND_CALM
        while True:
            try:
                await self._poll(consumer)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error("%s: going back to the last commit after %r", self.group, exc)
                await self._rewind()
                # Rewinds in a row (a record this worker cannot handle, e.g. one it has
                # no key for) back off, so a stalled worker does not spin on its tables.
                now = time.monotonic()
                delay = (
                    min(_REWIND_MAX_DELAY, max(0.2, delay * 2))
                    if now - last < _REWIND_CALM
                    else 0.0
                )
                last = now
                if delay:
                    await asyncio.sleep(delay)

    async def _poll(self, consumer: AIOKafkaConsumer) -> None:
        free = 500 if self.concurrency == 1 else self.concurrency - len(self._inflight)
        if free <= 0:
            # All busy: keep polling (a member that stops polling leaves the group),
            # take nothing until an attempt finishes.
            consumer.pause(*consumer.assignment())
            self._slot_freed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._slot_freed.wait(), 0.2)
            await consumer.getmany(timeout_ms=0)
            async with self._gate:
                await self._maybe_commit()
            return
        self._resume_ready(consumer)
        batches = await consumer.getmany(timeout_ms=self._poll_ms(), max_records=free)
        # aiokafka returns only records of the current assignment. If the group
        # rebalances before they are taken, the next assignment starts again from the
        # committed offsets: they are dropped here, and read again there.
        epoch = self._epoch
        async with self._gate:
            if epoch == self._epoch:
                await self._take(consumer, batches)
            await self._maybe_commit()

    async def _take(
        self, consumer: AIOKafkaConsumer, batches: dict[TopicPartition, list[Record]]
    ) -> None:
        for tp, records in batches.items():
            tracker = self._trackers.get(tp.partition)
            if tracker is None or tp.partition not in self.owned:
                # Not to be handled now (its state is being read): read them again later.
                with contextlib.suppress(Exception):
                    consumer.seek(tp, records[0].offset)
                continue
            many = getattr(self.owner, "handle_many", None) if self.concurrency == 1 else None
            if many is not None:
                if self._revoking or self._stopping:
                    return
                for record in records:
                    tracker.take(record.offset)
                    if self.on_record is not None:
                        self.on_record(record)
                await many(records)
                for record in records:
                    tracker.finish(record.offset)
                continue
            for record in records:
                if self._revoking or self._stopping:
                    return
                tracker.take(record.offset)
                if self.on_record is not None:
                    self.on_record(record)
                if self.concurrency == 1:
                    await self.owner.handle(record)
                    tracker.finish(record.offset)
                else:
                    self._spawn(tracker, record)

    async def _maybe_commit(self) -> None:
        if time.monotonic() - self._last_commit >= self.settings.commit_interval:
            await self._commit()

    def _poll_ms(self) -> int:
        return max(10, min(int(self.settings.commit_interval * 1000), 200))

    def _resume_ready(self, consumer: AIOKafkaConsumer) -> None:
        paused = consumer.paused()
        if paused:
            ready = [tp for tp in paused if tp.partition not in self._recovering]
            if ready:
                consumer.resume(*ready)

    def _spawn(self, tracker: OffsetTracker, record: Record) -> None:
        async def handle() -> None:
            try:
                await self.owner.handle(record)
            except asyncio.CancelledError:
                raise
            except Exception:
                # The owner dead-letters what it cannot handle; what reaches here is a
                # broker failure: left unfinished, the record is read again.
                log.exception(
                    "%s: record %s@%s failed", self.group, record.partition, record.offset
                )
                self._suspect = True
                return
            tracker.finish(record.offset)

        task = asyncio.create_task(handle())
        self._inflight.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._inflight.discard(t)
            self._slot_freed.set()

        task.add_done_callback(done)

    async def _commit(self) -> None:
        """Commit what is finished, once the brokers have everything it produced."""
        assert self._consumer is not None
        self._last_commit = time.monotonic()
        if self._suspect:
            raise DeliveryError("a record's effects were not all sent")
        points = {
            p: point
            for p, tracker in self._trackers.items()
            if p in self.owned
            and (point := tracker.commit_point) is not None
            and point > self._committed.get(p, -1)
        }
        await self.producer.flush()
        if not points:
            return
        offsets = {TopicPartition(self.topic, p): o for p, o in points.items()}
        try:
            await asyncio.wait_for(self._consumer.commit(offsets), self.settings.request_timeout)
        except (KafkaError, TimeoutError) as exc:
            # Not fatal: the records are handled again by whoever owns them next (or
            # here after a rewind), and handling is idempotent.
            log.warning("%s: offset commit failed (%r); will retry", self.group, exc)
            return
        self._committed.update(points)

    async def _rewind(self) -> None:
        """Read every owned partition's state again and go back to its last commit.

        After a send failed, the state in memory may hold changes the logs do
        not: only the logs are trusted.
        """
        assert self._consumer is not None
        async with self._gate:
            self._epoch += 1
            self._suspect = False
            with contextlib.suppress(Exception):
                await self.producer.flush()
            if self._recovery is not None:
                # a read that began before the flush may miss what the flush sent
                self._recovery.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._recovery
                self._recovery = None
            partitions = set(self.owned) | set(self._recovering)
            self.owner.lose(partitions)
            self.owned -= partitions
            for p in partitions:
                self._trackers[p] = OffsetTracker()
                await self._seek_to_commit(TopicPartition(self.topic, p))
            self._start_recovery(partitions & self._assigned)
        await asyncio.sleep(min(1.0, self.settings.heartbeat_interval))

    async def _seek_to_commit(self, tp: TopicPartition) -> None:
        """Go back to ``tp``'s committed offset (its beginning if none), until that works.

        Going on from the current position would skip the records whose effects
        were not acknowledged.
        """
        assert self._consumer is not None
        delay = 0.1
        while not self._stopping:
            try:
                if tp not in self._consumer.assignment():
                    return  # its next owner starts from the commit
                timeout = self.settings.request_timeout
                committed = await asyncio.wait_for(self._consumer.committed(tp), timeout)
                if committed is None:
                    await asyncio.wait_for(self._consumer.seek_to_beginning(tp), timeout)
                else:
                    self._consumer.seek(tp, committed)
                return
            except Exception as exc:
                log.warning("%s: cannot go back to the commit of %s yet: %r", self.group, tp, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # -- rebalances ----------------------------------------------------------------
    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        """Before the group rebalances: finish the record in hand, flush, commit."""
        self._revoking = self._rebalancing = True
        try:
            async with self._gate:
                self._epoch += 1
                try:
                    await asyncio.wait_for(self._commit(), self.settings.rebalance_timeout)
                except Exception as exc:
                    log.warning("%s: commit before the rebalance failed: %r", self.group, exc)
                    self._suspect = True
                # Nothing is handled until the next assignment says what stays here;
                # partitions being read go on being read (nobody writes them meanwhile).
                self._before, self.owned = set(self.owned), set()
        finally:
            self._revoking = False

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        """After the group rebalanced: keep what stayed here, read what was gained."""
        assert self._consumer is not None
        partitions = {tp.partition for tp in assigned if tp.topic == self.topic}
        generation = getattr(getattr(self._consumer, "_coordinator", None), "generation", None)
        held = self._before | self._read | self._recovering
        if (
            self._suspect
            or generation is None
            or self._generation is None
            or generation != self._generation + 1
        ):
            # A generation may have passed without this member: another one may have
            # worked on any partition since this one last read it.
            kept: set[int] = set()
            reading: set[int] = set()
        else:
            kept = (self._before | self._read) & partitions
            reading = self._recovering & partitions
        self._generation = generation
        if generation is not None:
            # aiokafka does not tell the assignor: its claims carry the generation
            self._assignor.on_generation_assignment(generation)
        self._suspect = False
        if self._recovering - reading and self._recovery is not None:
            # it was reading partitions that are not ours now: start it again
            self._recovery.cancel()
            self._recovery = None
            reading = set()
        lost = held - kept - reading
        self._before, self._read = set(), set()
        if lost:
            self.owner.lose(lost)
        self._recovering = reading
        self._assigned = partitions
        self._trackers = {p: OffsetTracker() for p in partitions}
        self._committed = {}
        self.owned = kept
        gained = partitions - kept
        if gained:
            self._start_recovery(gained)  # pauses again those still being read
        log.info(
            "%s: assigned %s (kept %s, reading %s)",
            self.group,
            sorted(partitions),
            sorted(kept),
            sorted(gained),
        )
        self._rebalancing = False
        self._joined.set()

    def _start_recovery(self, partitions: set[int]) -> None:
        """Pause ``partitions`` and read their state; they resume once it is read."""
        if self._consumer is not None:
            self._consumer.pause(*(TopicPartition(self.topic, p) for p in partitions))
        self._recovering |= partitions
        if self._recovery is None or self._recovery.done():
            self._recovery = asyncio.create_task(self._recover(), name=f"{self.group}.recovery")

    async def _recover(self) -> None:
        delay = 0.1
        while self._recovering:
            batch = set(self._recovering)
            bound = self.settings.rebalance_timeout * 6 + self.settings.request_timeout
            try:
                await asyncio.wait_for(self.owner.gain(batch), bound)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "%s: reading partitions %s failed (%r); retrying",
                    self.group,
                    sorted(batch),
                    exc,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self._recovering -= batch
            if self._rebalancing:
                self._read |= batch  # owned if the next assignment keeps it here
            else:
                self.owned |= batch & self._assigned
