"""Schedules on the embedded runtime: ticks, overlap, pause, trigger, delete, catch-up.

Each tick's run has an id derived from the tick, so a test knows which runs to
wait for (through the hooks) without sleeping; a sleep stands only for time
that must pass with nothing to await (downtime, a paused schedule's ticks).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from app.testing import HookRecorder
from app.workflow import (
    DefaultExecutor,
    InvalidArgumentError,
    Signal,
    WorkflowAlreadyRunningError,
    WorkflowContext,
    WorkflowQuery,
)
from app.workflow._schedules import ScheduleSpec
from providers.inmemory import InMemoryStore
from providers.sqlite import SQLiteStore

EVERY = 0.25
WAIT = 20.0
QUIET = 1.0  # a paused schedule's ticks must not fire in this long


async def job(ctx: WorkflowContext, x: int) -> int:
    return x + 1


async def slow_job(ctx: WorkflowContext, x: int) -> int:
    return int(await ctx.receive_signal("done", int).receive(timeout=600)) + x


def tick_ids(created: dict[str, Any], count: int, first: int = 1) -> list[str]:
    """The run ids of ticks ``first`` .. ``first + count - 1`` of a schedule."""
    spec = ScheduleSpec(**created["spec"])
    tick = datetime.fromisoformat(spec.start_at)
    ids = []
    for i in range(first + count - 1):
        tick = spec.next_tick(tick)
        if i + 1 >= first:
            ids.append(f"{spec.schedule_id}@{tick.astimezone(UTC):%Y%m%dT%H%M%S.%fZ}")
    return ids


async def test_ticks_start_runs_and_pause_trigger_resume_delete_work() -> None:
    rec = HookRecorder()
    async with DefaultExecutor(store=InMemoryStore(), workflows=[job], hooks=rec.hooks()) as ex:
        created = await ex.create_schedule("tick", job, 1, every=EVERY)
        for wid in tick_ids(created, 3):
            await rec.wait_for("workflow_complete", wid, timeout=WAIT)
            assert await ex.get_handle(wid).result(timeout=WAIT) == 2
        with pytest.raises(WorkflowAlreadyRunningError):
            await ex.create_schedule("tick", job, 1, every=EVERY)
        (listed,) = await ex.list_schedules()
        assert listed["schedule_id"] == "tick" and listed["started"] >= 3
        assert listed["spec"]["workflow"] == "job" and listed["next_tick"] is not None

        await ex.pause_schedule("tick")
        paused = await ex.describe_schedule("tick")
        assert paused["paused"] is True and paused["next_tick"] is None
        await asyncio.sleep(QUIET)  # nothing to await: no tick may fire meanwhile
        assert (await ex.describe_schedule("tick"))["started"] == paused["started"]

        await ex.trigger_schedule("tick")  # acts now, paused or not
        triggered = await ex.describe_schedule("tick")
        assert triggered["started"] == paused["started"] + 1
        assert triggered["recent"][0]["why"] == "triggered"
        await rec.wait_for("workflow_complete", triggered["recent"][0]["workflow_id"])

        await ex.resume_schedule("tick")
        resumed = await ex.describe_schedule("tick")
        assert resumed["paused"] is False and resumed["next_tick"] > resumed["last_tick"]
        await ex.delete_schedule("tick")
        assert await ex.list_schedules() == []
        runs = await ex.list(WorkflowQuery(workflow_type="job", page_size=1000))
        ids = [s.workflow_id for s in runs.items]
        assert len(ids) == len(set(ids)) >= 4


async def test_skip_and_buffer_one_while_a_run_is_still_running() -> None:
    rec = HookRecorder()
    opened = DefaultExecutor(store=InMemoryStore(), workflows=[slow_job], hooks=rec.hooks())
    async with opened as ex:
        for overlap in ("skip", "buffer_one"):
            created = await ex.create_schedule(overlap, slow_job, 1, every=EVERY, overlap=overlap)
            first, second = tick_ids(created, 2)
            await rec.wait_for("workflow_start", first, timeout=WAIT)
            # two more ticks pass while the first run waits for its signal
            state = await _until(ex, overlap, lambda d: d["skipped"] + len(d["buffered"]) >= 2)
            assert state["running"] == [first] and second not in state["running"]
            await ex.signal(first, Signal("done", 10))
            assert await ex.get_handle(first).result(timeout=WAIT) == 11
            after = await _until(ex, overlap, lambda d: d["started"] >= 2)
            started = [a for a in after["recent"] if "why" in a]
            assert started[0]["why"] == ("buffered" if overlap == "buffer_one" else "scheduled")
            await ex.delete_schedule(overlap)


async def test_cancel_other_cancels_the_run_still_running() -> None:
    rec = HookRecorder()
    opened = DefaultExecutor(store=InMemoryStore(), workflows=[slow_job], hooks=rec.hooks())
    async with opened as ex:
        created = await ex.create_schedule("co", slow_job, 1, every=EVERY, overlap="cancel_other")
        first, second = tick_ids(created, 2)
        await rec.wait_for("workflow_start", second, timeout=WAIT)
        # the second tick cancelled the first run before starting its own
        with pytest.raises(Exception, match="cancel"):
            await ex.get_handle(first).result(timeout=WAIT)
        assert (await ex.describe(first)).status.value == "canceled"
        await ex.delete_schedule("co")


async def _until(ex: DefaultExecutor, sid: str, ok: Any) -> dict[str, Any]:
    """The schedule's state once ``ok(state)``: it changes only on its own ticks."""
    async with asyncio.timeout(WAIT):
        while True:
            state = await ex.describe_schedule(sid)
            if ok(state):
                return state
            await asyncio.sleep(EVERY / 5)  # the schedule's timer runs on its own


