"""``python -m app ui``: the web console over a SQLite store or a broker."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from app import _cli_streaming as streaming

if TYPE_CHECKING:
    from app.console import Backend

    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]

TOKEN_ENV = "STREAMFLOW_UI_TOKEN"


def add_ui(
    subparsers: SubParsers, add_db_option: Callable[[argparse.ArgumentParser], None]
) -> None:
    parser = subparsers.add_parser(
        "ui",
        help="serve the web console (list, search, a page per workflow, actions)",
        description="Serve the web console over a SQLite store (read-only, or with --app "
        "an embedded executor that runs the module's workflows) or a broker (--broker).",
    )
    add_db_option(parser)
    parser.add_argument(
        "--app", metavar="MODULE", help="run this module's workflows here (embedded)"
    )
    parser.add_argument("--index", metavar="PATH", help="with --broker: a visibility index file")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="port (default 8080; 0: any)")
    parser.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV),
        help=f"access token the console asks for (default: ${TOKEN_ENV}; none: open)",
    )
    streaming.add_broker_options(parser)
    parser.set_defaults(handler=_ui)


@contextlib.asynccontextmanager
async def open_backend(args: argparse.Namespace) -> AsyncIterator[Backend]:
    """The console's backend for ``args``, opened and closed around the serving."""
    from app.console import ExecutorBackend, StoreBackend

    if streaming.broker_given(args):
        from app.streaming import KafkaExecutor

        settings = streaming.settings_from(args)
        async with KafkaExecutor(settings=settings, visibility=args.index) as ex:
            yield ExecutorBackend(ex, f"broker {settings.bootstrap_servers}")
        return
    from app.workflow import DefaultExecutor
    from providers.sqlite import SQLiteStore

    store = SQLiteStore(args.db)
    if args.app:
        workflows, activities = streaming.load_app_module(args.app)
        async with DefaultExecutor(
            store=store, workflows=workflows, activities=activities, close_store=True
        ) as ex:
            yield ExecutorBackend(ex, f"{store.path} (running {args.app})")
        return
    async with store:
        yield StoreBackend(store, f"{store.path} (read-only)")


async def _ui(args: argparse.Namespace) -> int:
    from app.console import serve

    if args.token is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving {args.host} without a token: anyone who reaches it can act")
    async with open_backend(args) as backend:
        ready = asyncio.Event()
        serving = asyncio.create_task(serve(backend, args.host, args.port, args.token, ready))
        await asyncio.wait(
            [serving, asyncio.create_task(ready.wait())], return_when="FIRST_COMPLETED"
        )
        if serving.done():
            await serving  # it failed to start: this raises, saying why
            return 1
        print(f"Console on http://{args.host}:{args.port}/ over {backend.where}", flush=True)
        await serving
    return 0
