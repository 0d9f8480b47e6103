"""Session-wide servers: each starts once, on first use, and stops at the end."""

from __future__ import annotations

import asyncio
import gc
import io
import sys
import threading
from collections.abc import Iterator

import pytest

from tests import servers


@pytest.fixture(scope="session")
def tansu_server() -> Iterator[servers.Server]:
    """A Tansu broker (Kafka protocol) shared by the session."""
    with servers.running(servers.tansu(servers.scratch_dir("tansu"))) as server:
        yield server


@pytest.fixture(scope="session")
def kafka_bootstrap(tansu_server: servers.Server) -> str:
    """``host:port`` of the session's Kafka-protocol broker."""
    return f"127.0.0.1:{tansu_server.port}"


@pytest.fixture(scope="session")
def nats_server() -> Iterator[servers.Server]:
    """A nats-server with JetStream shared by the session."""
    with servers.running(servers.nats(servers.scratch_dir("nats"))) as server:
        yield server


@pytest.fixture(scope="session")
def nats_url(nats_server: servers.Server) -> str:
    """``nats://`` URL of the session's NATS server."""
    return f"nats://127.0.0.1:{nats_server.port}"


@pytest.fixture(scope="session")
def temporal_server() -> Iterator[servers.Server]:
    """A Temporal dev server shared by the session."""
    with servers.running(servers.temporal(servers.scratch_dir("temporal"))) as server:
        yield server


@pytest.fixture(scope="session")
def temporal_address(temporal_server: servers.Server) -> str:
    """``host:port`` of the session's Temporal frontend (gRPC)."""
    return f"127.0.0.1:{temporal_server.port}"


def _dump_tasks(nodeid: str) -> None:
    # Diagnostics only: a hung async test shows its main thread idle in select(),
    # which says nothing; the coroutines each task waits in say where it hangs.
    loops = [o for o in gc.get_objects() if isinstance(o, asyncio.AbstractEventLoop)]
    out = io.StringIO()
    for loop in loops:
        if not loop.is_running():
            continue
        for task in asyncio.all_tasks(loop):
            print(f"--- task {task.get_name()} of {nodeid}", file=out)
            task.print_stack(limit=12, file=out)
    sys.stderr.write(f"\n+++ asyncio tasks of a test near its timeout +++\n{out.getvalue()}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    """Dump every asyncio task's stack shortly before pytest-timeout ends a test."""
    marker = item.get_closest_marker("timeout")
    timeout = (
        float(marker.args[0])
        if marker and marker.args
        else float(item.config.getini("timeout") or 0)
    )
    timer = None
    if timeout > 15:
        timer = threading.Timer(timeout - 10, _dump_tasks, args=(item.nodeid,))
        timer.daemon = True
        timer.start()
    try:
        yield
    finally:
        if timer is not None:
            timer.cancel()
