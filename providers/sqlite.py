"""A durable workflow store in one SQLite file (WAL journal, group commit).

Layout: a ``workflows`` table holds one header row per workflow id (its latest
run) and an ``events`` table holds that run's history, one JSON row per event.
``append`` inserts only the new event rows, so a step costs O(1) whatever the
history length.

Every write goes through one writer thread that owns the only writing
connection. It takes the first queued write and every other write already
waiting, runs them in a single transaction with a savepoint each (a failing
write is rolled back alone), commits once and then resolves the callers'
futures: many concurrent workflows share each disk sync. Reads run on a second
connection in its own thread; WAL lets them proceed while the writer commits.
A call whose future has resolved is committed, so it survives the process
being killed.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import json
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Final, NoReturn, TypeVar

import pydantic_core

from app.workflow._errors import InvalidArgumentError
from app.workflow._store import StoreClosedError, StoreConflictError
from app.workflow._types import HistoryEvent, WorkflowFilter, WorkflowState, WorkflowStatus
from app.workflow._visibility import (
    WorkflowPage,
    WorkflowQuery,
    WorkflowSummary,
    summarize,
    time_key,  # the sort key of a start or close time: the same as the index's cursor
)

from . import _sqlite_visibility as visibility

__all__ = ["DEFAULT_PATH", "ENV_PATH", "SQLiteStore", "StoreClosedError"]

ENV_PATH: Final = "WORKFLOWS_DB"
"""Environment variable naming the database file when no path is given."""

DEFAULT_PATH: Final = "workflows.db"
"""Database file used when neither a path nor ``WORKFLOWS_DB`` is given."""

_SYNCHRONOUS_MODES: Final = ("FULL", "NORMAL", "EXTRA")
_MAX_BATCH: Final = 256
_BUSY_TIMEOUT_S: Final = 30.0
_JOIN_TIMEOUT_S: Final = 30.0
_SCHEMA_VERSION: Final = 2

log = logging.getLogger("providers.sqlite")

_T = TypeVar("_T")


_SCHEMA: Final = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS workflows (
    workflow_id   TEXT PRIMARY KEY NOT NULL,
    run_id        TEXT NOT NULL,
    workflow_type TEXT NOT NULL,
    status        TEXT NOT NULL,
    input         TEXT NOT NULL,
    result        TEXT NOT NULL,
    error         TEXT,
    timeout       REAL,
    created_at    TEXT NOT NULL,
    created_key   INTEGER NOT NULL,
    updated_at    TEXT NOT NULL,
    event_count   INTEGER NOT NULL,
    closed_key    INTEGER,
    attributes    TEXT,
    memo          TEXT
);
CREATE INDEX IF NOT EXISTS workflows_by_status ON workflows (status, created_key);
CREATE INDEX IF NOT EXISTS workflows_by_created ON workflows (created_key);
CREATE TABLE IF NOT EXISTS events (
    workflow_id TEXT NOT NULL,
    id          INTEGER NOT NULL,
    run_id      TEXT NOT NULL,
    type        TEXT NOT NULL,
    data        TEXT NOT NULL,
    PRIMARY KEY (workflow_id, id)
);
COMMIT;
"""

_HEADER_COLUMNS: Final = (
    "workflow_id, run_id, workflow_type, status, input, result, error, timeout, "
    "created_at, created_key, updated_at, event_count, closed_key, attributes, memo"
)
_SAVE_HEADER: Final = (
    f"INSERT OR REPLACE INTO workflows ({_HEADER_COLUMNS}) VALUES ({', '.join('?' * 15)})"
)
_INSERT_EVENT: Final = (
    "INSERT INTO events (workflow_id, id, run_id, type, data) VALUES (?, ?, ?, ?, ?)"
)
_UPDATE_HEADER: Final = (
    "UPDATE workflows SET status = ?, result = ?, error = ?, "
    "updated_at = ?, closed_key = ?, event_count = event_count + ? "
    "WHERE workflow_id = ? AND run_id = ?"
)
_SELECT_EVENTS: Final = "SELECT data FROM events WHERE workflow_id = ? ORDER BY id"

_HeaderRow = tuple[
    str,
    str,
    str,
    str,
    str,
    str,
    str | None,
    float | None,
    str,
    int,
    str,
    int,
    int | None,
    str | None,
    str | None,
]
_EventRow = tuple[str, int, str, str, str]
_HeaderUpdate = tuple[str, str, str | None, str, int | None]


# -- encoding -----------------------------------------------------------------


def _dump(value: Any) -> str:
    return pydantic_core.to_json(value).decode()


