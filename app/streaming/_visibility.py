"""Visibility for the streaming runtime: a local SQLite index fed by the history topic.

The workers publish every recorded event to the history topic; this is one of
its downstream consumers, used by the runtime itself. :class:`VisibilityIndex`
reads the topic from where it left off (its offsets are stored in the same
SQLite transaction as the rows they produced, so a restart neither skips nor
double-applies a record) and keeps one header row per workflow id (its latest
run) plus its search attributes, indexed as in the SQLite store
(``providers/_sqlite_visibility.py``). ``python -m app visibility`` keeps a
file up to date; :meth:`KafkaExecutor.list` catches an index up and queries it.

A record is applied only to the run the row holds: a duplicate (at-least-once
delivery) or an event of an older run changes nothing, and a
``workflow_started`` of a new run replaces the row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Sequence
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, TopicPartition

from app.workflow._errors import InvalidArgumentError, WorkflowError
from app.workflow._types import TERMINAL_STATUS, EventType, HistoryEvent, WorkflowStatus
from app.workflow._visibility import WorkflowPage, WorkflowQuery, time_key
from providers import _sqlite_visibility as index_sql

from ._messages import decode_history_records
from ._security import start_client
from .settings import StreamingSettings

log = logging.getLogger("app.streaming.visibility")

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS workflows (
    workflow_id   TEXT PRIMARY KEY NOT NULL,
    run_id        TEXT NOT NULL,
    workflow_type TEXT NOT NULL,
    status        TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    created_key   INTEGER NOT NULL,
    event_count   INTEGER NOT NULL,
    closed_key    INTEGER,
    attributes    TEXT,
    memo          TEXT
);
CREATE INDEX IF NOT EXISTS workflows_by_status ON workflows (status, created_key);
CREATE INDEX IF NOT EXISTS workflows_by_created ON workflows (created_key);
CREATE TABLE IF NOT EXISTS offsets (
    topic      TEXT NOT NULL,
    partition  INTEGER NOT NULL,
    next       INTEGER NOT NULL,
    PRIMARY KEY (topic, partition)
);
"""

Decoded = tuple[str, str, str, HistoryEvent]


def apply_event(connection: sqlite3.Connection, decoded: Decoded) -> None:
    """Take one history event into the index (in the caller's transaction)."""
    wid, run_id, wtype, event = decoded
    row = connection.execute(
        "SELECT run_id FROM workflows WHERE workflow_id = ?", (wid,)
    ).fetchone()
    if event.type is EventType.WORKFLOW_STARTED:
        if row is not None and row[0] == run_id:
            return  # seen before: the row is already past it
        connection.execute(
            "INSERT OR REPLACE INTO workflows (workflow_id, run_id, workflow_type, status, "
            "created_at, created_key, event_count, closed_key, attributes, memo) "
            "VALUES (?, ?, ?, 'running', ?, ?, ?, NULL, NULL, ?)",
            (
                wid,
                run_id,
                wtype,
                event.timestamp.isoformat(),
                time_key(event.timestamp),
                event.id,
                index_sql.dump(event.memo),
            ),
        )
        attributes = {k: v for k, v in (event.search_attributes or {}).items() if v is not None}
        index_sql.set_attributes(connection, wid, attributes)
        return
    if row is None:
        # its start is not on the topic any more (retention): index what is known
        connection.execute(
            "INSERT INTO workflows (workflow_id, run_id, workflow_type, status, created_at, "
            "created_key, event_count) VALUES (?, ?, ?, 'running', ?, ?, 0)",
            (wid, run_id, wtype, event.timestamp.isoformat(), time_key(event.timestamp)),
        )
    elif row[0] != run_id:
        return  # an older run's (or the row is of a newer run)
    status = TERMINAL_STATUS.get(event.type)
    connection.execute(
        "UPDATE workflows SET event_count = MAX(event_count, ?), "
        "status = COALESCE(?, status), closed_key = COALESCE(?, closed_key) "
        "WHERE workflow_id = ?",
        (
            event.id,
            None if status is None else status.value,
            None if status is None else time_key(event.timestamp),
            wid,
        ),
    )
    if event.type is EventType.SEARCH_ATTRIBUTES_UPSERTED and event.search_attributes:
        index_sql.upsert_attributes(connection, wid, [event.search_attributes])


