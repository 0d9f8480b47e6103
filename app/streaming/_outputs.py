"""What a worker writes: topics it only produces to, table changelogs, dead letters."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ._consumer import Producer, Record
from ._messages import encode_dead_letter
from ._metrics import WorkerMetrics
from ._tables import ChangelogTable, recover
from .settings import StreamingSettings

log = logging.getLogger("app.streaming.worker")


class Outbox:
    """A topic a worker only writes to, through its producer."""

    def __init__(self, producer: Producer, name: str) -> None:
        self.producer = producer
        self.name = name

    async def send(
        self,
        *,
        key: bytes | None,
        value: bytes,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        # returns once the record is buffered; the flush before each commit checks it
        await self.producer.send(self.name, key, value, partition, headers)


def changelog_table(
    producer: Producer, topic: str, decode: Callable[[bytes], Any] | None = None
) -> ChangelogTable:
    """A table whose changes go to ``topic`` through ``producer``."""

    async def send(topic: str, key: bytes, value: bytes | None, partition: int) -> Awaitable[Any]:
        return await producer.send(topic, key, value, partition)

    return ChangelogTable(topic, send, decode)


async def recover_tables(
    settings: StreamingSettings, tables: list[ChangelogTable], partitions: set[int]
) -> None:
    """Read ``partitions`` of ``tables`` from their changelogs, within the recovery bound."""
    started = time.monotonic()
    read = await recover(
        settings,
        tables,
        partitions,
        fetch_wait_ms=settings.fetch_wait_ms,
        timeout=settings.rebalance_timeout * 6,
    )
    log.info(
        "recovered partitions %s of %s: %d records in %.2fs",
        sorted(partitions),
        ", ".join(t.topic for t in tables),
        read,
        time.monotonic() - started,
    )


async def to_dead_letter(
    outbox: Outbox, metrics: WorkerMetrics, record: Record, reason: str, workflow_id: str = ""
) -> None:
    """Keep a record that cannot be handled in ``outbox``, with the reason."""
    where = f"{record.topic}[{record.partition}]@{record.offset}"
    about = f" (workflow {workflow_id!r})" if workflow_id else ""
    log.warning("dead letter from %s%s: %s", where, about, reason)
    metrics.dead_letters.labels(reason.split(":")[0][:60]).inc()
    await outbox.send(
        key=record.key,
        value=encode_dead_letter(
            reason, record.topic, record.partition, record.offset, record.value
        ),
        headers=[("reason", reason.encode()[:1000])],
    )