def _header_update(state: WorkflowState) -> _HeaderUpdate:
    # type, input and timeout are fixed when the run is saved: never rewritten per step
    return (
        WorkflowStatus(state.status).value,
        _dump(state.result),
        state.error,
        state.updated_at.isoformat(),
        _closed_key(state),
    )


def _closed_key(state: WorkflowState) -> int | None:
    return None if state.status == WorkflowStatus.RUNNING else time_key(state.updated_at)


def _header_row(state: WorkflowState, summary: WorkflowSummary) -> _HeaderRow:
    return (
        state.workflow_id,
        state.run_id,
        state.workflow_type,
        WorkflowStatus(state.status).value,
        _dump(state.input),
        _dump(state.result),
        state.error,
        state.timeout,
        state.created_at.isoformat(),
        time_key(state.created_at),
        state.updated_at.isoformat(),
        len(state.history),
        _closed_key(state),
        visibility.dump(summary.search_attributes),
        visibility.dump(summary.memo),
    )


def _event_rows(
    workflow_id: str, run_id: str, events: Sequence[HistoryEvent]
) -> builtins.list[_EventRow]:
    return [
        (
            workflow_id,
            event.id,
            run_id,
            event.type.value,
            event.model_dump_json(exclude_defaults=True),
        )
        for event in events
    ]


def _state_from(row: tuple[Any, ...], events: Sequence[str]) -> WorkflowState:
    (workflow_id, run_id, workflow_type, status, input_, result, error, timeout) = row[:8]
    return WorkflowState(
        workflow_id=workflow_id,
        run_id=run_id,
        workflow_type=workflow_type,
        status=WorkflowStatus(status),
        input=json.loads(input_),
        result=json.loads(result),
        error=error,
        timeout=timeout,
        history=[HistoryEvent.model_validate_json(data) for data in events],
        created_at=datetime.fromisoformat(row[8]),
        updated_at=datetime.fromisoformat(row[10]),
    )


# -- transactions (run on a worker thread) ------------------------------------


def _upgrade(connection: sqlite3.Connection) -> None:
    """Bring a file of an older schema version to this one (in one transaction)."""
    (version,) = connection.execute("PRAGMA user_version").fetchone()
    if version == _SCHEMA_VERSION:
        return
    connection.execute("BEGIN IMMEDIATE")
    try:
        visibility.add_columns(connection)
        for statement in visibility.SCHEMA.split(";"):
            connection.execute(statement)
        # version 1 kept no close time: a closed run's last write is its end
        closed = connection.execute(
            "SELECT workflow_id, updated_at FROM workflows "
            "WHERE status != 'running' AND closed_key IS NULL"
        ).fetchall()
        connection.executemany(
            "UPDATE workflows SET closed_key = ? WHERE workflow_id = ?",
            [(time_key(datetime.fromisoformat(at)), wid) for wid, at in closed],
        )
        connection.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise


def _save_tx(connection: sqlite3.Connection, header: _HeaderRow, rows: Sequence[_EventRow]) -> None:
    workflow_id = header[0]
    connection.execute("DELETE FROM events WHERE workflow_id = ?", (workflow_id,))
    connection.execute(_SAVE_HEADER, header)
    attributes = json.loads(header[13]) if header[13] else {}
    visibility.set_attributes(connection, workflow_id, attributes)
    try:
        connection.executemany(_INSERT_EVENT, rows)
    except sqlite3.IntegrityError as exc:
        ids = [row[1] for row in rows]
        raise StoreConflictError(
            f"workflow {workflow_id!r}: the saved history repeats event ids {ids}"
        ) from exc


def _append_tx(
    connection: sqlite3.Connection,
    workflow_id: str,
    run_id: str,
    first_id: int | None,
    update: _HeaderUpdate,
    rows: Sequence[_EventRow],
    upserts: Sequence[dict[str, Any]] = (),
) -> None:
    params: tuple[Any, ...] = (*update, len(rows), workflow_id, run_id)
    sql = _UPDATE_HEADER
    if first_id is not None:
        # The stored event count must be exactly first_id - 1: this one
        # statement checks the run and the id sequence together.
        sql += " AND event_count = ?"
        params = (*params, first_id - 1)
    if connection.execute(sql, params).rowcount == 0:
        _raise_append_conflict(connection, workflow_id, run_id, first_id, len(rows))
    try:
        connection.executemany(_INSERT_EVENT, rows)
    except sqlite3.IntegrityError as exc:
        ids = ", ".join(str(row[1]) for row in rows)
        raise StoreConflictError(
            f"cannot append to workflow {workflow_id!r}: an event id of [{ids}] is already stored"
        ) from exc
    if upserts:
        visibility.upsert_attributes(connection, workflow_id, upserts)