class VisibilityIndex:
    """Workflow headers from the history topic, kept in SQLite at ``path``.

    ``path`` is a file (kept across restarts, read on from its stored
    offsets) or ``":memory:"`` (built from the start of the topic). Use
    :meth:`catch_up` to read what is on the topic now, :meth:`run` to follow
    it, and :meth:`list` to query.
    """

    def __init__(self, settings: StreamingSettings, path: str = ":memory:") -> None:
        if not isinstance(settings, StreamingSettings):
            raise InvalidArgumentError(
                f"settings must be StreamingSettings, got {type(settings).__name__}"
            )
        if not isinstance(path, str) or not path:
            raise InvalidArgumentError(f"path must be a file name or ':memory:', got {path!r}")
        self.settings = settings
        self.path = path
        self.topic = settings.topology.history
        self._db: sqlite3.Connection | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()
        self.applied = 0
        """Records taken into the index by this object."""

    async def __aenter__(self) -> VisibilityIndex:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Open the file and connect to the brokers, at the stored offsets (idempotent)."""
        if self._consumer is not None:
            return
        if self._db is None:
            self._db = await asyncio.to_thread(self._open)
        s = self.settings
        consumer = AIOKafkaConsumer(
            **s.kafka_options(),
            enable_auto_commit=False,
            fetch_max_wait_ms=s.fetch_wait_ms,
            auto_offset_reset="earliest",
            client_id=f"visibility-{self.topic}",
        )
        await start_client(consumer.start, s, s.bootstrap_servers, s.request_timeout)
        try:
            partitions = await self._partitions(consumer)
            stored = dict(
                self._db.execute(
                    "SELECT partition, next FROM offsets WHERE topic = ?", (self.topic,)
                )
            )
            tps = [TopicPartition(self.topic, p) for p in partitions]
            consumer.assign(tps)
            for tp in tps:
                if tp.partition in stored:
                    consumer.seek(tp, stored[tp.partition])
                else:
                    await consumer.seek_to_beginning(tp)
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer

    async def _partitions(self, consumer: AIOKafkaConsumer) -> list[int]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.request_timeout
        while True:
            partitions = consumer.partitions_for_topic(self.topic)
            if partitions:
                return sorted(partitions)
            if loop.time() > deadline:
                raise WorkflowError(
                    f"history topic {self.topic!r} not found on {self.settings.bootstrap_servers}"
                )
            await consumer._client.force_metadata_update()
            await asyncio.sleep(0.1)

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        if self.path != ":memory:":
            db.execute("PRAGMA journal_mode = WAL")
        db.executescript(_SCHEMA + index_sql.SCHEMA)
        return db

    async def aclose(self) -> None:
        """Disconnect and close the file."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(Exception):
                await consumer.stop()
        async with self._lock:
            db, self._db = self._db, None
            if db is not None:
                db.close()

    async def poll(self, timeout: float = 1.0) -> int:
        """Fetch once (waiting up to ``timeout`` s) and apply what came; returns the count."""
        await self.start()
        assert self._consumer is not None
        batches = await self._consumer.getmany(timeout_ms=int(timeout * 1000))
        records = [(tp, r) for tp, rs in batches.items() for r in rs]
        if records:
            async with self._lock:
                await asyncio.to_thread(self._apply, records)
            self.applied += len(records)
        return len(records)

    def _apply(self, records: Sequence[tuple[TopicPartition, Any]]) -> None:
        db = self._db
        assert db is not None
        db.execute("BEGIN IMMEDIATE")
        try:
            ends: dict[int, int] = {}
            for tp, record in records:
                ends[tp.partition] = record.offset + 1
                if record.value is None:
                    continue
                try:
                    decoded = decode_history_records(record.value)
                except Exception as exc:  # one bad record must not stop the index
                    log.warning(
                        "history record %s/%s at %s skipped: %s",
                        tp.topic,
                        tp.partition,
                        record.offset,
                        exc,
                    )
                    continue
                for event in decoded:
                    apply_event(db, event)
            db.executemany(
                "INSERT OR REPLACE INTO offsets (topic, partition, next) VALUES (?, ?, ?)",
                [(self.topic, p, n) for p, n in ends.items()],
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def catch_up(self, timeout: float | None = None) -> int:
        """Apply everything on the topic now; returns the count (TimeoutError past ``timeout``).

        It reads until every partition is at or past the end offset reported
        when it began *and* a fetch brings nothing: the first fetches of a
        fresh consumer may come back empty before it has reached anything, and
        some brokers under-report end offsets.
        """
        limit = self.settings.request_timeout if timeout is None else timeout
        wait = max(self.settings.fetch_wait_ms / 1000 * 3, 0.05)
        total = 0
        async with asyncio.timeout(limit):
            await self.start()
            consumer = self._consumer
            assert consumer is not None
            tps = sorted(consumer.assignment())
            ends = await consumer.end_offsets(tps)
            while True:
                count = await self.poll(wait)
                total += count
                if not count and all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                    return total

    async def run(self) -> None:
        """Follow the topic until cancelled."""
        while True:
            await self.poll()

    async def list(self, query: WorkflowQuery | None = None) -> WorkflowPage:
        """The page of ``query`` from the index as it stands (call :meth:`catch_up` first)."""
        if query is not None and not isinstance(query, WorkflowQuery):
            raise InvalidArgumentError(f"query must be a WorkflowQuery, got {type(query).__name__}")
        if self._db is None:
            self._db = await asyncio.to_thread(self._open)
        async with self._lock:
            return await asyncio.to_thread(index_sql.page, self._db, query or WorkflowQuery())

    async def counts(self) -> dict[WorkflowStatus, int]:
        """How many indexed workflows have each status."""
        if self._db is None:
            self._db = await asyncio.to_thread(self._open)
        async with self._lock:
            return await asyncio.to_thread(index_sql.counts, self._db)
