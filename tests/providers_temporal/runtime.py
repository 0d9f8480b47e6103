"""The ``temporal`` runtime of the engine conformance suite.

Every conformance test gets a fresh Temporal namespace on the session's dev
server: the suite reuses workflow ids across tests ("seq", "dup", ...) and
leaves some workflows running, and a namespace keeps ids, visibility listings
and task queues apart without changing the ids the tests assert on. A test
that restarts its executor opens the next one in the same namespace and task
queue, so Temporal resumes the workflows there. One client connection serves
the session; each namespace gets a light ``Client`` over it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NoReturn

from google.protobuf.duration_pb2 import Duration
from temporalio.api.workflowservice.v1 import RegisterNamespaceRequest
from temporalio.client import Client

from app.workflow import Hooks
from providers.temporal import TemporalExecutor, connect
from tests.conformance import workflows as suite

if TYPE_CHECKING:
    from tests.conformance.conftest import Runtime

TASK_QUEUE = "conformance"
# A workflow task handed to a worker just as a test stops it is lost with it;
# Temporal gives it to the next worker after this timeout (10 s by default).
TASK_TIMEOUT = 2.0
# Likewise an activity task: Temporal hands it out again once its heartbeat
# timeout (30 s by default) passes without a heartbeat from the stopped worker.
# The SDK sends heartbeats every 0.8 x this: 1 s of slack for a loaded machine.
HEARTBEAT_TIMEOUT = 5.0
_clients: dict[str, Client] = {}


async def session_client(address: str) -> Client:
    """One connection to the session's server, made on first use."""
    client = _clients.get(address)
    if client is None:
        client = _clients[address] = await connect(address, timeout=30)
    return client


async def fresh_namespace(address: str) -> Client:
    """A client on a namespace of its own, registered just now."""
    base = await session_client(address)
    name = f"test-{uuid.uuid4().hex[:12]}"
    await base.workflow_service.register_namespace(
        RegisterNamespaceRequest(
            namespace=name, workflow_execution_retention_period=Duration(seconds=86400)
        ),
        retry=True,
        timeout=timedelta(seconds=10),
    )
    return Client(base.service_client, namespace=name)


def _no_store() -> NoReturn:
    raise RuntimeError("the temporal runtime keeps state in Temporal, not in a WorkflowStore")


def temporal_runtime(
    runtime_class: type[Runtime], address: Callable[[], str], capabilities: set[str]
) -> Runtime:
    """A conformance runtime opening :class:`TemporalExecutor` s in one fresh namespace."""
    clients: list[Client] = []

    @asynccontextmanager
    async def open_executor(
        runtime: Runtime, hooks: Hooks | None, overrides: dict[str, Any]
    ) -> AsyncIterator[TemporalExecutor]:
        if not clients:
            clients.append(await fresh_namespace(address()))
        executor = TemporalExecutor(
            clients[0],
            task_queue=TASK_QUEUE,
            workflow_task_timeout=TASK_TIMEOUT,
            heartbeat_timeout=HEARTBEAT_TIMEOUT,
            hooks=hooks,
            workflows=overrides.pop("workflows", suite.workflows),
            activities=overrides.pop("activities", suite.activities),
            **overrides,
        )
        async with executor:
            yield executor

    opener: Callable[[Runtime, Hooks | None, dict[str, Any]], AbstractAsyncContextManager[Any]] = (
        open_executor
    )
    return runtime_class("temporal", _no_store, capabilities, opener=opener)