def _raise_append_conflict(
    connection: sqlite3.Connection, workflow_id: str, run_id: str, first_id: int | None, count: int
) -> NoReturn:
    stored = connection.execute(
        "SELECT run_id, event_count FROM workflows WHERE workflow_id = ?", (workflow_id,)
    ).fetchone()
    if stored is None:
        raise StoreConflictError(
            f"cannot append to workflow {workflow_id!r} (run {run_id}): "
            "it is not stored; save it first"
        )
    stored_run, stored_count = stored
    if stored_run != run_id:
        raise StoreConflictError(
            f"cannot append to workflow {workflow_id!r}: the stored run is "
            f"{stored_run}, the writer's run is {run_id}"
        )
    first = first_id or 0
    raise StoreConflictError(
        f"workflow {workflow_id!r} has {stored_count} stored events, so the appended "
        f"events must be {_span(stored_count + 1, count)}; got {_span(first, count)} "
        "(a duplicate or a gap)"
    )


def _span(first: int, count: int) -> str:
    return f"id {first}" if count == 1 else f"ids {first}..{first + count - 1}"


def _load_tx(connection: sqlite3.Connection, workflow_id: str) -> WorkflowState | None:
    row = connection.execute(
        f"SELECT {_HEADER_COLUMNS} FROM workflows WHERE workflow_id = ?", (workflow_id,)
    ).fetchone()
    if row is None:
        return None
    events = [data for (data,) in connection.execute(_SELECT_EVENTS, (workflow_id,))]
    return _state_from(row, events)


def _list_tx(
    connection: sqlite3.Connection, status: str | None, limit: int
) -> builtins.list[WorkflowState]:
    where = "" if status is None else "WHERE status = ?"
    params: tuple[Any, ...] = () if status is None else (status,)
    rows = connection.execute(
        f"SELECT {_HEADER_COLUMNS} FROM workflows {where} "
        "ORDER BY created_key DESC, workflow_id ASC LIMIT ?",
        (*params, limit if limit else -1),
    ).fetchall()
    return [
        _state_from(row, [data for (data,) in connection.execute(_SELECT_EVENTS, (row[0],))])
        for row in rows
    ]


def _delete_tx(connection: sqlite3.Connection, workflow_id: str) -> None:
    visibility.delete(connection, workflow_id)
    connection.execute("DELETE FROM events WHERE workflow_id = ?", (workflow_id,))
    connection.execute("DELETE FROM workflows WHERE workflow_id = ?", (workflow_id,))


# -- worker threads -----------------------------------------------------------


@dataclass(slots=True)
class _Job:
    run: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


_Outcome = tuple[_Job, BaseException | None, Any]


def _resolve(outcomes: Sequence[tuple[asyncio.Future[Any], BaseException | None, Any]]) -> None:
    for future, error, value in outcomes:
        if future.done():  # the caller was cancelled
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)


def _settle(outcomes: Sequence[_Outcome]) -> None:
    """Hand results back to their event loops, one wake-up per loop."""
    by_loop: dict[asyncio.AbstractEventLoop, builtins.list[Any]] = {}
    for job, error, value in outcomes:
        by_loop.setdefault(job.loop, []).append((job.future, error, value))
    for loop, items in by_loop.items():
        # A closed loop raises RuntimeError: nobody awaits those futures any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve, items)


