"""The SQLite visibility index: header columns, a search attribute table, and paged queries.

Shared by :class:`providers.sqlite.SQLiteStore` (in the store's own file, in
the same transaction as each write) and the streaming runtime's visibility
consumer (a file of its own, fed from the history topic). Both keep a
``workflows`` table with at least the columns :data:`COLUMNS` reads, and
``search_attributes``: one row per attribute, indexed by name and value, so a
query by attribute never reads a history. Pages are ordered by start time,
newest first, and continue after a cursor, so the first page costs the same
at any number of workflows.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from app.workflow._types import WorkflowStatus
from app.workflow._visibility import (
    SearchValue,
    WorkflowPage,
    WorkflowQuery,
    WorkflowSummary,
    decode_cursor,
    encode_cursor,
    merge_attributes,
    time_key,
)

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS search_attributes (
    workflow_id TEXT NOT NULL,
    name        TEXT NOT NULL,
    kind        TEXT NOT NULL,
    value       NOT NULL,
    created_key INTEGER NOT NULL,
    PRIMARY KEY (workflow_id, name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS search_attributes_by_value
    ON search_attributes (name, kind, value, created_key, workflow_id);
CREATE INDEX IF NOT EXISTS workflows_by_type ON workflows (workflow_type, created_key);
"""
"""The attribute table and indexes (after ``workflows`` exists)."""

HEADER_COLUMNS: Final = (("closed_key", "INTEGER"), ("attributes", "TEXT"), ("memo", "TEXT"))
"""Columns of ``workflows`` the index adds (``add_columns`` upgrades an older file)."""

COLUMNS: Final = (
    "workflow_id, run_id, workflow_type, status, created_at, closed_key, event_count, "
    "attributes, memo"
)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def add_columns(connection: sqlite3.Connection) -> None:
    """Add the index's columns to an older ``workflows`` table (idempotent)."""
    have = {row[1] for row in connection.execute("PRAGMA table_info(workflows)")}
    for name, kind in HEADER_COLUMNS:
        if name not in have:
            connection.execute(f"ALTER TABLE workflows ADD COLUMN {name} {kind}")


def _kind(value: SearchValue) -> str:
    # the type is part of the value: True must not match 1, nor 1 match 1.0
    if isinstance(value, bool):
        return "b"
    if isinstance(value, int):
        return "i"
    if isinstance(value, float):
        return "f"
    return "s"


def dump(value: Mapping[str, Any] | None) -> str | None:
    """A JSON column (None for an empty mapping)."""
    return json.dumps(dict(value), separators=(",", ":")) if value else None


def set_attributes(
    connection: sqlite3.Connection, workflow_id: str, attributes: Mapping[str, SearchValue]
) -> None:
    """Make the stored search attributes of ``workflow_id`` exactly ``attributes``."""
    connection.execute("DELETE FROM search_attributes WHERE workflow_id = ?", (workflow_id,))
    # each row carries its workflow's start time: a query by attribute reads its index
    # newest first and stops after a page, however many workflows have the value
    connection.executemany(
        "INSERT INTO search_attributes (workflow_id, name, kind, value, created_key) "
        "SELECT ?, ?, ?, ?, created_key FROM workflows WHERE workflow_id = ?",
        [
            (workflow_id, name, _kind(value), value, workflow_id)
            for name, value in attributes.items()
        ],
    )
    connection.execute(
        "UPDATE workflows SET attributes = ? WHERE workflow_id = ?",
        (dump(attributes), workflow_id),
    )


def upsert_attributes(
    connection: sqlite3.Connection,
    workflow_id: str,
    changes: Sequence[Mapping[str, SearchValue | None]],
) -> None:
    """Apply upserts (in order) to the stored search attributes of ``workflow_id``."""
    row = connection.execute(
        "SELECT attributes FROM workflows WHERE workflow_id = ?", (workflow_id,)
    ).fetchone()
    current: dict[str, SearchValue] = json.loads(row[0]) if row and row[0] else {}
    for change in changes:
        merge_attributes(current, change)
    set_attributes(connection, workflow_id, current)


def delete(connection: sqlite3.Connection, workflow_id: str) -> None:
    """Forget the attributes of ``workflow_id`` (its header row is the caller's)."""
    connection.execute("DELETE FROM search_attributes WHERE workflow_id = ?", (workflow_id,))


def _moment(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _summary(row: tuple[Any, ...]) -> WorkflowSummary:
    wid, run_id, wtype, status, created, closed_key, length, attributes, memo = row
    return WorkflowSummary(
        workflow_id=wid,
        run_id=run_id,
        workflow_type=wtype,
        status=WorkflowStatus(status),
        started_at=_moment(created),
        closed_at=None if closed_key is None else _EPOCH + timedelta(microseconds=closed_key),
        history_length=length,
        search_attributes=json.loads(attributes) if attributes else {},
        memo=json.loads(memo) if memo else {},
    )


def page(connection: sqlite3.Connection, query: WorkflowQuery) -> WorkflowPage:
    """The page of ``query``: one indexed statement, at most ``page_size + 1`` rows read out.

    With a search attribute, the attribute's index (in start order) drives the
    scan and the header is joined by key; without, the header table's own.
    """
    where: list[str] = []
    params: list[Any] = []
    attributes = [(name, _kind(value), value) for name, value in query.search_attributes.items()]
    source = "workflows w"
    key, wid_column = "w.created_key", "w.workflow_id"
    if attributes:
        first = attributes.pop(0)
        source = "search_attributes a JOIN workflows w ON w.workflow_id = a.workflow_id"
        key, wid_column = "a.created_key", "a.workflow_id"
        where.append("a.name = ? AND a.kind = ? AND a.value = ?")
        params += first
    for attribute in attributes:
        where.append(
            "EXISTS (SELECT 1 FROM search_attributes b WHERE b.workflow_id = w.workflow_id "
            "AND b.name = ? AND b.kind = ? AND b.value = ?)"
        )
        params += attribute
    if query.workflow_type is not None:
        where.append("w.workflow_type = ?")
        params.append(query.workflow_type)
    if query.status is not None:
        where.append("w.status = ?")
        params.append(WorkflowStatus(query.status).value)
    for column, bound, op in (
        (key, query.started_after, ">="),
        (key, query.started_before, "<"),
        ("w.closed_key", query.closed_after, ">="),
        ("w.closed_key", query.closed_before, "<"),
    ):
        if bound is not None:
            where.append(f"{column} {op} ?")
            params.append(time_key(bound))
    if query.cursor is not None:
        at, wid = decode_cursor(query.cursor)
        where.append(f"({key} < ? OR ({key} = ? AND {wid_column} < ?))")
        params += [at, at, wid]
    columns = ", ".join(f"w.{c.strip()}" for c in COLUMNS.split(","))
    sql = f"SELECT {columns} FROM {source}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY {key} DESC, {wid_column} DESC LIMIT ?"
    rows = connection.execute(sql, [*params, query.page_size + 1]).fetchall()
    items = [_summary(row) for row in rows[: query.page_size]]
    more = len(rows) > query.page_size
    return WorkflowPage(items, encode_cursor(items[-1]) if more else None)


def counts(connection: sqlite3.Connection) -> dict[WorkflowStatus, int]:
    """How many workflows have each status."""
    rows = connection.execute("SELECT status, COUNT(*) FROM workflows GROUP BY status")
    return {WorkflowStatus(status): count for status, count in rows}
