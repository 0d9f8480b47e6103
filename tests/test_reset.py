"""Reset on the embedded runtime: a failed run goes on from before its bug, once fixed."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.workflow import (
    DefaultExecutor,
    EventType,
    InvalidArgumentError,
    NonRetryableError,
    Signal,
    WorkflowContext,
    WorkflowFailedError,
    WorkflowNotFoundError,
    WorkflowOptions,
    WorkflowStatus,
)
from providers.sqlite import SQLiteStore

WAIT = 30.0
CALLS: dict[str, int] = {"charge": 0, "ship": 0}
BUGGY = {"ship": True}


def charge(order: int) -> int:
    CALLS["charge"] += 1
    return order * 10


def ship(amount: int) -> str:
    CALLS["ship"] += 1
    if BUGGY["ship"]:
        raise NonRetryableError("ship: the label printer code has a bug")
    return f"shipped {amount}"


async def order(ctx: WorkflowContext, n: int) -> str:
    amount = int(await ctx.execute_activity(charge, n))
    return str(await ctx.execute_activity(ship, amount))


async def waits(ctx: WorkflowContext, n: int) -> int:
    amount = int(await ctx.execute_activity(charge, n))
    extra = await ctx.receive_signal("extra", int).receive()
    return amount + int(extra)


@pytest.fixture(autouse=True)
def _fresh() -> None:
    CALLS.update(charge=0, ship=0)
    BUGGY["ship"] = True


async def test_a_failed_run_is_reset_to_before_the_bug(tmp_path: Path) -> None:
    path = tmp_path / "wf.db"
    async with DefaultExecutor(store=SQLiteStore(path)) as ex:
        handle = await ex.execute(order, WorkflowOptions(id="o1", input=4))
        with pytest.raises(WorkflowFailedError, match="label printer"):
            await handle.result(timeout=WAIT)
        failed = await ex.store.load("o1")
    assert failed is not None
    charged = next(e.id for e in failed.history if e.type is EventType.ACTIVITY_COMPLETED)
    BUGGY["ship"] = False  # the fix is deployed: a new executor on the same store
    async with DefaultExecutor(store=SQLiteStore(path), workflows=[order]) as ex:
        with pytest.raises(InvalidArgumentError, match="to_event_id must be an event id from 1"):
            await ex.reset("o1", len(failed.history))  # its end cannot be copied
        new = await ex.reset("o1", charged, "fixed the label printer")
        assert new.run_id != failed.run_id
        assert await new.result(timeout=WAIT) == "shipped 40"
        state = await ex.store.load("o1")
    assert state is not None and state.status is WorkflowStatus.COMPLETED
    assert CALLS == {"charge": 1, "ship": 2}  # charged once: the copy replays it
    assert [e.type for e in state.history[:charged]] == [e.type for e in failed.history[:charged]]
    marker = state.history[charged]
    assert marker.type is EventType.WORKFLOW_RESET
    assert (marker.change_id, marker.reason) == (failed.run_id, "fixed the label printer")


async def test_a_running_run_is_terminated_then_reset(tmp_path: Path) -> None:
    async with DefaultExecutor(store=SQLiteStore(tmp_path / "wf.db")) as ex:
        old = await ex.execute(waits, WorkflowOptions(id="w1", input=1))
        await ex.signal("w1", Signal("nothing-yet"))  # recorded after the charge started
        state = await ex.store.load("w1")
        assert state is not None
        new = await ex.reset("w1", 1, "start over")
        # the store keeps the latest run: the old handle names the one that replaced it
        with pytest.raises(WorkflowNotFoundError, match=f"was replaced by run {new.run_id}"):
            await old.result(timeout=WAIT)
        await ex.signal("w1", Signal("extra", 5))
        assert await new.result(timeout=WAIT) == 15
    # the old run's charge may have run or not; the new run's ran again from event 1
    assert CALLS["charge"] in (1, 2)