class _Worker(threading.Thread):
    """Runs queued jobs on its own connection, many per transaction."""

    def __init__(
        self, store_path: str, role: str, connect: Callable[[], sqlite3.Connection], begin: str
    ) -> None:
        super().__init__(name=f"sqlite-store-{role}:{store_path}", daemon=True)
        self._store_path = store_path
        self._role = role
        self._connect = connect
        self._begin = begin
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()  # None: stop
        # Guards the hand-over with submit(): no job may be queued after the
        # thread has stopped taking jobs, or its caller would wait forever.
        self._lock = threading.Lock()
        self._stopping = False
        self._failure: StoreClosedError | None = None
        self._inflight: builtins.list[_Job] = []

    def submit(self, job: _Job) -> None:
        with self._lock:
            if self._failure is not None:
                raise self._failure
            if self._stopping:
                raise StoreClosedError(f"SQLite store {self._store_path!r} is closed")
            self._queue.put(job)

    def stop(self) -> None:
        with self._lock:
            if not self._stopping:
                self._stopping = True
                self._queue.put(None)

    def run(self) -> None:
        connection: sqlite3.Connection | None = None
        try:
            connection = self._connect()
            stop = False
            while not stop:
                first = self._queue.get()
                if first is None:
                    break
                batch = [first]
                while len(batch) < _MAX_BATCH:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is None:
                        stop = True
                        break
                    batch.append(item)
                self._inflight = batch
                _settle(self._run_batch(connection, batch))
                self._inflight = []
        except BaseException as exc:
            self._die(exc)
        finally:
            if connection is not None:
                try:
                    connection.close()
                except sqlite3.Error:
                    log.exception("closing the %s connection of %s", self._role, self._store_path)

    def _run_batch(
        self, connection: sqlite3.Connection, batch: Sequence[_Job]
    ) -> builtins.list[_Outcome]:
        try:
            connection.execute(self._begin)
        except sqlite3.Error as exc:  # e.g. another process holds the lock too long
            return [(job, exc, None) for job in batch]
        outcomes: builtins.list[_Outcome] = []
        applied: builtins.list[tuple[_Job, Any]] = []
        for job in batch:
            connection.execute("SAVEPOINT job")
            try:
                value = job.run(connection)
            except Exception as exc:
                outcomes.append((job, exc, None))
                if connection.in_transaction:
                    connection.execute("ROLLBACK TO job")
                    connection.execute("RELEASE job")
                else:
                    # SQLite rolled the whole transaction back (disk full, I/O
                    # error): the writes applied before this one are gone too.
                    outcomes.extend((done, exc, None) for done, _ in applied)
                    applied.clear()
                    connection.execute(self._begin)
            else:
                connection.execute("RELEASE job")
                applied.append((job, value))
        try:
            connection.execute("COMMIT")
        except sqlite3.Error as exc:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            outcomes.extend((job, exc, None) for job, _ in applied)
        else:
            outcomes.extend((job, None, value) for job, value in applied)
        return outcomes

    def _die(self, exc: BaseException) -> None:
        failure = StoreClosedError(
            f"SQLite store {self._store_path!r} is unusable: its {self._role} thread "
            f"stopped on {type(exc).__name__}: {exc}"
        )
        failure.__cause__ = exc
        with self._lock:
            self._failure = failure
            pending = builtins.list(self._inflight)
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None:
                    pending.append(item)
        _settle([(job, failure, None) for job in pending])


# -- the store ----------------------------------------------------------------