async def test_a_restart_goes_on_and_catches_up_within_the_window(tmp_path: Path) -> None:
    path = tmp_path / "wf.db"
    rec = HookRecorder()
    async with DefaultExecutor(store=SQLiteStore(path), workflows=[job], hooks=rec.hooks()) as ex:
        created = await ex.create_schedule("cu", job, 1, every=EVERY, catchup_window=0.6)
        (first,) = tick_ids(created, 1)
        await rec.wait_for("workflow_complete", first, timeout=WAIT)
    await asyncio.sleep(8 * EVERY)  # the downtime: eight ticks come and go unseen
    async with DefaultExecutor(store=SQLiteStore(path), workflows=[job]) as ex:
        state = await _until_started(ex, created)
        runs = await ex.list(WorkflowQuery(workflow_type="job", page_size=1000))
    ids = [s.workflow_id for s in runs.items]
    assert len(ids) == len(set(ids))  # no tick acted on twice
    assert state["missed"] >= 4  # older than the window: not made up
    assert 0 < state["started"] - 1 <= 8  # the ticks within the window were made up


async def _until_started(ex: DefaultExecutor, created: dict[str, Any]) -> dict[str, Any]:
    return await _until(ex, "cu", lambda d: d["started"] >= 2 and d["missed"] >= 1)


def test_options_are_checked_at_the_call() -> None:
    now = datetime.now(UTC)
    base: dict[str, Any] = {"schedule_id": "s", "workflow": "job", "start_at": now.isoformat()}
    for bad, message in [
        ({"cron": "not a cron"}, "valid cron expression"),
        ({"cron": "* * * * *", "every": 5}, "exactly one of"),
        ({}, "exactly one of"),
        ({"every": 0}, "every must be > 0"),
        ({"every": 1, "overlap": "cancel_all"}, "overlap must be one of"),
        ({"every": 1, "jitter": -1}, "jitter must be >= 0"),
        ({"every": 1, "schedule_id": "a b"}, "schedule_id must be"),
    ]:
        with pytest.raises(InvalidArgumentError, match=message):
            ScheduleSpec(**{**base, **bad})


def test_cron_ticks_come_from_croniter() -> None:
    start = datetime(2026, 3, 1, 12, 7, tzinfo=UTC)
    spec = ScheduleSpec("c", "job", cron="*/15 * * * *", start_at=start.isoformat())
    ticks = spec.ticks(start, start + timedelta(hours=1))
    assert [t.strftime("%H:%M") for t in ticks] == ["12:15", "12:30", "12:45", "13:00"]
    every = ScheduleSpec("e", "job", every=90, start_at=start.isoformat())
    assert every.next_tick(start + timedelta(seconds=100)) == start + timedelta(seconds=180)
