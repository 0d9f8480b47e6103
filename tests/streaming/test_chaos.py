"""Chaos: workers SIGKILLed, stopped, replaced and added, and the broker restarted, mid-run.

One seed of the scenario in ``tests/streaming/chaos.py`` (``python -m
bench.chaos`` runs many): three worker processes, six random SIGKILLs and
SIGTERMs each followed by a replacement, a worker joining, and one restart of
the broker (Tansu on s3 storage against a local moto server, so its data
survives), while 30 workflows run activities (half without a timeout), a
durable sleep and a signal each. Every workflow must complete with its exact
result within the bound, each history must be well formed, and an activity
attempt may run twice only if a disruption fell between its first run and its
result.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.streaming import chaos

pytestmark = pytest.mark.crash

CONFIG = chaos.Config(seed=7, workflows=30, steps=10, partitions=3, disruptions=6, bound=240.0)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[chaos.Broker]:
    broker = chaos.Broker(tmp_path)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.mark.timeout(420)
async def test_every_workflow_completes_through_kills_stops_joins_and_a_broker_restart(
    tmp_path: Path, broker: chaos.Broker
) -> None:
    bootstrap = broker.start()
    lines: list[str] = []
    report = await chaos.run(CONFIG, tmp_path, bootstrap, broker.restart, log=lines.append)
    kinds = [what.split()[0] for _, what in report.disruptions]
    assert kinds.count("broker") == 1, kinds
    assert kinds.count("join") == 1, kinds
    assert kinds.count("kill") + kinds.count("term") == CONFIG.disruptions, kinds
    assert report.ok, "\n".join([report.summary(), *report.problems, "disruptions:", *lines])
