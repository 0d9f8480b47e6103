"""Child workflows in the embedded runtime around the moment they start.

The parent records a child's start, then a task of the executor starts it:
the parent may end meanwhile, and the child's run is stored (and seen by
``describe``) a moment before the executor takes inputs for it.
"""

from __future__ import annotations

import asyncio

from app.testing import HookRecorder
from app.workflow import (
    DefaultExecutor,
    Signal,
    WorkflowContext,
    WorkflowOptions,
    WorkflowState,
    WorkflowStatus,
)
from providers.inmemory import InMemoryStore

WAIT = 10.0


class HeldStore(InMemoryStore):
    """Holds the first ``load`` or ``save`` (``on``) of workflow ``held`` until ``go``."""

    def __init__(self, held: str, on: str) -> None:
        super().__init__()
        self.held, self.on = held, on
        self.reached = asyncio.Event()
        self.go = asyncio.Event()

    async def _hold(self, workflow_id: str, call: str) -> None:
        if workflow_id == self.held and call == self.on and not self.reached.is_set():
            self.reached.set()
            await self.go.wait()

    async def save(self, state: WorkflowState) -> None:
        await super().save(state)
        await self._hold(state.workflow_id, "save")

    async def load(self, workflow_id: str) -> WorkflowState | None:
        await self._hold(workflow_id, "load")
        return await super().load(workflow_id)


def ready(tag: str) -> str:
    return tag


async def kid(ctx: WorkflowContext) -> str:
    return str(await ctx.receive_signal("go").receive())


async def parent(ctx: WorkflowContext) -> str:
    child = await ctx.start_child(kid, id="kid", parent_close_policy="abandon")
    return str(await ctx.execute_activity(ready, child.id))  # its start is recorded by now


async def test_a_child_seen_while_it_starts_takes_a_signal() -> None:
    store = HeldStore("kid", on="save")
    async with DefaultExecutor(store=store, workflows=[parent, kid], activities=[ready]) as ex:
        await ex.execute(parent, WorkflowOptions(id="parent"))
        await asyncio.wait_for(store.reached.wait(), WAIT)
        assert (await ex.describe("kid")).status is WorkflowStatus.RUNNING
        assert await ex.get_handle("parent").result(timeout=WAIT) == "kid"
        signal = asyncio.create_task(ex.signal("kid", Signal("go", "signalled")))
        await asyncio.sleep(0)
        assert not signal.done()  # it waits for the start in progress
        store.go.set()
        await asyncio.wait_for(signal, WAIT)
        assert await ex.get_handle("kid").result(timeout=WAIT) == "signalled"


async def test_a_parent_that_ends_first_does_not_cut_its_childs_start_short() -> None:
    store = HeldStore("kid", on="load")  # the start's look for an earlier run of it
    recorder = HookRecorder()
    async with DefaultExecutor(
        store=store, workflows=[parent, kid], activities=[ready], hooks=recorder.hooks()
    ) as ex:
        await ex.execute(parent, WorkflowOptions(id="parent"))
        await asyncio.wait_for(store.reached.wait(), WAIT)
        assert await ex.get_handle("parent").result(timeout=WAIT) == "kid"
        store.go.set()
        await recorder.wait_for("workflow_start", "kid", timeout=WAIT)
        await ex.signal("kid", Signal("go", "abandoned, not lost"))
        assert await ex.get_handle("kid").result(timeout=WAIT) == "abandoned, not lost"
