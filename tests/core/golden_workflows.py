"""Workflows whose recorded histories are kept as golden files in ``golden/``.

Regenerate (only when a change of history format is intended):

    python -m tests.core.golden_workflows
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

from app.workflow import (
    DefaultExecutor,
    Hooks,
    RetryPolicy,
    Signal,
    WorkflowCanceledError,
    WorkflowContext,
    WorkflowOptions,
    activity,
)
from providers.inmemory import InMemoryStore

GOLDEN = Path(__file__).parent / "golden"


def lookup(sku: str) -> dict[str, Any]:
    return {"sku": sku, "price": 3}


def flaky_charge(amount: int) -> str:
    if activity.info().attempt < 2:
        raise ConnectionError("gateway busy")
    return f"charged {amount}"


def release(sku: str) -> str:
    return f"released {sku}"


async def order(ctx: WorkflowContext, skus: list[str]) -> dict[str, Any]:
    items = await asyncio.gather(*(ctx.execute_activity(lookup, s) for s in skus))
    total = sum(i["price"] for i in items)
    receipt = await ctx.execute_activity(
        flaky_charge, total, retry=RetryPolicy(max_attempts=3, initial_interval=0.01)
    )
    return {"total": total, "receipt": receipt, "id": str(ctx.uuid4())}


async def approval(ctx: WorkflowContext, wait: float) -> list[Any]:
    seen = [await ctx.receive_signal("ok").receive(timeout=5)]
    await ctx.sleep(0.05)
    try:
        seen.append(await ctx.receive_signal("ok").receive(timeout=wait))
    except TimeoutError:
        seen.append("timeout")
    return seen


async def cancellable(ctx: WorkflowContext, sku: str) -> str:
    try:
        await ctx.receive_signal("never").receive()
        return "impossible"
    finally:
        await ctx.execute_activity(release, sku)


WORKFLOWS = {"order": order, "approval": approval, "cancellable": cancellable}


async def record() -> dict[str, list[dict[str, Any]]]:
    store = InMemoryStore()
    started = asyncio.Event()
    hooks = Hooks(on_workflow_start=lambda wid, _: started.set())
    out: dict[str, list[dict[str, Any]]] = {}
    async with DefaultExecutor(store=store, hooks=hooks, workflows=WORKFLOWS) as ex:
        h1 = await ex.execute(order, WorkflowOptions("golden-order", ["a", "b", "c"]))
        await h1.result(timeout=10)
        h2 = await ex.execute(approval, WorkflowOptions("golden-approval", 0.05))
        await ex.signal("golden-approval", Signal("ok", "second"))
        await h2.result(timeout=10)
        h3 = await ex.execute(cancellable, WorkflowOptions("golden-cancel", "x"))
        await ex.cancel("golden-cancel")
        with contextlib.suppress(WorkflowCanceledError):
            await h3.result(timeout=10)
        for name, wid in [
            ("order", "golden-order"),
            ("approval", "golden-approval"),
            ("cancellable", "golden-cancel"),
        ]:
            state = await store.load(wid)
            assert state is not None
            out[name] = [json.loads(e.model_dump_json()) for e in state.history]
            out[name].insert(0, {"run_id": state.run_id, "workflow_id": wid})
    return out


if __name__ == "__main__":
    GOLDEN.mkdir(exist_ok=True)
    for name, events in asyncio.run(record()).items():
        (GOLDEN / f"{name}.json").write_text(json.dumps(events, indent=1) + "\n")
        print(f"wrote golden/{name}.json ({len(events) - 1} events)")
