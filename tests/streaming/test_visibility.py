"""Visibility on the streaming runtime: a SQLite index fed by the history topic.

Workflows started with search attributes and changing them as they run are
found by ``KafkaExecutor.list`` (the index in memory) and by a file index that
goes on from its stored offsets after a restart, without applying a record
twice. A continued-as-new workflow keeps its attributes; records of an older
run, and duplicates, change nothing.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from app.streaming import KafkaExecutor, StreamingWorker, VisibilityIndex
from app.streaming._visibility import _SCHEMA, apply_event
from app.streaming.admin import ensure_topics
from app.streaming.settings import test_settings
from app.workflow import (
    EventType,
    HistoryEvent,
    InvalidArgumentError,
    Signal,
    WorkflowContext,
    WorkflowOptions,
    WorkflowQuery,
    WorkflowStatus,
)
from providers import _sqlite_visibility as index_sql

STOP_BOUND = 30.0
WAIT = 60.0


async def order(ctx: WorkflowContext, n: int) -> int:
    ctx.upsert_search_attributes({"stage": "waiting", "n": n})
    await ctx.receive_signal("ship").receive()
    ctx.upsert_search_attributes({"stage": "shipped", "rush": None})
    return n


async def looping(ctx: WorkflowContext, left: int) -> int:
    if left:
        ctx.continue_as_new(left - 1)
    return left


async def test_list_finds_workflows_by_attributes_status_and_type(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    settings = test_settings(kafka_bootstrap, app_id=f"vis-{uuid.uuid4().hex[:8]}")
    await ensure_topics(settings)
    worker = StreamingWorker(settings, [order, looping], [])
    await worker.start()
    before = datetime.now(UTC) - timedelta(seconds=1)
    try:
        async with KafkaExecutor(settings=settings) as ex:
            handles = [
                await ex.execute(
                    order,
                    WorkflowOptions(
                        id=f"o{i}",
                        input=i,
                        search_attributes={"customer": f"c{i % 2}", "rush": i == 0},
                        memo={"note": f"order {i}"},
                    ),
                )
                for i in range(5)
            ]
            chain = await ex.execute(
                looping, WorkflowOptions(id="loop", input=2, search_attributes={"customer": "c9"})
            )
            assert await chain.result(timeout=WAIT) == 0
            for i in (1, 3):
                await ex.signal(f"o{i}", Signal("ship"))
                assert await handles[i].result(timeout=WAIT) == i

            page = await ex.list(WorkflowQuery(search_attributes={"customer": "c1"}))
            assert [s.workflow_id for s in page.items] == ["o3", "o1"]
            shipped = page.items[0]
            assert shipped.status is WorkflowStatus.COMPLETED
            assert shipped.search_attributes == {"customer": "c1", "stage": "shipped", "n": 3}
            assert shipped.memo == {"note": "order 3"}
            assert shipped.closed_at is not None and shipped.closed_at >= shipped.started_at
            assert shipped.history_length > 4

            waiting = await ex.list(WorkflowQuery(search_attributes={"stage": "waiting"}))
            assert sorted(s.workflow_id for s in waiting.items) == ["o0", "o2", "o4"]
            rush = await ex.list(WorkflowQuery(search_attributes={"rush": True}))
            assert [s.workflow_id for s in rush.items] == ["o0"]
            # the type is part of the value: 1 is not True
            assert (await ex.list(WorkflowQuery(search_attributes={"rush": 1}))).items == []

            running = await ex.list(WorkflowQuery(status="running", workflow_type="order"))
            assert sorted(s.workflow_id for s in running.items) == ["o0", "o2", "o4"]
            by_type = await ex.list(WorkflowQuery(workflow_type="looping"))
            (loop,) = by_type.items
            # the last run of the chain, with the attributes the first run was given
            last, _ = await ex._state("loop", None, history=False)
            assert loop.run_id == last.run_id != chain.run_id
            assert loop.search_attributes == {"customer": "c9"}
            assert loop.status is WorkflowStatus.COMPLETED

            first = await ex.list(WorkflowQuery(page_size=4, started_after=before))
            assert len(first.items) == 4 and first.next_cursor is not None
            rest = await ex.list(
                WorkflowQuery(page_size=4, started_after=before, cursor=first.next_cursor)
            )
            assert rest.next_cursor is None
            ids = [s.workflow_id for s in first.items + rest.items]
            assert sorted(ids) == sorted(["o0", "o1", "o2", "o3", "o4", "loop"])
            starts = [s.started_at for s in first.items + rest.items]
            assert starts == sorted(starts, reverse=True)

            # a file index, read once, then restarted: it goes on from its offsets
            path = str(tmp_path / "index.db")
            async with VisibilityIndex(settings, path) as index:
                applied = await index.catch_up(WAIT)
                assert applied > 0
                assert len((await index.list(WorkflowQuery(status="running"))).items) == 3
            await ex.signal("o0", Signal("ship"))
            assert await handles[0].result(timeout=WAIT) == 0
            async with VisibilityIndex(settings, path) as index:
                again = await index.catch_up(WAIT)
                assert 0 < again < applied  # only what came after
                done = await index.list(WorkflowQuery(search_attributes={"customer": "c0"}))
                statuses = {s.workflow_id: s.status for s in done.items}
                assert statuses == {
                    "o0": WorkflowStatus.COMPLETED,
                    "o2": WorkflowStatus.RUNNING,
                    "o4": WorkflowStatus.RUNNING,
                }
                counts = await index.counts()
                assert counts[WorkflowStatus.RUNNING] == 2
    finally:
        await asyncio.wait_for(worker.stop(), STOP_BOUND)


async def test_catch_up_goes_past_an_empty_first_fetch(
    kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = test_settings(kafka_bootstrap, app_id=f"vis-{uuid.uuid4().hex[:8]}")
    await ensure_topics(settings)
    worker = StreamingWorker(settings, [looping], [])
    await worker.start()
    try:
        async with KafkaExecutor(settings=settings) as ex:
            handle = await ex.execute(looping, WorkflowOptions(id="one", input=0))
            assert await handle.result(timeout=WAIT) == 0
        async with VisibilityIndex(settings) as index:
            polls: list[float] = []
            real_poll = index.poll

            async def poll(timeout: float = 1.0) -> int:
                # the first fetch comes back before the consumer has reached anything,
                # as it can on a loaded machine
                polls.append(timeout)
                return await real_poll(timeout if len(polls) > 1 else 0.0)

            monkeypatch.setattr(index, "poll", poll)
            assert await index.catch_up(WAIT) > 0
            page = await index.list(WorkflowQuery(workflow_type="looping"))
            assert [(s.workflow_id, s.status) for s in page.items] == [
                ("one", WorkflowStatus.COMPLETED)
            ]
            assert len(polls) > 1
    finally:
        await asyncio.wait_for(worker.stop(), STOP_BOUND)


def test_duplicates_and_older_runs_change_nothing() -> None:
    db = sqlite3.connect(":memory:", isolation_level=None)
    db.executescript(_SCHEMA + index_sql.SCHEMA)
    now = datetime(2026, 1, 1, tzinfo=UTC)

    def event(i: int, kind: EventType, **fields: object) -> HistoryEvent:
        return HistoryEvent(id=i, type=kind, timestamp=now + timedelta(seconds=i), **fields)  # type: ignore[arg-type]

    started = event(1, EventType.WORKFLOW_STARTED, search_attributes={"a": 1})
    upsert = event(2, EventType.SEARCH_ATTRIBUTES_UPSERTED, search_attributes={"b": "x"})
    for decoded in [
        ("w", "r1", "t", started),
        ("w", "r1", "t", upsert),
        ("w", "r1", "t", started),  # redelivered
        ("w", "r1", "t", upsert),
    ]:
        apply_event(db, decoded)
    row = db.execute("SELECT run_id, event_count, attributes FROM workflows").fetchone()
    assert row == ("r1", 2, '{"a":1,"b":"x"}')
    apply_event(db, ("w", "r2", "t", event(1, EventType.WORKFLOW_STARTED)))
    apply_event(db, ("w", "r1", "t", event(3, EventType.WORKFLOW_COMPLETED)))  # the old run's
    row = db.execute("SELECT run_id, event_count, status, attributes FROM workflows").fetchone()
    assert row == ("r2", 1, "running", None)
    assert db.execute("SELECT COUNT(*) FROM search_attributes").fetchone() == (0,)


def test_the_executor_checks_its_index_option(kafka_bootstrap: str) -> None:
    settings = test_settings(kafka_bootstrap)
    with pytest.raises(InvalidArgumentError, match="visibility"):
        KafkaExecutor(settings=settings, visibility="")
