"""What the worker's Faust apps share: app settings, raw topics, outboxes, tables.

Both the executor app and the activity app are built here, so that they agree
on the broker timings, the at-least-once guarantee and the fetch wait.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP, TopicT

from ._messages import encode_dead_letter
from ._metrics import WorkerMetrics
from ._tables import ChangelogTable, recover
from .settings import StreamingSettings

log = logging.getLogger("app.streaming.worker")

_FETCH_WAIT_ATTR = "_streamflow_fetch_wait_ms"
_original_create_worker_consumer = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer


def _create_worker_consumer(self: Any, transport: Any) -> Any:
    # Faust hard-codes a 1.5 s fetch long-poll; brokers that do not wake a fetch on
    # new data (the test broker) then add ~0.75 s per hop. Use our setting instead.
    consumer = _original_create_worker_consumer(self, transport)
    wait = getattr(self.app, _FETCH_WAIT_ATTR, None)
    if wait is not None:
        consumer._fetch_max_wait_ms = wait
    return consumer


faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer = _create_worker_consumer  # type: ignore[method-assign]


def new_app(settings: StreamingSettings, app_id: str, web_port: int) -> faust.App:
    """A Faust app with the worker's broker timings; ``web_port`` 0 serves no web."""
    s = settings
    os.makedirs(s.data_dir, exist_ok=True)  # Faust creates only the last level
    app = faust.App(
        app_id,
        datadir=os.path.join(s.data_dir, app_id),
        broker=[f"kafka://{server.strip()}" for server in s.bootstrap_servers.split(",")],
        store="memory://",
        processing_guarantee="at_least_once",
        topic_partitions=s.partitions,
        topic_replication_factor=s.replication,
        broker_session_timeout=s.session_timeout,
        broker_heartbeat_interval=s.heartbeat_interval,
        broker_rebalance_timeout=s.rebalance_timeout,
        broker_commit_interval=s.commit_interval,
        broker_request_timeout=max(90.0, s.session_timeout * 2),
        consumer_auto_offset_reset="earliest",
        table_standby_replicas=0,
        web_enabled=web_port != 0,
        web_port=web_port or 6066,
        stream_buffer_maxsize=s.stream_buffer,
        # Stopping must not wait for every taken message to be acked: one left
        # unacked (an activity task taken while draining) would wait forever;
        # what is not committed goes to the next owner.
        stream_wait_empty=False,
        # run headers repeat the latest events: leave room for large payloads
        producer_max_request_size=16 * 1024 * 1024,
    )
    setattr(app, _FETCH_WAIT_ATTR, s.fetch_wait_ms)
    return app


def raw_topic(app: faust.App, settings: StreamingSettings, name: str) -> TopicT:
    """A topic of raw ``bytes`` keys and values (the wire format is ours)."""
    return app.topic(
        name,
        partitions=settings.partitions,
        replicas=settings.replication,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )


class Outbox:
    """A topic a worker only writes to, straight through its app's producer.

    Faust's ``Topic.send`` adds serialization and a producer-start check that
    yields to the event loop three times per message; our values are bytes
    already, and this is the hot path of every step.
    """

    def __init__(self, app: faust.App, name: str) -> None:
        self.app = app
        self.name = name

    async def send(
        self,
        *,
        key: bytes | None,
        value: bytes,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        # returns once the record is buffered; the flush before each commit waits for it
        await self.app.producer.send(self.name, key, value, partition, None, headers)


def changelog_table(
    app: faust.App, topic: str, decode: Callable[[bytes], Any] | None = None
) -> ChangelogTable:
    """A table whose changes go to ``topic`` through ``app``'s producer."""

    async def send(topic: str, key: bytes, value: bytes | None, partition: int) -> Awaitable[Any]:
        # buffered; the flush before each offset commit waits for it
        return await app.producer.send(topic, key, value, partition, None, None)

    return ChangelogTable(topic, send, decode)


def assigned_partitions(tps: Iterable[TP], topic: str) -> set[int]:
    """The partitions of ``topic`` among ``tps``."""
    return {tp.partition for tp in tps if tp.topic == topic}


async def recover_tables(
    settings: StreamingSettings, tables: list[ChangelogTable], partitions: set[int]
) -> None:
    """Read ``partitions`` of ``tables`` from their changelogs, within the recovery bound."""
    started = time.monotonic()
    read = await recover(
        settings.bootstrap_servers,
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


async def to_dead_letter(outbox: Outbox, metrics: WorkerMetrics, event: Any, reason: str) -> None:
    """Keep a message that cannot be handled in ``outbox``, with the reason."""
    message = event.message
    log.warning(
        "dead letter from %s[%s]@%s: %s", message.topic, message.partition, message.offset, reason
    )
    metrics.dead_letters.labels(reason.split(":")[0][:60]).inc()
    await outbox.send(
        key=event.key,
        value=encode_dead_letter(
            reason, message.topic, message.partition, message.offset, event.value
        ),
        headers=[("reason", reason.encode()[:1000])],
    )