class SQLiteStore:
    """An :class:`~app.workflow._store.AppendingStore` in one SQLite file.

    ``path`` defaults to ``$WORKFLOWS_DB``, else ``workflows.db``, resolved
    here. ``synchronous`` is SQLite's durability pragma: ``FULL`` (default)
    and ``EXTRA`` survive power loss; ``NORMAL`` in WAL mode survives a
    process crash but may lose the last commits on power loss. Nothing is
    opened until the first call; use ``async with`` or :meth:`close`.
    Calls after ``close`` raise :class:`StoreClosedError`. A cancelled call
    may still be applied.
    """

    def __init__(
        self, path: str | os.PathLike[str] | None = None, *, synchronous: str = "FULL"
    ) -> None:
        if not isinstance(synchronous, str) or synchronous.upper() not in _SYNCHRONOUS_MODES:
            raise InvalidArgumentError(
                f"SQLiteStore synchronous must be one of {', '.join(_SYNCHRONOUS_MODES)}, "
                f"got {synchronous!r}"
            )
        if path is None:
            path = os.environ.get(ENV_PATH) or DEFAULT_PATH
        resolved = os.fspath(path)
        if not isinstance(resolved, str):
            raise InvalidArgumentError(f"SQLiteStore path must be a str path, got {path!r}")
        self._path = resolved
        self._synchronous = synchronous.upper()
        # A private in-memory database exists per connection, so reads must
        # share the writer's.
        self._single_connection = resolved in ("", ":memory:")
        self._writer: _Worker | None = None
        self._reader: _Worker | None = None
        self._closed = False
        self._schema_ready = threading.Event()
        self._schema_error: BaseException | None = None

    @property
    def path(self) -> str:
        """The database file."""
        return self._path

    @property
    def synchronous(self) -> str:
        """The ``PRAGMA synchronous`` mode of the writing connection."""
        return self._synchronous

    async def __aenter__(self) -> SQLiteStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def save(self, state: WorkflowState) -> None:
        """Replace the header and the whole history stored under ``state.workflow_id``."""
        header = _header_row(state, summarize(state))
        rows = _event_rows(state.workflow_id, state.run_id, state.history)
        await self._call(self._workers()[0], functools.partial(_save_tx, header=header, rows=rows))

    async def append(self, state: WorkflowState, events: Sequence[HistoryEvent]) -> None:
        """Insert ``events`` and update the header fields in one transaction.

        Raises :class:`StoreConflictError`, writing nothing, when the workflow
        is not stored, its stored run is not ``state.run_id``, or the event
        ids do not continue the stored history.
        """
        first_id = events[0].id if events else None
        if any(event.id != events[0].id + offset for offset, event in enumerate(events)):
            ids = ", ".join(str(e.id) for e in events)
            raise StoreConflictError(
                f"cannot append to workflow {state.workflow_id!r}: "
                f"the appended event ids are not consecutive: [{ids}]"
            )
        job = functools.partial(
            _append_tx,
            workflow_id=state.workflow_id,
            run_id=state.run_id,
            first_id=first_id,
            update=_header_update(state),
            rows=_event_rows(state.workflow_id, state.run_id, events),
            upserts=[e.search_attributes for e in events if e.search_attributes],
        )
        await self._call(self._workers()[0], job)

    async def load(self, workflow_id: str) -> WorkflowState | None:
        """Return the stored state with its history, or ``None``."""
        job = functools.partial(_load_tx, workflow_id=workflow_id)
        return await self._call(self._workers()[1], job)

    async def list(self, filter: WorkflowFilter) -> builtins.list[WorkflowState]:
        """Return the matching states with their histories, newest ``created_at`` first."""
        status = None if filter.status is None else WorkflowStatus(filter.status).value
        job = functools.partial(_list_tx, status=status, limit=filter.limit)
        return await self._call(self._workers()[1], job)

    async def list_workflows(self, query: WorkflowQuery) -> WorkflowPage:
        """Headers matching ``query`` from the index tables (no history is read)."""
        job = functools.partial(visibility.page, query=query)
        return await self._call(self._workers()[1], job)

    async def status_counts(self) -> dict[WorkflowStatus, int]:
        """How many workflows are stored in each status (one indexed count)."""
        job = functools.partial(visibility.counts)
        return await self._call(self._workers()[1], job)

    async def delete(self, workflow_id: str) -> None:
        """Remove the workflow and its history; an unknown id is a no-op."""
        job = functools.partial(_delete_tx, workflow_id=workflow_id)
        await self._call(self._workers()[0], job)

    async def close(self) -> None:
        """Finish the queued writes, stop the threads and close the connections.

        Idempotent.
        """
        if self._closed:
            return
        self._closed = True
        workers = [w for w in {self._writer, self._reader} if w is not None]
        for worker in workers:
            worker.stop()
        if workers:
            await asyncio.to_thread(self._join, workers)

    def _join(self, workers: Sequence[_Worker]) -> None:
        for worker in workers:
            worker.join(_JOIN_TIMEOUT_S)
            if worker.is_alive():
                log.warning(
                    "SQLite store %r: %s did not stop within %gs",
                    self._path,
                    worker.name,
                    _JOIN_TIMEOUT_S,
                )

    async def _call(self, worker: _Worker, run: Callable[[sqlite3.Connection], _T]) -> _T:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        worker.submit(_Job(run, future, loop))
        return await future

    def _workers(self) -> tuple[_Worker, _Worker]:
        if self._closed:
            raise StoreClosedError(f"SQLite store {self._path!r} is closed")
        if self._writer is None or self._reader is None:
            self._writer = _Worker(self._path, "writer", self._open_writer, "BEGIN IMMEDIATE")
            self._reader = (
                self._writer
                if self._single_connection
                else _Worker(self._path, "reader", self._open_reader, "BEGIN")
            )
            self._writer.start()
            if self._reader is not self._writer:
                self._reader.start()
        return self._writer, self._reader

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: the worker issues BEGIN/COMMIT itself.
        return sqlite3.connect(self._path, timeout=_BUSY_TIMEOUT_S, isolation_level=None)

    def _open_writer(self) -> sqlite3.Connection:
        try:
            connection = self._connect()
            try:
                connection.execute("PRAGMA journal_mode = WAL")
                connection.execute(f"PRAGMA synchronous = {self._synchronous}")
                connection.executescript(_SCHEMA)
                _upgrade(connection)
            except BaseException:
                connection.close()
                raise
        except BaseException as exc:
            self._schema_error = exc
            raise
        finally:
            self._schema_ready.set()
        return connection

    def _open_reader(self) -> sqlite3.Connection:
        # The writer creates the schema; reading before that would fail.
        self._schema_ready.wait()
        if self._schema_error is not None:
            raise self._schema_error
        connection = self._connect()
        connection.execute("PRAGMA query_only = ON")
        return connection
