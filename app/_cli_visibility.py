"""``list`` (headers by type, status, time and search attributes) and ``visibility``.

``list`` reads the SQLite store's index tables, or with ``--broker`` the
streaming runtime's visibility index (``--index FILE``, caught up with the
history topic first; by default one built in memory). ``visibility`` keeps an
index file up to date until stopped.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from app import _cli_streaming as streaming
from app._render import render_summaries
from app.workflow import WorkflowPage, WorkflowQuery, WorkflowStatus, WorkflowSummary
from app.workflow._visibility import MAX_PAGE_SIZE, list_workflows

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]


DEFAULT_LIMIT = 50


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an ISO-8601 time, got {text!r}") from None
    return moment if moment.tzinfo is not None else moment.astimezone(UTC)


def _limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def add_list(
    subparsers: SubParsers, add_db_option: Callable[[argparse.ArgumentParser], None]
) -> None:
    parser = subparsers.add_parser(
        "list",
        help="list workflows (headers, no histories), newest start first",
        description="List workflows by type, status, start and close time and search "
        "attributes, newest start first, from the store's index (or with --broker, "
        "the visibility index of the history topic).",
    )
    add_db_option(parser)
    parser.add_argument(
        "--status", choices=[s.value for s in WorkflowStatus], help="only this status"
    )
    parser.add_argument("--type", dest="workflow_type", metavar="NAME", help="only this type")
    parser.add_argument(
        "--attr",
        action="append",
        type=streaming.attribute_arg,
        default=[],
        metavar="NAME=VALUE",
        help="only workflows whose search attribute NAME is VALUE (JSON number or "
        "boolean, else text); repeatable",
    )
    for flag in ("started-after", "started-before", "closed-after", "closed-before"):
        parser.add_argument(f"--{flag}", type=_moment, metavar="TIME", help="ISO-8601 time")
    parser.add_argument(
        "--limit",
        type=_limit,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"show at most N workflows (default: {DEFAULT_LIMIT}; 0: all)",
    )
    parser.add_argument("--cursor", help="go on from the cursor a previous page printed")
    parser.add_argument(
        "--index",
        metavar="PATH",
        help="with --broker: the visibility index file (default: built in memory)",
    )
    streaming.add_broker_options(parser)
    parser.set_defaults(handler=_list)


def _query(args: argparse.Namespace, page_size: int, cursor: str | None) -> WorkflowQuery:
    return WorkflowQuery(
        workflow_type=args.workflow_type,
        status=args.status,
        started_after=args.started_after,
        started_before=args.started_before,
        closed_after=args.closed_after,
        closed_before=args.closed_before,
        search_attributes=dict(args.attr),
        page_size=page_size,
        cursor=cursor,
    )


async def _collect(
    args: argparse.Namespace,
    fetch: Callable[[WorkflowQuery], Awaitable[WorkflowPage]],
    where: str,
) -> int:
    items: list[WorkflowSummary] = []
    cursor = args.cursor
    want = args.limit or None
    while True:
        size = MAX_PAGE_SIZE if want is None else min(MAX_PAGE_SIZE, want - len(items))
        page = await fetch(_query(args, size, cursor))
        items += page.items
        cursor = page.next_cursor
        if cursor is None or (want is not None and len(items) >= want):
            break
    if not items:
        which = f"{args.status} workflows" if args.status else "workflows"
        print(f"No {which} {where}.")
        return 0
    print(render_summaries(items))
    if cursor is not None:
        print(f"\nMore: --cursor {cursor}")
    return 0


async def _list(args: argparse.Namespace) -> int:
    if streaming.broker_given(args):
        from app.streaming import VisibilityIndex

        settings = streaming.settings_from(args)
        async with VisibilityIndex(settings, args.index or ":memory:") as index:
            await index.catch_up()
            return await _collect(args, index.list, "on the broker")
    from app.cli import _existing_store

    store, path = _existing_store(args.db)
    if store is None:
        print(f"No workflows in {path}.")
        return 0
    async with store:
        return await _collect(args, lambda query: list_workflows(store, query), f"in {path}")


def add_visibility(subparsers: SubParsers) -> None:
    parser = subparsers.add_parser(
        "visibility",
        help="keep a visibility index of a broker's workflows (SQLite), until stopped",
        description="Follow the history topic and keep a SQLite index of every "
        "workflow's header and search attributes, for `list --broker --index` and the "
        "console. It goes on from where it stopped.",
    )
    parser.add_argument("--index", required=True, metavar="PATH", help="the index file")
    parser.add_argument("--once", action="store_true", help="catch up with the topic, then exit")
    streaming.add_broker_options(parser)
    parser.set_defaults(handler=_visibility)


async def _visibility(args: argparse.Namespace) -> int:
    from app.streaming import VisibilityIndex

    async with VisibilityIndex(streaming.settings_from(args), args.index) as index:
        applied = await index.catch_up()
        counts = await index.counts()
        summary = ", ".join(f"{n} {s.value}" for s, n in sorted(counts.items())) or "none"
        print(f"Index {args.index}: {applied} history records applied; workflows: {summary}")
        if args.once:
            return 0
        await index.run()
    return 0
