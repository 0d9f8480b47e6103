"""The contract every workflow store keeps; see ``conftest.py`` to add a provider.

The last section holds checks of SQLiteStore's own options and lifecycle.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from app.workflow import StoreClosedError as AnyStoreClosedError
from app.workflow._errors import InvalidArgumentError
from app.workflow._store import AppendingStore, StoreConflictError, WorkflowStore
from app.workflow._types import (
    EventType,
    FailureInfo,
    HistoryEvent,
    WorkflowFilter,
    WorkflowState,
    WorkflowStatus,
)
from providers import sqlite as sqlite_provider
from providers.sqlite import SQLiteStore, StoreClosedError
from tests.stores.conftest import DURABLE, FACTORIES

Reopen = Callable[[], Awaitable[WorkflowStore]]

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
IST = timezone(timedelta(hours=5, minutes=30))


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def event(event_id: int, type: EventType = EventType.TIMER_FIRED, **fields: Any) -> HistoryEvent:
    fields.setdefault("timestamp", at(event_id))
    return HistoryEvent(id=event_id, type=type, **fields)


def make_state(
    workflow_id: str = "wf-1",
    run_id: str = "run-1",
    *,
    events: int = 1,
    created_at: datetime = T0,
    **fields: Any,
) -> WorkflowState:
    """A state whose history is workflow_started plus ``events - 1`` timer events."""
    history = [event(1, EventType.WORKFLOW_STARTED, input={"n": 1})]
    history += [event(i, step=i) for i in range(2, events + 1)]
    fields.setdefault("input", {"n": 1})
    fields.setdefault("updated_at", created_at)
    return WorkflowState(
        workflow_id=workflow_id,
        run_id=run_id,
        workflow_type="wf",
        history=history,
        created_at=created_at,
        **fields,
    )


def advance(state: WorkflowState, count: int = 1, **payload: Any) -> list[HistoryEvent]:
    """Add ``count`` events with the next ids to ``state.history`` and return them."""
    first = len(state.history) + 1
    new = [
        event(i, EventType.ACTIVITY_COMPLETED, result={"i": i, **payload}, step=i)
        for i in range(first, first + count)
    ]
    state.history.extend(new)
    state.updated_at = new[-1].timestamp
    return new


def snapshot(state: WorkflowState | None) -> str | None:
    """Every field as JSON text: tells datetime offsets and 1 from 1.0 apart."""
    return None if state is None else state.model_dump_json()


async def ids_of(store: WorkflowStore, workflow_id: str) -> list[int]:
    loaded = await store.load(workflow_id)
    assert loaded is not None
    return [e.id for e in loaded.history]


# -- save / load ----------------------------------------------------------------


async def test_save_load_round_trips_every_field(store: WorkflowStore) -> None:
    failure = FailureInfo(
        type="ValueError",
        message="card declined ✗",
        non_retryable=True,
        activity_name="charge",
        attempts=3,
        timeout=1.5,
        stack='Traceback (most recent call last):\n  File "x.py"',
        cause=FailureInfo(type="KeyError", message="'card'"),
    )
    payload = {
        "items": [1, 2.5, "x", None, True, {"deep": {"deeper": [[], {}]}}],
        "note": "naïve ☃",
    }
    history = [
        event(1, EventType.WORKFLOW_STARTED, input=payload),
        event(2, EventType.ACTIVITY_STARTED, activity_name="charge", input=[1, {"a": []}], step=1),
        event(
            3,
            EventType.ACTIVITY_FAILED,
            activity_name="charge",
            error="card declined ✗",
            failure=failure,
            duration=0.25,
            step=1,
            attempt=3,
        ),
        event(
            4,
            EventType.SIGNAL_RECEIVED,
            timestamp=at(4).astimezone(IST),
            signal_name="approve",
            signal_payload={"by": "Zoë"},
            sender_id="ops-1",
        ),
        event(5, EventType.ACTIVITY_COMPLETED, activity_name="ship", result="Z1", step=2),
        event(6, EventType.WORKFLOW_FAILED, error="💥", failure=failure),
    ]
    state = WorkflowState(
        workflow_id="order-ü-1",
        run_id="run-1",
        workflow_type="order",
        status=WorkflowStatus.FAILED,
        input=payload,
        result={"partial": [1, {"deep": None}], "ratio": 0.1},
        error="💥 workflow failed: card declined ✗",
        timeout=30.5,
        history=history,
        created_at=T0,
        updated_at=at(6).astimezone(IST),
    )

    await store.save(state)
    loaded = await store.load(state.workflow_id)

    assert loaded == state
    assert snapshot(loaded) == snapshot(state)
    assert loaded is not None
    assert loaded.created_at.utcoffset() == timedelta(0)
    assert loaded.updated_at.utcoffset() == timedelta(hours=5, minutes=30)
    assert loaded.history[3].timestamp.utcoffset() == timedelta(hours=5, minutes=30)
    assert loaded.history[2].failure == failure


async def test_save_load_round_trips_none_values_and_empty_history(store: WorkflowStore) -> None:
    state = WorkflowState(workflow_id="bare", run_id="r", created_at=T0, updated_at=T0)

    await store.save(state)
    loaded = await store.load("bare")

    assert loaded is not None
    assert snapshot(loaded) == snapshot(state)
    assert loaded.result is None and loaded.input is None and loaded.history == []


async def test_load_unknown_workflow_returns_none(store: WorkflowStore) -> None:
    await store.save(make_state("known"))

    assert await store.load("unknown") is None


async def test_save_of_a_new_run_replaces_the_old_run_and_its_history(
    appending_store: AppendingStore,
) -> None:
    old = make_state("wf", "run-1", events=5, status=WorkflowStatus.FAILED, error="boom")
    new = make_state("wf", "run-2", events=1, input={"n": 2}, created_at=at(100))
    await appending_store.save(old)

    await appending_store.save(new)

    assert snapshot(await appending_store.load("wf")) == snapshot(new)
    assert [s.run_id for s in await appending_store.list(WorkflowFilter())] == ["run-2"]
    with pytest.raises(StoreConflictError):
        await appending_store.append(old, advance(old))


async def test_save_of_the_same_run_replaces_its_history(appending_store: AppendingStore) -> None:
    await appending_store.save(make_state(events=4))
    shorter = make_state(events=2)

    await appending_store.save(shorter)
    await appending_store.append(shorter, advance(shorter))

    assert await ids_of(appending_store, "wf-1") == [1, 2, 3]
    assert snapshot(await appending_store.load("wf-1")) == snapshot(shorter)


# -- append ---------------------------------------------------------------------


async def test_append_adds_events_and_updates_header_fields(
    appending_store: AppendingStore,
) -> None:
    state = make_state(events=1)
    await appending_store.save(state)
    new = advance(state, 2, note="ünïcode")
    state.status = WorkflowStatus.COMPLETED
    state.result = {"total": 3, "lines": [{"sku": "A", "qty": 2}]}
    state.error = "recovered from ✗"
    state.updated_at = at(99).astimezone(IST)

    await appending_store.append(state, new)

    loaded = await appending_store.load("wf-1")
    assert loaded is not None
    assert snapshot(loaded) == snapshot(state)
    assert loaded.created_at == T0
    assert loaded.updated_at.utcoffset() == timedelta(hours=5, minutes=30)


async def test_append_leaves_the_run_identity_alone(appending_store: AppendingStore) -> None:
    # type, input and timeout are fixed when a run is saved; append never rewrites them
    state = make_state(events=1)
    await appending_store.save(state)
    original = (state.workflow_type, state.input, state.timeout)
    state.workflow_type, state.input, state.timeout = "other", {"patched": True}, 12.0
    await appending_store.append(state, advance(state))
    loaded = await appending_store.load("wf-1")
    assert loaded is not None
    assert (loaded.workflow_type, loaded.input, loaded.timeout) == original


async def test_append_after_append_keeps_ids_consecutive(appending_store: AppendingStore) -> None:
    state = make_state(events=1)
    await appending_store.save(state)

    for count in (1, 2, 3):
        await appending_store.append(state, advance(state, count))

    assert await ids_of(appending_store, "wf-1") == [1, 2, 3, 4, 5, 6, 7]
    assert snapshot(await appending_store.load("wf-1")) == snapshot(state)


async def test_append_of_no_events_updates_only_the_header(
    appending_store: AppendingStore,
) -> None:
    state = make_state(events=2)
    await appending_store.save(state)
    state.status = WorkflowStatus.CANCELED
    state.updated_at = at(50)

    await appending_store.append(state, [])

    assert snapshot(await appending_store.load("wf-1")) == snapshot(state)


async def test_append_with_a_stale_run_id_conflicts_and_writes_nothing(
    appending_store: AppendingStore,
) -> None:
    stale = make_state("wf", "run-old", events=2)
    await appending_store.save(stale)
    current = make_state("wf", "run-new", events=2, created_at=at(10))
    await appending_store.save(current)
    new = advance(stale)
    stale.status = WorkflowStatus.COMPLETED

    with pytest.raises(StoreConflictError) as raised:
        await appending_store.append(stale, new)

    assert "run-old" in str(raised.value) and "run-new" in str(raised.value)
    assert snapshot(await appending_store.load("wf")) == snapshot(current)


async def test_append_to_an_unknown_workflow_conflicts(appending_store: AppendingStore) -> None:
    state = make_state("ghost", events=1)

    with pytest.raises(StoreConflictError, match="ghost"):
        await appending_store.append(state, state.history)

    assert await appending_store.load("ghost") is None
    assert await appending_store.list(WorkflowFilter()) == []


@pytest.mark.parametrize(
    "ids",
    [[3], [2, 3, 4], [4, 4], [5], [4, 6], [1]],
    ids=["repeats-last", "overlaps", "repeats-within", "gap", "gap-within", "restarts"],
)
async def test_append_with_duplicate_or_non_consecutive_ids_conflicts_and_writes_nothing(
    appending_store: AppendingStore, ids: list[int]
) -> None:
    state = make_state(events=3)
    await appending_store.save(state)
    before = snapshot(state)
    changed = state.model_copy(deep=True)
    changed.status = WorkflowStatus.COMPLETED
    changed.result = "should not be stored"

    with pytest.raises(StoreConflictError):
        await appending_store.append(changed, [event(i, result="dup") for i in ids])

    assert snapshot(await appending_store.load("wf-1")) == before


async def test_racing_appends_of_the_same_event_id_store_exactly_one(
    appending_store: AppendingStore,
) -> None:
    state = make_state(events=1)
    await appending_store.save(state)
    first, second = state.model_copy(deep=True), state.model_copy(deep=True)
    first_events, second_events = advance(first, winner="a"), advance(second, winner="b")

    outcomes = await asyncio.gather(
        appending_store.append(first, first_events),
        appending_store.append(second, second_events),
        return_exceptions=True,
    )

    conflicts = [o for o in outcomes if isinstance(o, StoreConflictError)]
    assert len(conflicts) == 1 and outcomes.count(None) == 1
    winner = first if outcomes[0] is None else second
    assert snapshot(await appending_store.load("wf-1")) == snapshot(winner)


async def test_a_conflicting_append_does_not_disturb_concurrent_ones(
    appending_store: AppendingStore,
) -> None:
    states = [make_state(f"wf-{i}", events=1) for i in range(10)]
    stale = make_state("wf-stale", "run-old")
    await appending_store.save(make_state("wf-stale", "run-new"))
    for state in states:
        await appending_store.save(state)
    appends = [appending_store.append(state, advance(state)) for state in states]

    outcomes = await asyncio.gather(
        *appends[:5],
        appending_store.append(stale, advance(stale)),
        *appends[5:],
        return_exceptions=True,
    )

    assert isinstance(outcomes[5], StoreConflictError)
    assert outcomes[:5] + outcomes[6:] == [None] * 10
    for state in states:
        assert snapshot(await appending_store.load(state.workflow_id)) == snapshot(state)


# -- list -----------------------------------------------------------------------


async def test_list_filters_by_status(store: WorkflowStore) -> None:
    statuses = [WorkflowStatus.RUNNING] * 3 + [WorkflowStatus.COMPLETED] * 2
    statuses += [WorkflowStatus.FAILED]
    for i, status in enumerate(statuses):
        await store.save(make_state(f"wf-{i}", events=2, status=status, created_at=at(i)))

    completed = await store.list(WorkflowFilter(status=WorkflowStatus.COMPLETED))
    canceled = await store.list(WorkflowFilter(status=WorkflowStatus.CANCELED))

    assert [s.workflow_id for s in completed] == ["wf-4", "wf-3"]
    assert all(s.status is WorkflowStatus.COMPLETED for s in completed)
    assert [len(s.history) for s in completed] == [2, 2]
    assert canceled == []


async def test_list_is_newest_first_with_ties_broken_by_workflow_id(store: WorkflowStore) -> None:
    # (id, created_at): the IST one is an hour after T0 although its text sorts last.
    created = [
        ("b", at(0)),
        ("late", at(7200)),
        ("a", at(0)),
        ("ist", at(3600).astimezone(IST)),
        ("c", at(0)),
    ]
    for workflow_id, created_at in created:
        await store.save(make_state(workflow_id, created_at=created_at))

    listed = await store.list(WorkflowFilter())

    assert [s.workflow_id for s in listed] == ["late", "ist", "a", "b", "c"]
    assert snapshot(listed[1]) == snapshot(await store.load("ist"))


async def test_list_limit_keeps_the_newest_and_zero_means_all(store: WorkflowStore) -> None:
    for i in range(6):
        status = WorkflowStatus.RUNNING if i % 2 else WorkflowStatus.COMPLETED
        await store.save(make_state(f"wf-{i}", status=status, created_at=at(i)))

    two = await store.list(WorkflowFilter(limit=2))
    everything = await store.list(WorkflowFilter(limit=0))
    too_many = await store.list(WorkflowFilter(limit=100))
    running = await store.list(WorkflowFilter(status=WorkflowStatus.RUNNING, limit=2))

    assert [s.workflow_id for s in two] == ["wf-5", "wf-4"]
    assert [s.workflow_id for s in everything] == [f"wf-{i}" for i in range(5, -1, -1)]
    assert [s.workflow_id for s in too_many] == [s.workflow_id for s in everything]
    assert [s.workflow_id for s in running] == ["wf-5", "wf-3"]


# -- delete ---------------------------------------------------------------------


async def test_delete_removes_the_workflow_from_load_and_list(
    appending_store: AppendingStore,
) -> None:
    gone = make_state("gone", events=3)
    kept = make_state("kept", events=2, created_at=at(1))
    await appending_store.save(gone)
    await appending_store.save(kept)

    await appending_store.delete("gone")

    assert await appending_store.load("gone") is None
    assert [s.workflow_id for s in await appending_store.list(WorkflowFilter())] == ["kept"]
    assert snapshot(await appending_store.load("kept")) == snapshot(kept)
    with pytest.raises(StoreConflictError):
        await appending_store.append(gone, advance(gone))


async def test_delete_of_an_unknown_workflow_is_a_no_op(store: WorkflowStore) -> None:
    kept = make_state("kept", events=2)
    await store.save(kept)

    await store.delete("never-saved")
    await store.delete("never-saved")

    assert snapshot(await store.load("kept")) == snapshot(kept)


async def test_save_after_delete_starts_afresh(store: WorkflowStore) -> None:
    await store.save(make_state(events=5))
    await store.delete("wf-1")
    fresh = make_state(run_id="run-2", events=1)

    await store.save(fresh)

    assert snapshot(await store.load("wf-1")) == snapshot(fresh)


# -- copies ---------------------------------------------------------------------


async def test_mutating_a_saved_state_does_not_change_the_store(store: WorkflowStore) -> None:
    state = make_state(events=2, result={"items": [1]})
    await store.save(state)
    expected = snapshot(state)

    state.status = WorkflowStatus.FAILED
    state.result["items"].append(2)
    state.input["n"] = 99
    state.history[0].input["n"] = 99
    state.history.append(event(3))

    assert snapshot(await store.load("wf-1")) == expected


async def test_mutating_a_loaded_or_listed_state_does_not_change_the_store(
    store: WorkflowStore,
) -> None:
    await store.save(make_state(events=2, result={"items": [1]}))
    expected = snapshot(await store.load("wf-1"))

    loaded = await store.load("wf-1")
    assert loaded is not None
    loaded.result["items"].append(2)
    loaded.history[0].input["n"] = 99
    loaded.history.clear()
    (listed,) = await store.list(WorkflowFilter())
    listed.input["n"] = 99
    listed.history[0].input["n"] = 42

    assert snapshot(await store.load("wf-1")) == expected


async def test_mutating_appended_events_does_not_change_the_store(
    appending_store: AppendingStore,
) -> None:
    state = make_state(events=1)
    await appending_store.save(state)
    new = advance(state, 2, tags=["a"])
    state.result = {"items": [1]}
    await appending_store.append(state, new)
    expected = snapshot(state)

    new[0].result["tags"].append("b")
    state.result["items"].append(2)
    state.history.pop()

    assert snapshot(await appending_store.load("wf-1")) == expected


# -- concurrency and size ---------------------------------------------------------


async def test_concurrent_appends_to_fifty_workflows_all_land(
    appending_store: AppendingStore,
) -> None:
    states = [make_state(f"wf-{i:02}", events=1, created_at=at(i)) for i in range(50)]
    for state in states:
        await appending_store.save(state)

    async def run(state: WorkflowState) -> None:
        for _ in range(4):
            await appending_store.append(state, advance(state, 2))
        state.status = WorkflowStatus.COMPLETED
        await appending_store.append(state, advance(state))

    await asyncio.gather(*(run(state) for state in states))

    for state in states:
        assert await ids_of(appending_store, state.workflow_id) == list(range(1, 11))
        assert snapshot(await appending_store.load(state.workflow_id)) == snapshot(state)
    completed = await appending_store.list(WorkflowFilter(status=WorkflowStatus.COMPLETED))
    assert len(completed) == 50


async def test_a_5000_event_history_round_trips(appending_store: AppendingStore) -> None:
    state = make_state(events=4000)
    await appending_store.save(state)
    for _ in range(10):
        await appending_store.append(state, advance(state, 100))

    loaded = await appending_store.load("wf-1")

    assert loaded is not None
    assert len(loaded.history) == 5000
    assert [e.id for e in loaded.history] == list(range(1, 5001))
    assert snapshot(loaded) == snapshot(state)


# -- durability -----------------------------------------------------------------


@pytest.mark.parametrize(
    "store_factory",
    [name for name, factory in FACTORIES.items() if DURABLE in factory.capabilities],
    indirect=True,
)
async def test_every_call_on_a_closed_store_raises_store_closed_error(
    store: WorkflowStore, reopen: Reopen
) -> None:
    """One error type for a closed store, whatever the provider: callers catch it once."""
    state = make_state("closed-1", events=2)
    await store.save(state)
    await reopen()  # closes ``store``
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: store.save(state),
        lambda: store.load("closed-1"),
        lambda: store.list(WorkflowFilter()),
        lambda: store.delete("closed-1"),
    ]
    if isinstance(store, AppendingStore):
        calls.append(lambda: store.append(state, advance(state)))
    for call in calls:
        with pytest.raises(AnyStoreClosedError, match="closed"):
            await call()


async def test_reopening_sees_everything(appending_store: AppendingStore, reopen: Reopen) -> None:
    states = [make_state(f"wf-{i}", events=3, created_at=at(i)) for i in range(3)]
    for state in states:
        await appending_store.save(state)
    states[0].status = WorkflowStatus.COMPLETED
    states[0].result = {"done": "✓"}
    await appending_store.append(states[0], advance(states[0], 2))
    await appending_store.delete("wf-2")

    reopened = await reopen()

    assert snapshot(await reopened.load("wf-0")) == snapshot(states[0])
    assert snapshot(await reopened.load("wf-1")) == snapshot(states[1])
    assert await reopened.load("wf-2") is None
    assert [s.workflow_id for s in await reopened.list(WorkflowFilter())] == ["wf-1", "wf-0"]
    assert isinstance(reopened, AppendingStore)
    with pytest.raises(StoreConflictError):
        await reopened.append(states[1], [event(3)])
    await reopened.append(states[1], advance(states[1]))
    assert await ids_of(reopened, "wf-1") == [1, 2, 3, 4]


# -- SQLiteStore's own options and lifecycle --------------------------------------


@pytest.mark.parametrize("value", ["OFF", "fast", "", None, 1])
def test_sqlite_rejects_an_invalid_synchronous_value(tmp_path: Path, value: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="synchronous"):
        SQLiteStore(tmp_path / "x.db", synchronous=value)

    assert not (tmp_path / "x.db").exists()


async def test_sqlite_accepts_synchronous_modes_in_any_case(tmp_path: Path) -> None:
    async with SQLiteStore(tmp_path / "x.db", synchronous="normal") as store:
        await store.save(make_state())

        assert store.synchronous == "NORMAL"
        assert await store.load("wf-1") is not None


async def test_sqlite_default_path_honours_workflows_db(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "from-env.db"
    monkeypatch.setenv("WORKFLOWS_DB", str(target))
    store = SQLiteStore()
    monkeypatch.setenv("WORKFLOWS_DB", str(tmp_path / "later.db"))  # resolved at construction

    async with store:
        await store.save(make_state())

    assert store.path == str(target)
    assert target.exists() and not (tmp_path / "later.db").exists()
    with sqlite3.connect(target) as check:
        assert check.execute("SELECT workflow_id FROM workflows").fetchall() == [("wf-1",)]


def test_sqlite_default_path_without_workflows_db(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORKFLOWS_DB", raising=False)

    assert SQLiteStore().path == "workflows.db"


async def test_sqlite_uses_wal_and_resolved_writes_are_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "wal.db"
    async with SQLiteStore(path) as store:
        await store.save(make_state(events=2))
        state = make_state(events=2)
        await store.append(state, advance(state))

        # Another connection, as another process would: no close or flush first.
        with sqlite3.connect(path) as check:
            assert check.execute("PRAGMA journal_mode").fetchone() == ("wal",)
            rows = check.execute("SELECT id FROM events WHERE workflow_id = 'wf-1' ORDER BY id")
            assert rows.fetchall() == [(1,), (2,), (3,)]


async def test_sqlite_calls_after_close_raise_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "closed.db"
    store = SQLiteStore(path)
    await store.save(make_state())
    await store.close()
    await store.close()

    with pytest.raises(StoreClosedError, match=re.escape(str(path))) as raised:
        await store.load("wf-1")
    with pytest.raises(StoreClosedError, match=re.escape(str(path))):
        await store.save(make_state())
    assert isinstance(raised.value, RuntimeError)


async def test_sqlite_close_finishes_queued_writes(tmp_path: Path) -> None:
    path = tmp_path / "drain.db"
    store = SQLiteStore(path)
    states = [make_state(f"wf-{i}") for i in range(20)]

    # gather starts its tasks in order: every save is queued before close runs.
    await asyncio.gather(*(store.save(state) for state in states), store.close())

    async with SQLiteStore(path) as reopened:
        assert len(await reopened.list(WorkflowFilter())) == 20


async def test_sqlite_unopenable_file_fails_calls_instead_of_hanging(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path)  # a directory cannot be opened as a database

    with pytest.raises(StoreClosedError, match="writer") as raised:
        await store.save(make_state())
    with pytest.raises(StoreClosedError):
        await store.load("wf-1")
    await store.close()

    assert isinstance(raised.value.__cause__, sqlite3.Error)


async def test_sqlite_writer_crash_fails_pending_and_later_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Crash(BaseException):
        """Escapes the per-write error handling, as a bug in the writer would."""

    real_save = sqlite_provider._save_tx

    def crashing_save(connection: sqlite3.Connection, header: Any, rows: Any) -> None:
        if header[0] == "crash":
            raise Crash("simulated")
        real_save(connection, header, rows)

    async with SQLiteStore(tmp_path / "crash.db") as store:
        await store.save(make_state("before"))
        monkeypatch.setattr(sqlite_provider, "_save_tx", crashing_save)

        outcomes = await asyncio.gather(
            store.save(make_state("queued-1")),
            store.save(make_state("crash")),
            store.save(make_state("queued-2")),
            return_exceptions=True,
        )
        with pytest.raises(StoreClosedError, match="writer thread stopped"):
            await store.save(make_state("later"))

        assert all(isinstance(o, StoreClosedError) for o in outcomes)
        assert isinstance(outcomes[1], StoreClosedError)
        assert isinstance(outcomes[1].__cause__, Crash)
        assert await store.load("before") is not None
        assert await store.load("queued-1") is None


async def test_sqlite_in_memory_database_shares_one_connection() -> None:
    async with SQLiteStore(":memory:") as store:
        state = make_state(events=2)
        await store.save(state)
        await store.append(state, advance(state))

        assert snapshot(await store.load("wf-1")) == snapshot(state)
