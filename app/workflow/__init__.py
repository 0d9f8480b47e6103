"""Durable workflows: the public API.

Write a workflow as ``async def wf(ctx: WorkflowContext, input) -> result``
and activities as plain or ``async`` functions; run them on
:class:`DefaultExecutor` (embedded, SQLite by default) or any registered
provider. Every step is recorded; after a crash or restart the workflow is
replayed from its history and nothing that was done is done again.

:class:`KafkaExecutor` is the client of the streaming runtime (workers on
Kafka, :mod:`app.streaming`); it is imported on first use and needs the
``kafka`` extra.
"""

from typing import TYPE_CHECKING, Any

from . import activity
from ._claim_check import BlobStore, ClaimCheckCodec, LocalBlobStore, S3BlobStore
from ._codec import (
    CodecChain,
    CompressionCodec,
    EncryptionCodec,
    PayloadCodec,
    PayloadCodecError,
    load_codec,
    new_key,
)
from ._core import ChildWorkflowHandle, SignalChannel, WorkflowContext
from ._embedded import DefaultExecutor, ExecutorStoppedError
from ._errors import (
    ActivityCancelledError,
    ActivityError,
    ApplicationError,
    ChildWorkflowError,
    ContinueAsNewError,
    InvalidArgumentError,
    NonDeterminismError,
    NonRetryableError,
    PayloadError,
    QueryNotFoundError,
    UpdateFailedError,
    UpdateNotFoundError,
    UpdateRejectedError,
    WorkflowAlreadyRunningError,
    WorkflowCanceledError,
    WorkflowError,
    WorkflowFailedError,
    WorkflowNotFoundError,
    WorkflowTimeoutError,
)
from ._executor import DurableExecutor, WorkflowFunc, WorkflowHandle
from ._helpers import HumanManager, InteractionRequest, human_activity, llm_activity, tool_activity
from ._hooks import Hooks, compose_hooks
from ._middleware import Middleware, apply_middleware, with_hooks, with_tracing
from ._names import named
from ._registry import Config, ProviderRegistry, list_providers, new, register
from ._store import AppendingStore, StoreClosedError, StoreConflictError, WorkflowStore
from ._types import (
    Duration,
    EventType,
    FailureInfo,
    HistoryEvent,
    ParentClosePolicy,
    RetryPolicy,
    Signal,
    WorkflowFilter,
    WorkflowInfo,
    WorkflowOptions,
    WorkflowState,
    WorkflowStatus,
    default_retry_policy,
)
from ._visibility import WorkflowPage, WorkflowQuery, WorkflowSummary

if TYPE_CHECKING:
    from app.streaming import KafkaExecutor

__all__ = [
    "ActivityCancelledError",
    "ActivityError",
    "AppendingStore",
    "ApplicationError",
    "BlobStore",
    "ChildWorkflowError",
    "ChildWorkflowHandle",
    "ClaimCheckCodec",
    "CodecChain",
    "CompressionCodec",
    "Config",
    "ContinueAsNewError",
    "DefaultExecutor",
    "DurableExecutor",
    "Duration",
    "EncryptionCodec",
    "EventType",
    "ExecutorStoppedError",
    "FailureInfo",
    "HistoryEvent",
    "Hooks",
    "HumanManager",
    "InteractionRequest",
    "InvalidArgumentError",
    "KafkaExecutor",
    "LocalBlobStore",
    "Middleware",
    "NonDeterminismError",
    "NonRetryableError",
    "ParentClosePolicy",
    "PayloadCodec",
    "PayloadCodecError",
    "PayloadError",
    "ProviderRegistry",
    "QueryNotFoundError",
    "RetryPolicy",
    "S3BlobStore",
    "Signal",
    "SignalChannel",
    "StoreClosedError",
    "StoreConflictError",
    "UpdateFailedError",
    "UpdateNotFoundError",
    "UpdateRejectedError",
    "WorkflowAlreadyRunningError",
    "WorkflowCanceledError",
    "WorkflowContext",
    "WorkflowError",
    "WorkflowFailedError",
    "WorkflowFilter",
    "WorkflowFunc",
    "WorkflowHandle",
    "WorkflowInfo",
    "WorkflowNotFoundError",
    "WorkflowOptions",
    "WorkflowPage",
    "WorkflowQuery",
    "WorkflowState",
    "WorkflowStatus",
    "WorkflowStore",
    "WorkflowSummary",
    "WorkflowTimeoutError",
    "activity",
    "apply_middleware",
    "compose_hooks",
    "default_retry_policy",
    "human_activity",
    "list_providers",
    "llm_activity",
    "load_codec",
    "named",
    "new",
    "new_key",
    "register",
    "tool_activity",
    "with_hooks",
    "with_tracing",
]


def __getattr__(name: str) -> Any:
    # lazy: the embedded runtime must not need Kafka's libraries
    if name == "KafkaExecutor":
        from app.streaming import KafkaExecutor

        return KafkaExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
