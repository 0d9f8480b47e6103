"""Worker state tables: in memory, written through to compacted changelog topics.

A partition's owner alone writes its part of a table, so the changelog is the
table's whole truth: a new owner reads the changelog partitions it gained to
their end before it handles a command, and from then on writes every change
to them itself.

Faust's own tables were used first and dropped: their recovery runs on its own
schedule, trusts the end offset the broker reports (the test broker reports
less than the real end) and could apply older records after the worker had
read the changelogs itself, so a new owner acted on an old state; it also
never finished once in a while after a third worker joined.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from ._security import start_client
from .settings import StreamingSettings

# Buffers one record; returns what completes once the broker acknowledged it.
Send = Callable[[str, bytes, bytes | None, int], Awaitable[Awaitable[Any]]]


class ChangelogTable:
    """A ``bytes -> bytes`` table of the partitions this worker owns."""

    def __init__(
        self,
        topic: str,
        send: Send | None = None,
        decode: Callable[[bytes], Any] | None = None,
    ) -> None:
        """``send`` writes a change to the changelog; without it the table is read-only.

        ``decode`` parses a value; :meth:`decoded_items` keeps each parsed value
        until the key changes (the timer loop reads every entry on each tick).
        """
        self.topic = topic
        self._send = send
        self._decode = decode
        self._data: dict[bytes, bytes] = {}
        self._partition: dict[bytes, int] = {}
        self._decoded: dict[bytes, Any] = {}

    def get(self, key: bytes) -> bytes | None:
        return self._data.get(key)

    def __contains__(self, key: bytes) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def items(self) -> list[tuple[bytes, bytes]]:
        """A snapshot: the caller may write to the table while it goes through it."""
        return list(self._data.items())

    def decoded_items(self) -> list[tuple[bytes, Any]]:
        """Like :meth:`items`, with each value parsed by ``decode`` (once per change)."""
        if self._decode is None:
            raise TypeError(f"the table of {self.topic!r} has no decoder")
        cache, decode = self._decoded, self._decode
        out = []
        for key, raw in self._data.items():
            value = cache.get(key)
            if value is None:
                value = cache[key] = decode(raw)
            out.append((key, value))
        return out

    async def set(self, key: bytes, value: bytes, partition: int) -> Awaitable[Any]:
        """Change ``key`` here and append the change to its changelog ``partition``.

        Returns once the record is buffered; await the result to wait for the
        broker's acknowledgement.
        """
        send = self._writer()
        self._data[key] = value
        self._partition[key] = partition
        self._decoded.pop(key, None)
        return await send(self.topic, key, value, partition)

    async def delete(self, key: bytes, partition: int) -> None:
        """Remove ``key`` (a tombstone in the changelog); nothing is sent if it is absent."""
        send = self._writer()
        if self._data.pop(key, None) is None:
            return
        self._partition.pop(key, None)
        self._decoded.pop(key, None)
        await send(self.topic, key, None, partition)

    def _writer(self) -> Send:
        if self._send is None:
            raise TypeError(f"the table of {self.topic!r} was opened read-only")
        return self._send

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget the keys of ``partitions`` (no longer owned here); the changelog keeps them."""
        lost = set(partitions)
        for key in [k for k, p in self._partition.items() if p in lost]:
            del self._data[key]
            del self._partition[key]
            self._decoded.pop(key, None)

    def apply(self, key: bytes, value: bytes | None, partition: int) -> None:
        """Apply one changelog record read back from the broker."""
        self._decoded.pop(key, None)
        if value is None:
            self._data.pop(key, None)
            self._partition.pop(key, None)
        else:
            self._data[key] = value
            self._partition[key] = partition


async def partitions_of(settings: StreamingSettings, topic: str, timeout: float) -> set[int]:
    """The partitions of ``topic`` (empty if it does not exist)."""
    consumer = AIOKafkaConsumer(**settings.kafka_options())
    try:
        await start_client(consumer.start, settings, settings.bootstrap_servers, timeout)
        return set(consumer.partitions_for_topic(topic) or ())
    finally:
        await consumer.stop()


async def recover(
    settings: StreamingSettings,
    tables: list[ChangelogTable],
    partitions: set[int],
    *,
    fetch_wait_ms: int,
    timeout: float,
) -> int:
    """Load ``partitions`` of ``tables`` from their changelogs; returns the records read.

    Reads each changelog partition from its beginning until the consumer is at
    or past the reported end offset and a further fetch brings nothing: the
    test broker reports the last batch's first offset + 1 as the end, so
    reaching the reported end alone would stop short.
    """
    if not partitions or not tables:
        return 0
    for table in tables:
        table.drop(partitions)
    by_tp = {TopicPartition(t.topic, p): t for t in tables for p in partitions}
    consumer = AIOKafkaConsumer(
        **settings.kafka_options(),
        enable_auto_commit=False,
        # Assigning starts a reset with this policy; "latest" could land after the
        # seek to the beginning below and skip the whole changelog.
        auto_offset_reset="earliest",
        fetch_max_wait_ms=fetch_wait_ms,
        max_partition_fetch_bytes=16 * 1024 * 1024,
    )
    deadline = time.monotonic() + timeout
    read = 0
    try:
        # every step is bounded: a broker that goes away mid-way must not hang the
        # recovery (the caller retries it)
        await start_client(consumer.start, settings, settings.bootstrap_servers, timeout)
        tps = list(by_tp)
        consumer.assign(tps)
        ends = await asyncio.wait_for(consumer.end_offsets(tps), _left(deadline))
        await asyncio.wait_for(consumer.seek_to_beginning(*tps), _left(deadline))
        remaining = set(tps)
        while remaining:
            if time.monotonic() > deadline:
                names = ", ".join(sorted(f"{tp.topic}[{tp.partition}]" for tp in remaining))
                raise TimeoutError(f"could not read changelogs {names} to their end in {timeout}s")
            batches = await consumer.getmany(*remaining, timeout_ms=200)
            for tp, messages in batches.items():
                table = by_tp[tp]
                for message in messages:
                    if message.key is not None:
                        table.apply(message.key, message.value, tp.partition)
                        read += 1
            for tp in list(remaining):
                position = await asyncio.wait_for(consumer.position(tp), _left(deadline))
                if not batches.get(tp) and position >= ends[tp]:
                    remaining.discard(tp)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(consumer.stop(), 10.0)
    return read


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("reading the changelogs took too long")
    return left
