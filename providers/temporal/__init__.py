"""Temporal provider: workflows run as Temporal workflows, state is read from Temporal.

:class:`TemporalExecutor` implements :class:`~app.workflow.DurableExecutor` on a
Temporal server. Workflow functions and activities are registered with it as
with :class:`~app.workflow.DefaultExecutor`; ``async with`` connects (unless a
``client`` is given) and runs an in-process Temporal worker on the task queue
(``beluga-workflows`` by default).

How the engine maps onto Temporal:

* Each workflow run is a Temporal workflow of the same type name. One dynamic
  Temporal workflow class drives the engine's own deterministic core
  (``WorkflowInstance``), so workflow functions run unchanged and behave as on
  the embedded runtime; Temporal replays that driver, and the core replays the
  code. The class is unsandboxed: the core already runs workflow code on its
  own deterministic loop (no threads, no I/O loop, time and randomness from
  history), and the sandbox would re-import the engine and pydantic for every
  run.
* Each activity *attempt* is one Temporal activity (activity id
  ``"<step>.<attempt>"``, Temporal retry policy of one attempt) and each retry
  backoff is a Temporal timer: retries follow the engine's
  :class:`~app.workflow.RetryPolicy` exactly, jitter included (Temporal's own
  retry policy has no jitter), and every attempt is visible in Temporal's
  history. An attempt interrupted by a stopping worker, or whose worker stops
  heartbeating (``heartbeat_timeout``), is run again as the same attempt.
* ``activity.heartbeat(details)`` is Temporal's ``activity.heartbeat``. An
  activity given ``execute_activity(heartbeat_timeout=)`` gets that Temporal
  heartbeat timeout and heartbeats itself; missing it fails the attempt (a
  timeout, retried by the engine's policy). The last details (Temporal's
  ``last_heartbeat_details``, or sent along with an activity error) reach the
  next attempt as a second activity argument and
  ``activity.info().heartbeat_details``.
  ``execute_activity(timeout=)`` is the attempt's start-to-close timeout;
  without one, ``activity_timeout`` applies (Temporal requires a bound).
* ``ctx.sleep`` and other workflow timers are Temporal timers, with a summary
  naming the step; ``WorkflowOptions.timeout`` is Temporal's execution timeout.
* Signals, queries and cancel are Temporal's; a signal's ``sender_id`` travels
  as its second argument.

:class:`TemporalStore` maps Temporal's describe, list and history APIs to
:class:`~app.workflow.WorkflowState` and :class:`~app.workflow.HistoryEvent`;
``save`` and ``delete`` do nothing, because Temporal owns the state.

Hooks fire from the executor that started a workflow (or, for workflows
already running on its task queue when it starts, from that executor, for
events from then on): it follows the workflow's Temporal history (one
long-poll per workflow, only when some hook is set) and calls each hook once
per event after the server recorded it, in history order. ``on_retry`` fires
when the retry backoff timer starts; ``handle.result()`` returns after the
end hooks ran.

Differences from the embedded runtime: Temporal replays a workflow when it has
a workflow task, not when a worker starts, so changed code is reported (as a
failed workflow task, retried by Temporal) at the workflow's next event; an
activity attempt's timeout shows in history as ``activity_failed`` (a
``TimeoutError``), not as ``timer_fired``; and the Temporal worker fails a
workflow task whose activation runs longer than two seconds (its deadlock
detector), so workflow code must not compute for that long between awaits.

Importing this module registers the ``"temporal"`` provider.
"""

from __future__ import annotations

from app.workflow import Config, InvalidArgumentError, register

from ._common import DEFAULT_TARGET_HOST, DEFAULT_TASK_QUEUE, TemporalConnectionError, connect
from ._executor import TemporalExecutor, TemporalHandle
from ._store import TemporalStore

__all__ = [
    "DEFAULT_TARGET_HOST",
    "DEFAULT_TASK_QUEUE",
    "TemporalConnectionError",
    "TemporalExecutor",
    "TemporalHandle",
    "TemporalStore",
    "connect",
]


# -- the registry ---------------------------------------------------------------------
_EXTRA_KEYS = frozenset(
    {
        "client",
        "target_host",
        "namespace",
        "task_queue",
        "workflows",
        "activities",
        "hooks",
        "activity_threads",
        "codec",
    }
)


def _factory(config: Config) -> TemporalExecutor:
    unknown = set(config.extra) - _EXTRA_KEYS
    if unknown:
        raise InvalidArgumentError(
            f"unknown Config.extra keys for provider 'temporal': {', '.join(sorted(unknown))} "
            f"(accepted: {', '.join(sorted(_EXTRA_KEYS))})"
        )
    if config.store is not None:
        raise InvalidArgumentError(
            "the 'temporal' provider keeps workflow state in Temporal; leave Config.store unset "
            "(read it back with TemporalStore)"
        )
    return TemporalExecutor(**config.extra)


register("temporal", _factory)
