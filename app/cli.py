"""The command line: ``python -m app <command>`` (installed as ``streamflow``).

``list``, ``show`` and ``replay`` read SQLite, or a broker with ``--broker``;
the broker-facing commands live in :mod:`app._cli_streaming`, ``replay`` in
:mod:`app._cli_replay`, ``list`` and ``visibility`` in :mod:`app._cli_visibility`. Each command is a
registrar function that adds a subparser and sets its ``handler``: an
``async`` function taking the parsed arguments and returning the exit code.
Add a command by writing both and listing the registrar in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

from app import _cli_streaming as streaming
from app._cli_console import add_ui
from app._cli_replay import add_replay
from app._cli_visibility import add_list, add_visibility
from app._render import render_history, render_state
from app.workflow import WorkflowError
from providers.sqlite import DEFAULT_PATH, ENV_PATH, SQLiteStore

__all__ = ["COMMANDS", "build_parser", "main"]

Handler = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]

DEFAULT_LIMIT = 50


# -- shared helpers -------------------------------------------------------------
def _add_db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db",
        metavar="PATH",
        help=f"SQLite database file (default: ${ENV_PATH}, else {DEFAULT_PATH})",
    )


def _existing_store(path: str | None) -> tuple[SQLiteStore | None, str]:
    """The store at ``path`` (env/default when None), or None when there is no such file.

    Read-only commands must not leave an empty database behind a mistyped path.
    """
    store = SQLiteStore(path)
    if store.path in ("", ":memory:") or os.path.exists(store.path):
        return store, store.path
    return None, store.path


# -- demo -----------------------------------------------------------------------
def _add_demo(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the order workflow demo and print its history",
        description="Run the order workflow (reserve, charge with a retry, approval "
        "signal, durable sleep, ship) and print its history and result.",
    )
    _add_db_option(parser)
    parser.set_defaults(handler=_demo)


async def _demo(args: argparse.Namespace) -> int:
    from app.demo import run_demo  # keeps the demo's workflows out of other commands

    await run_demo(args.db, sys.stdout)
    return 0


# -- show -----------------------------------------------------------------------
def _add_show(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "show",
        help="show one workflow and its history",
        description="Show a workflow's header (id, run, type, status, input, "
        "result or error) and its history, one event per row.",
    )
    parser.add_argument("workflow_id", metavar="WORKFLOW_ID")
    _add_db_option(parser)
    streaming.add_broker_options(parser)
    streaming.add_key_option(parser)
    parser.set_defaults(handler=_show)


async def _show(args: argparse.Namespace) -> int:
    if streaming.broker_given(args):
        return await streaming.show_from_broker(args)
    store, path = _existing_store(args.db)
    state = None
    if store is not None:
        async with store:
            state = await store.load(args.workflow_id)
    if state is None:
        print(f"{args.prog}: workflow {args.workflow_id!r} not found in {path}", file=sys.stderr)
        return 1
    reader = streaming.payload_reader(args)
    state = await reader.decode_state(state)
    print(render_state(state))
    print(f"\nHistory ({len(state.history)} events)")
    print(render_history(state.history))
    streaming.note_undecoded(args, reader)
    return 0


# -- entry point ----------------------------------------------------------------
COMMANDS: tuple[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None], ...] = (
    _add_demo,
    partial(add_list, add_db_option=_add_db_option),
    _add_show,
    add_visibility,
    partial(add_ui, add_db_option=_add_db_option),
    add_replay,
    *streaming.COMMANDS,
)
"""Registrars of the subcommands, in the order ``--help`` lists them."""


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser with every command of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run and inspect durable workflows.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMANDS:
        register(subparsers)
    parser.set_defaults(prog=parser.prog)
    return parser


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return asyncio.run(handler(args))
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    except (WorkflowError, sqlite3.Error, OSError) as exc:
        # OSError covers TimeoutError: the demo's workflow did not end in time.
        message = str(exc) or type(exc).__name__
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        return 1
