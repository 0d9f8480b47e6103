"""Prometheus metrics of a streaming worker, served on ``/metrics``.

Each worker has its own registry, so several workers in one process (tests)
do not collide; the CLI worker serves its registry on ``metrics_port``
(:mod:`._health`), next to ``/healthz`` and ``/readyz``.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client import Counter as _Counter
from prometheus_client import Gauge as _Gauge
from prometheus_client import Histogram as _Histogram


class _Children:
    """``labels()`` answered from a dict after the first call for those values.

    prometheus_client checks the values and takes a lock on every call (about
    10 µs); a worker calls it a dozen times per workflow.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._children: dict[tuple[str, ...], Any] = {}

    def labels(self, *values: Any, **by_name: Any) -> Any:
        if by_name:
            return super().labels(*values, **by_name)  # type: ignore[misc]
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = super().labels(*values)  # type: ignore[misc]
        return child

    def remove(self, *values: Any) -> None:
        self._children.pop(values, None)
        super().remove(*values)  # type: ignore[misc]


class Counter(_Children, _Counter):
    """A counter whose labelled children are cached."""


class Gauge(_Children, _Gauge):
    """A gauge whose labelled children are cached."""


class Histogram(_Children, _Histogram):
    """A histogram whose labelled children are cached."""


class WorkerMetrics:
    """The counters, gauges and histograms a worker updates."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.commands = Counter(
            "streamflow_commands_total",
            "Commands processed, by kind and outcome",
            ["kind", "outcome"],
            registry=r,
        )
        self.workflows_started = Counter(
            "streamflow_workflows_started_total", "Workflow runs started", registry=r
        )
        self.workflows_ended = Counter(
            "streamflow_workflows_ended_total",
            "Workflow runs ended, by status",
            ["status"],
            registry=r,
        )
        self.activity_seconds = Histogram(
            "streamflow_activity_seconds",
            "Activity attempt duration, by activity and outcome",
            ["activity", "outcome"],
            registry=r,
        )
        self.replays = Counter(
            "streamflow_replays_total", "Workflow instances rebuilt from history", registry=r
        )
        self.cache = Counter(
            "streamflow_cache_total", "Run cache lookups, by result", ["result"], registry=r
        )
        self.cached_runs = Gauge(
            "streamflow_cached_runs", "Running workflows held in memory", registry=r
        )
        self.timer_lag = Histogram(
            "streamflow_timer_lag_seconds",
            "How late a timer fired after its due time",
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.consumer_lag = Gauge(
            "streamflow_consumer_lag",
            "Commands not yet processed, by partition",
            ["partition"],
            registry=r,
        )
        self.dead_letters = Counter(
            "streamflow_dead_letters_total",
            "Messages sent to the dead-letter topic",
            ["reason"],
            registry=r,
        )
        self.duplicates = Counter(
            "streamflow_duplicate_commands_total", "Redelivered commands dropped", registry=r
        )
        self.dispatched = Counter(
            "streamflow_activity_dispatches_total",
            "Activity attempts dispatched, by where: the task topic, or run by this worker "
            "itself (eager)",
            ["where"],
            registry=r,
        )
        self.redrives = Counter(
            "streamflow_redrives_total",
            "Activity tasks sent again because their attempt stayed pending past its deadline",
            registry=r,
        )
        self.oldest_attempt = Gauge(
            "streamflow_oldest_pending_attempt_seconds",
            "Age of the oldest pending activity attempt, by owned partition",
            ["partition"],
            registry=r,
        )
        self.oldest_timer = Gauge(
            "streamflow_oldest_due_timer_seconds",
            "How long the most overdue timer has been due, by owned partition",
            ["partition"],
            registry=r,
        )
        self.parked = Gauge(
            "streamflow_parked_runs",
            "Runs stuck on a non-determinism or unknown type",
            registry=r,
        )
