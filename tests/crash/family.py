"""A child process running a parent workflow and its child on SQLite, SIGKILLed at one point.

    python -m tests.crash.family --db PATH --log PATH --point POINT

The child workflow's id is the harness's target (``tests.crash.child``), so
its points apply to it: ``before:1`` (the parent recorded the child's start,
the child is not saved), ``after:1`` (saved, nothing run), ``after:2`` (its
first activity recorded as started), ``activity:target:a`` (inside it),
``after:5`` (its result recorded, the parent not told yet); and
``activity:family:after`` inside the parent's activity after the child
ended. Without a crash it prints the parent's result as JSON and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from app.workflow import DefaultExecutor, WorkflowContext, WorkflowOptions
from providers.sqlite import SQLiteStore
from tests.crash import child as harness

PARENT = "family"


async def child_flow(ctx: WorkflowContext, name: str) -> list[str]:
    a = await ctx.execute_activity(harness.effect, f"{name}:a")
    b = await ctx.execute_activity(harness.effect, f"{name}:b")
    return [a, b]


async def family(ctx: WorkflowContext, name: str) -> dict[str, Any]:
    result = await ctx.execute_child(child_flow, harness.TARGET, id=harness.TARGET)
    after = await ctx.execute_activity(harness.effect, f"{name}:after")
    return {"child": result, "after": after}


async def run(db: str, point: str) -> dict[str, Any]:
    store = harness.KillingStore(SQLiteStore(db), point)
    try:
        async with DefaultExecutor(
            store=store, workflows=[family, child_flow], activities=[harness.effect]
        ) as executor:
            if await store.load(PARENT) is None:
                handle = await executor.execute(family, WorkflowOptions(PARENT, PARENT))
            else:
                handle = executor.get_handle(PARENT)
            result: dict[str, Any] = await handle.result(timeout=30)
            return result
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--point", default="none")
    args = parser.parse_args()
    harness.POINT, harness.LOG_PATH = args.point, args.log
    print(json.dumps(asyncio.run(run(args.db, args.point)), sort_keys=True))


if __name__ == "__main__":
    main()
