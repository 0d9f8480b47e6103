"""Names every part of the Temporal provider uses: defaults, patterns, connecting."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta

from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.service import RPCError, RPCStatusCode

from app.workflow import (
    WorkflowError,
)
from app.workflow._types import Duration, to_seconds

DEFAULT_TASK_QUEUE = "beluga-workflows"
DEFAULT_TARGET_HOST = "localhost:7233"
BUILTIN_QUERIES = ("result", "status")
UPDATE_NOT_FOUND = "UpdateNotFound"
"""The ApplicationError type of an update refused for naming no handler (details: the known)."""
UPDATE_REJECTED = "UpdateRejected"
"""The ApplicationError type of an update its validator refused."""
CHILD_MEMO = "beluga-child"
"""The memo key of a child workflow's start: ``{"step", "attempt", "parent_close_policy"}``."""
PARENT_CLOSE_REASON = "by parent close policy"
"""Temporal's termination reason for a child its parent's close policy terminated."""
TERMINATE_PREFIX = "engine terminate: "
"""Starts the Temporal termination reason of ``TemporalExecutor.terminate`` (then the reason)."""

_PAGE_SIZE = 1000
_LONG_POLL = timedelta(seconds=40)  # above the server's own long-poll expiry (about 20 s)
_RETRY_DELAYS = (0.1, 0.2, 0.4, 0.8, 1.6, 3.2)  # seconds between tries of a failed watch
_WORKER_STOPPED = "BelugaWorkerStopped"  # failure type of an attempt cut short by its worker
_ACTIVITY_ID = re.compile(r"^(\d+)\.(\d+)(?:\.\d+)?$")
_SLEEP_SUMMARY = re.compile(r"^sleep .* \(step (\d+)\)$")
_RETRY_SUMMARY = re.compile(r"^retry backoff of (.+) after attempt (\d+) \(step (\d+)\)$")
_UNKNOWN_QUERY = re.compile(r"has no query (.+); known queries: (.*)$")
_TRANSIENT = frozenset(
    {
        RPCStatusCode.UNAVAILABLE,
        RPCStatusCode.DEADLINE_EXCEEDED,
        RPCStatusCode.RESOURCE_EXHAUSTED,
        RPCStatusCode.ABORTED,
        RPCStatusCode.INTERNAL,
        RPCStatusCode.UNKNOWN,
    }
)


class TemporalConnectionError(WorkflowError, ConnectionError):
    """The Temporal server could not be reached (or lacks the namespace)."""


# -- connecting -------------------------------------------------------------------
async def connect(
    target_host: str = DEFAULT_TARGET_HOST,
    namespace: str = "default",
    *,
    timeout: Duration = 10.0,
    data_converter: DataConverter | None = None,
) -> Client:
    """Connect to the Temporal frontend at ``target_host``, retrying until ``timeout``.

    A server whose port just opened may refuse gRPC for a few seconds, so
    failed attempts are retried with backoff. Raises
    :class:`TemporalConnectionError` naming the address when the deadline passes.
    """
    seconds = to_seconds(timeout, "connect timeout")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    delay = 0.05
    last: BaseException | None = None
    while True:
        left = deadline - loop.time()
        if left <= 0:
            break
        try:
            return await asyncio.wait_for(
                Client.connect(
                    target_host,
                    namespace=namespace,
                    data_converter=data_converter or DataConverter.default,
                ),
                timeout=left,
            )
        except (TimeoutError, RuntimeError, RPCError, OSError) as exc:
            last = exc
        await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
        delay = min(delay * 2, 1.0)
    raise TemporalConnectionError(
        f"cannot reach the Temporal server at {target_host} (namespace {namespace!r}) "
        f"within {seconds:g}s: {last or 'timed out'}. Start one (e.g. "
        "`temporal server start-dev`) or pass the right target_host"
    )


def _rpc_error(err: RPCError, address: str, what: str) -> WorkflowError:
    if err.status is RPCStatusCode.UNAVAILABLE:
        return TemporalConnectionError(
            f"the Temporal server at {address} is unavailable ({what}): {err.message}"
        )
    return WorkflowError(f"Temporal server at {address} refused to {what}: {err.message}")


def _address(client: Client) -> str:
    return str(client.service_client.config.target_host)
