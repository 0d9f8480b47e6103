"""The worker's labelled metrics: children cached, and exported as prometheus_client does."""

from __future__ import annotations

from prometheus_client import generate_latest

from app.streaming._metrics import WorkerMetrics


def test_labelled_children_are_cached_and_exported() -> None:
    metrics = WorkerMetrics()
    child = metrics.commands.labels("start", "ok")
    assert metrics.commands.labels("start", "ok") is child
    child.inc()
    metrics.commands.labels("start", "ok").inc(2)
    metrics.commands.labels(kind="signal", outcome="ok").inc()
    text = generate_latest(metrics.registry).decode()
    assert 'streamflow_commands_total{kind="start",outcome="ok"} 3.0' in text
    assert 'streamflow_commands_total{kind="signal",outcome="ok"} 1.0' in text


def test_a_removed_child_starts_again_from_zero() -> None:
    metrics = WorkerMetrics()
    metrics.consumer_lag.labels("3").set(7)
    metrics.consumer_lag.remove("3")
    assert 'partition="3"' not in generate_latest(metrics.registry).decode()
    metrics.consumer_lag.labels("3").set(1)
    text = generate_latest(metrics.registry).decode()
    assert 'streamflow_consumer_lag{partition="3"} 1.0' in text
