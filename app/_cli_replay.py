"""``replay``: check new workflow code against stored histories before a deploy.

Each stored history (from SQLite, or from a broker with ``--broker``) is
replayed with the workflow of its type in the ``--app`` module, as a runtime
would when it resumes the run. A history the code would not reproduce is
reported with the first event that diverges and why, and the command exits
with 1: deploying that code would park the run. On a broker the histories are
read through the workers already running (``describe``, as ``show`` does).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator

from app import _cli_streaming as streaming
from app.workflow import WorkflowFilter, WorkflowState, WorkflowStatus
from app.workflow._names import FunctionTable
from app.workflow._replay import replay

__all__ = ["add_replay"]


def add_replay(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "replay",
        help="check workflow code against stored histories (exit 1 on a divergence)",
        description="Replay stored histories with the workflows of an --app module and "
        "report each one the code would not reproduce, with the first diverging event. "
        "Exits 1 when one diverges, so a deploy pipeline can stop there. With --broker, "
        "histories are read through the running workers (as show does).",
    )
    parser.add_argument(
        "--app", required=True, metavar="MODULE", help="module with the workflows list"
    )
    parser.add_argument(
        "--db",
        "--store",
        dest="db",
        metavar="PATH",
        help="SQLite database file (default: $WORKFLOWS_DB, else workflows.db)",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--workflow-id", metavar="ID", help="replay this workflow only")
    which.add_argument(
        "--all", action="store_true", help="replay every stored workflow (the default)"
    )
    streaming.add_broker_options(parser)
    streaming.add_key_option(parser)
    parser.set_defaults(handler=_replay)


async def _from_store(args: argparse.Namespace) -> AsyncIterator[WorkflowState]:
    from app.cli import _existing_store

    store, path = _existing_store(args.db)
    if store is None:
        raise SystemExit(f"{args.prog}: no workflow database at {path}")
    async with store:
        if args.workflow_id:
            ids = [args.workflow_id]
        else:
            ids = [s.workflow_id for s in await store.list(WorkflowFilter())]
        for workflow_id in ids:
            state = await store.load(workflow_id)
            if state is None:
                raise SystemExit(f"{args.prog}: workflow {workflow_id!r} not found in {path}")
            yield state


async def _from_broker(args: argparse.Namespace) -> AsyncIterator[WorkflowState]:
    from app.streaming import KafkaExecutor

    settings = streaming.settings_from(args)
    if args.workflow_id:
        ids = [args.workflow_id]
    else:
        ids = [s.workflow_id for s in await streaming.read_headers(settings)]
    async with KafkaExecutor(settings=settings) as ex:
        for workflow_id in ids:
            yield await ex.describe(workflow_id)


async def _replay(args: argparse.Namespace) -> int:
    workflows, activities = streaming.load_app_module(args.app)
    table = FunctionTable("workflow", workflows)
    reader = streaming.payload_reader(args)
    source = _from_broker(args) if streaming.broker_given(args) else _from_store(args)
    checked = diverged = 0
    async for stored in source:
        state = await reader.decode_state(stored)
        fn = table.get(state.workflow_type)
        if fn is None:
            if state.status is WorkflowStatus.RUNNING:
                diverged += 1
                print(
                    f"FAIL  {state.workflow_id}: its type {state.workflow_type!r} is not in "
                    f"{args.app} (it has: {', '.join(table.names()) or 'none'}); "
                    "the running workflow would park"
                )
            else:
                print(f"skip  {state.workflow_id}: type {state.workflow_type!r} not in {args.app}")
            continue
        checked += 1
        result = replay(fn, state, activities=activities)
        if result.ok:
            print(f"ok    {state.workflow_id} ({state.workflow_type}, {result.events} events)")
        else:
            diverged += 1
            print(
                f"FAIL  {state.workflow_id} ({state.workflow_type}) diverges at event "
                f"{result.event_id}: {result.reason}"
            )
    streaming.note_undecoded(args, reader)
    print(f"{checked} replayed, {diverged} would diverge")
    if diverged:
        print(f"{args.prog}: {diverged} workflows would not replay on this code", file=sys.stderr)
        return 1
    return 0
