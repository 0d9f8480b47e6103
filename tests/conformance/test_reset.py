"""Reset: a run that failed on a bug goes on from just before it once the fix is in."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.workflow import (
    EventType,
    InvalidArgumentError,
    WorkflowFailedError,
    WorkflowOptions,
    WorkflowStatus,
)
from tests.conformance import workflows as wf
from tests.conformance.conftest import WAIT, Runtime


@pytest.fixture(autouse=True)
def _buggy() -> Iterator[None]:
    wf.SHIP_BUG["on"] = True
    wf.SHIPPED["charge"] = 0
    yield
    wf.SHIP_BUG["on"] = True


async def test_a_failed_run_goes_on_from_before_the_bug(resettable: Runtime) -> None:
    async with resettable.open() as ex:
        handle = await ex.execute(wf.charge_and_ship, WorkflowOptions(id="rs", input=4))
        with pytest.raises(WorkflowFailedError, match="label printer"):
            await handle.result(timeout=WAIT)
        failed = await ex.describe("rs")
        charged = next(e.id for e in failed.history if e.type is EventType.ACTIVITY_COMPLETED)
        with pytest.raises(InvalidArgumentError, match="to_event_id must be an event id"):
            await ex.reset("rs", len(failed.history))  # the end itself cannot be copied
        wf.SHIP_BUG["on"] = False  # the fix is deployed
        new = await ex.reset("rs", charged, "label printer fixed")
        assert new.run_id != failed.run_id
        assert await new.result(timeout=WAIT) == "shipped 40"
        state = await ex.describe("rs")
    assert state.status is WorkflowStatus.COMPLETED
    assert wf.SHIPPED["charge"] == 1  # the copied events replay the charge
    kinds = [e.type for e in state.history]
    assert kinds[:charged] == [e.type for e in failed.history[:charged]]
    marker = state.history[charged]
    assert marker.type is EventType.WORKFLOW_RESET
    assert (marker.change_id, marker.reason) == (failed.run_id, "label printer fixed")
    assert kinds[-1] is EventType.WORKFLOW_COMPLETED
