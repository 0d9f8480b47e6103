"""``list_workflows`` on every store: headers without histories, filtered and paged.

SQLite answers from its index tables; every other store is scanned through
``list`` (the fallback). Both must give the same pages. The last tests are
SQLite's own: an older file is upgraded in place, and the embedded executor
finds workflows by the attributes their code set, after a restart too.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from app.workflow import (
    DefaultExecutor,
    InvalidArgumentError,
    Signal,
    WorkflowContext,
    WorkflowOptions,
    WorkflowQuery,
    WorkflowStatus,
)
from app.workflow._store import AppendingStore, WorkflowStore, append_events
from app.workflow._types import EventType, HistoryEvent, WorkflowState
from app.workflow._visibility import list_workflows
from providers.sqlite import SQLiteStore

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


def _state(i: int, wtype: str, attrs: dict[str, Any] | None, memo: Any = None) -> WorkflowState:
    start = T0 + timedelta(minutes=i)
    return WorkflowState(
        workflow_id=f"wf-{i:02}",
        run_id=f"run-{i}",
        workflow_type=wtype,
        history=[
            HistoryEvent(
                id=1,
                type=EventType.WORKFLOW_STARTED,
                timestamp=start,
                search_attributes=attrs,
                memo=memo,
            )
        ],
        created_at=start,
        updated_at=start,
    )


async def _fill(store: WorkflowStore) -> None:
    """Ten workflows; the even ones upsert a stage, wf-00..wf-03 end."""
    for i in range(10):
        attrs = {"customer": f"c{i % 3}", "amount": i * 10, "vip": i % 4 == 0}
        await store.save(_state(i, "pay" if i % 2 else "ship", attrs, {"n": i}))
    for i in range(0, 10, 2):
        state = await store.load(f"wf-{i:02}")
        assert state is not None
        upsert = HistoryEvent(
            id=2,
            type=EventType.SEARCH_ATTRIBUTES_UPSERTED,
            timestamp=state.created_at + timedelta(seconds=1),
            search_attributes={"stage": "packed", "vip": None},
        )
        state.history.append(upsert)
        state.updated_at = upsert.timestamp
        await append_events(store, state, [upsert])
    for i in range(4):
        state = await store.load(f"wf-{i:02}")
        assert state is not None
        end = HistoryEvent(
            id=len(state.history) + 1,
            type=EventType.WORKFLOW_COMPLETED,
            timestamp=T0 + timedelta(hours=1, minutes=i),
            result=i,
        )
        state.history.append(end)
        state.status = WorkflowStatus.COMPLETED
        state.result = i
        state.updated_at = end.timestamp
        await append_events(store, state, [end])


async def _ids(store: WorkflowStore, **query: Any) -> list[str]:
    page = await list_workflows(store, WorkflowQuery(**query))
    return [s.workflow_id for s in page.items]


async def test_filters_by_type_status_times_and_attributes(store: WorkflowStore) -> None:
    await _fill(store)
    assert await _ids(store) == [f"wf-{i:02}" for i in reversed(range(10))]
    assert await _ids(store, workflow_type="pay") == ["wf-09", "wf-07", "wf-05", "wf-03", "wf-01"]
    assert await _ids(store, status="completed") == ["wf-03", "wf-02", "wf-01", "wf-00"]
    assert await _ids(store, status=WorkflowStatus.RUNNING, workflow_type="ship") == [
        "wf-08",
        "wf-06",
        "wf-04",
    ]
    assert await _ids(
        store, started_after=T0 + timedelta(minutes=3), started_before=T0 + timedelta(minutes=6)
    ) == ["wf-05", "wf-04", "wf-03"]
    assert await _ids(store, closed_after=T0 + timedelta(hours=1, minutes=2)) == [
        "wf-03",
        "wf-02",
    ]
    assert await _ids(store, closed_before=T0 + timedelta(hours=2)) == [
        "wf-03",
        "wf-02",
        "wf-01",
        "wf-00",
    ]
    assert await _ids(store, search_attributes={"customer": "c1"}) == ["wf-07", "wf-04", "wf-01"]
    assert await _ids(store, search_attributes={"customer": "c1", "stage": "packed"}) == ["wf-04"]
    assert await _ids(store, search_attributes={"amount": 50}) == ["wf-05"]
    # removed by the upsert on the even ones; the type is part of the value
    assert await _ids(store, search_attributes={"vip": True}) == []
    assert await _ids(store, search_attributes={"amount": 50.0}) == []
    assert await _ids(store, search_attributes={"customer": "nobody"}) == []


async def test_summaries_carry_the_header_without_history(store: WorkflowStore) -> None:
    await _fill(store)
    page = await list_workflows(store, WorkflowQuery(search_attributes={"amount": 20}))
    (s,) = page.items
    assert (s.workflow_id, s.run_id, s.workflow_type) == ("wf-02", "run-2", "ship")
    assert s.status is WorkflowStatus.COMPLETED
    assert s.started_at == T0 + timedelta(minutes=2)
    assert s.closed_at == T0 + timedelta(hours=1, minutes=2)
    assert s.history_length == 3
    assert s.search_attributes == {"customer": "c2", "amount": 20, "stage": "packed"}
    assert s.memo == {"n": 2}
    (running,) = (
        await list_workflows(store, WorkflowQuery(search_attributes={"amount": 90}))
    ).items
    assert running.closed_at is None and running.status is WorkflowStatus.RUNNING
    assert running.search_attributes == {"customer": "c0", "amount": 90, "vip": False}


async def test_pages_follow_their_cursor_to_the_end(store: WorkflowStore) -> None:
    await _fill(store)
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        page = await list_workflows(store, WorkflowQuery(page_size=3, cursor=cursor))
        seen += [s.workflow_id for s in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [f"wf-{i:02}" for i in reversed(range(10))]
    odd = await list_workflows(store, WorkflowQuery(page_size=2, workflow_type="pay"))
    rest = await list_workflows(
        store, WorkflowQuery(page_size=10, workflow_type="pay", cursor=odd.next_cursor)
    )
    assert [s.workflow_id for s in rest.items] == ["wf-05", "wf-03", "wf-01"]
    assert rest.next_cursor is None


async def test_a_new_run_replaces_the_old_runs_header(appending_store: AppendingStore) -> None:
    await _fill(appending_store)
    again = _state(0, "ship", {"customer": "c7"})
    again.run_id = "run-0b"
    await appending_store.save(again)
    assert await _ids(appending_store, search_attributes={"customer": "c0"}) == [
        "wf-09",
        "wf-06",
        "wf-03",
    ]
    (s,) = (
        await list_workflows(appending_store, WorkflowQuery(search_attributes={"customer": "c7"}))
    ).items
    assert (s.run_id, s.status, s.closed_at) == ("run-0b", WorkflowStatus.RUNNING, None)
    await appending_store.delete("wf-00")
    assert await _ids(appending_store, search_attributes={"customer": "c7"}) == []


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"status": "lost"}, "status must be one of"),
        ({"page_size": 0}, "page_size must be an int from 1 to 1000"),
        ({"cursor": "not-a-cursor"}, "is not a cursor"),
        ({"search_attributes": {"bad name": 1}}, "attribute name 'bad name'"),
        ({"search_attributes": {"x": [1]}}, r"must be a str, int, float, bool or datetime"),
        ({"started_after": "yesterday"}, "started_after must be a datetime"),
    ],
)
def test_a_bad_query_fails_at_the_call(query: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        WorkflowQuery(**query)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"search_attributes": {"": 1}}, "attribute name ''"),
        ({"search_attributes": {"a": None}}, r"search_attributes\['a'\] must be"),
        ({"search_attributes": "a=1"}, "must be a mapping"),
        ({"memo": {"a": object()}}, "memo must hold JSON values only"),
        ({"memo": {1: "a"}}, "memo must be a mapping with str keys"),
    ],
)
def test_bad_options_fail_at_the_call(options: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        WorkflowOptions(id="x", **options)


_V1_SCHEMA = """
CREATE TABLE workflows (
    workflow_id TEXT PRIMARY KEY NOT NULL, run_id TEXT NOT NULL, workflow_type TEXT NOT NULL,
    status TEXT NOT NULL, input TEXT NOT NULL, result TEXT NOT NULL, error TEXT, timeout REAL,
    created_at TEXT NOT NULL, created_key INTEGER NOT NULL, updated_at TEXT NOT NULL,
    event_count INTEGER NOT NULL
);
CREATE TABLE events (
    workflow_id TEXT NOT NULL, id INTEGER NOT NULL, run_id TEXT NOT NULL, type TEXT NOT NULL,
    data TEXT NOT NULL, PRIMARY KEY (workflow_id, id)
);
PRAGMA user_version = 1;
"""


async def test_sqlite_upgrades_a_version_1_file_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(_V1_SCHEMA)
    done = (T0 + timedelta(hours=1)).isoformat()
    db.execute(
        "INSERT INTO workflows VALUES ('old', 'r', 't', 'completed', 'null', '1', NULL, NULL, "
        "?, 0, ?, 2)",
        (T0.isoformat(), done),
    )
    db.commit()
    db.close()
    async with SQLiteStore(path) as store:
        (s,) = (await store.list_workflows(WorkflowQuery(status="completed"))).items
        assert s.closed_at == T0 + timedelta(hours=1)
        assert s.search_attributes == {} and s.history_length == 2
        assert (await store.load("old")) is not None
    version = sqlite3.connect(path).execute("PRAGMA user_version").fetchone()
    assert version == (2,)


async def order(ctx: WorkflowContext, n: int) -> int:
    ctx.upsert_search_attributes({"stage": "waiting"})
    assert ctx.search_attributes() == {"customer": f"c{n}", "stage": "waiting"}
    await ctx.receive_signal("ship").receive(timeout=60)
    ctx.upsert_search_attributes({"stage": "shipped", "customer": None})
    return n


async def test_the_executor_finds_workflows_by_what_their_code_set(tmp_path: Path) -> None:
    path = tmp_path / "wf.db"
    async with DefaultExecutor(store=SQLiteStore(path)) as ex:
        for i in range(3):
            await ex.execute(
                order, WorkflowOptions(id=f"o{i}", input=i, search_attributes={"customer": f"c{i}"})
            )
        await ex.signal("o1", Signal("ship"))
        assert await ex.get_handle("o1").result(timeout=30) == 1
        page = await ex.list(WorkflowQuery(search_attributes={"stage": "waiting"}))
        assert [s.workflow_id for s in page.items] == ["o2", "o0"]
    # a restart replays the upserts from history: nothing diverges, nothing is doubled
    async with DefaultExecutor(store=SQLiteStore(path), workflows=[order]) as ex:
        await ex.signal("o0", Signal("ship"))
        assert await ex.get_handle("o0").result(timeout=30) == 0
        shipped = await ex.list(WorkflowQuery(search_attributes={"stage": "shipped"}))
        assert [s.workflow_id for s in shipped.items] == ["o1", "o0"]
        assert all(s.search_attributes == {"stage": "shipped"} for s in shipped.items)
        state = await ex.store.load("o0")
        assert state is not None
        upserts = [e for e in state.history if e.type is EventType.SEARCH_ATTRIBUTES_UPSERTED]
        assert [e.search_attributes for e in upserts] == [
            {"stage": "waiting"},
            {"stage": "shipped", "customer": None},
        ]
