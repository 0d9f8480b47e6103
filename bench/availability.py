"""How long the partitions of the streaming runtime go unanswered when workers die, stop or join.

``python -m bench.availability`` starts a test broker (Tansu, memory storage),
three worker processes with the test broker's timings (session timeout 3 s,
heartbeat 0.5 s) and one waiting workflow on each executor partition. A
prober queries every one of those workflows in a loop (a query goes to the
partition's owner and back, like every command). Then, each once the group
has settled: a worker is SIGKILLed, a replacement joins, a worker is stopped
with SIGTERM, another joins. For each event it prints, over the partitions,
the longest time a query sent after the event waited for its answer: the
window during which the partition had no working owner. ``--static`` runs the
same workers with static membership (``--instance-id``, session timeout 10 s)
and restarts the killed worker under its own id instead of a new one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from app.streaming import KafkaExecutor
from app.streaming._messages import partition_for
from app.streaming.admin import ensure_topics
from app.streaming.settings import test_settings
from app.workflow import WorkflowOptions
from tests import servers
from tests.streaming import crash_app
from tests.streaming.harness import WorkerProcess

PARTITIONS = 6
SETTLE = 2.0
"""Seconds every probe must answer quickly before the next event."""
AFTER = 25.0
"""Seconds after an event whose probes count for it."""


@dataclass
class Probe:
    """Queries of one partition's workflow: (sent, answered) times."""

    workflow_id: str
    partition: int
    answers: list[tuple[float, float]] = field(default_factory=list)

    def window(self, start: float, end: float) -> float:
        """The longest wait of a query sent in [start, end)."""
        waits = [a - s for s, a in self.answers if start <= s < end]
        return max(waits, default=0.0)

    def quick_since(self, moment: float, bound: float = 0.5) -> bool:
        recent = [(s, a) for s, a in self.answers if s >= moment]
        return bool(recent) and all(a - s < bound for s, a in recent)


def _ids(partitions: int) -> list[str]:
    found: dict[int, str] = {}
    i = 0
    while len(found) < partitions:
        wid = f"probe-{i}"
        found.setdefault(partition_for(wid, partitions), wid)
        i += 1
    return [found[p] for p in range(partitions)]


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


async def _probe(ex: KafkaExecutor, probe: Probe, stop: asyncio.Event) -> None:
    while not stop.is_set():
        sent = time.monotonic()
        with contextlib.suppress(Exception):  # an unanswered query counts as its wait
            await ex.query(probe.workflow_id, "status")
        probe.answers.append((sent, time.monotonic()))
        await asyncio.sleep(0.05)


async def run(static: bool, verbose: bool) -> list[tuple[str, list[float]]]:
    workdir = Path(tempfile.mkdtemp(prefix="availability-"))
    broker = servers.tansu(workdir).start()
    bootstrap = f"127.0.0.1:{broker.port}"
    app_id = f"avail-{uuid.uuid4().hex[:8]}"
    session = 10.0 if static else 3.0
    settings = test_settings(bootstrap, app_id=app_id, partitions=PARTITIONS, request_timeout=60)
    await ensure_topics(settings)
    workers: dict[str, tuple[WorkerProcess, int]] = {}

    def start(name: str) -> None:
        port = servers.free_port()
        args = ["--metrics-port", str(port)]
        if static:
            args += ["--instance-id", name]
        worker = WorkerProcess(
            f"{name}-{len(workers)}",
            bootstrap,
            app_id,
            "tests.streaming.crash_app",
            workdir,
            partitions=PARTITIONS,
            extra_env={"STREAMFLOW_SESSION_TIMEOUT": str(session), "STREAMFLOW_LOG_LEVEL": "INFO"},
            args=args,
        ).start()
        workers[name] = (worker, port)

    async def settled(probes: list[Probe]) -> None:
        deadline = time.monotonic() + 120
        mark = time.monotonic()
        while True:
            alive = [(w, p) for w, p in workers.values() if w.alive]
            if not all(_ready(p) for _, p in alive):
                mark = time.monotonic()
            elif time.monotonic() - mark >= SETTLE and all(x.quick_since(mark) for x in probes):
                return
            if time.monotonic() > deadline:
                raise TimeoutError("the group did not settle within 120 s")
            await asyncio.sleep(0.1)

    results: list[tuple[str, list[float]]] = []
    stop = asyncio.Event()
    try:
        for name in ("w1", "w2", "w3"):
            start(name)
        async with KafkaExecutor(settings=settings) as ex:
            probes = [Probe(wid, p) for p, wid in enumerate(_ids(PARTITIONS))]
            for probe in probes:
                options = WorkflowOptions(id=probe.workflow_id, input=0)
                await ex.execute(crash_app.signalled, options)
            tasks = [asyncio.create_task(_probe(ex, probe, stop)) for probe in probes]
            await settled(probes)
            plan: list[tuple[str, str]] = [
                ("SIGKILL a worker", "kill w1"),
                (
                    "the same worker restarts (static id)" if static else "a new worker joins",
                    "start w1" if static else "start w4",
                ),
                ("SIGTERM a worker", "term w2"),
                ("a new worker joins", "start w5"),
            ]
            for label, action in plan:
                verb, name = action.split()
                at = time.monotonic()
                if verb == "kill":
                    workers[name][0].kill()
                elif verb == "term":
                    await asyncio.to_thread(workers[name][0].stop)
                else:
                    start(name)
                await asyncio.sleep(1.0)
                await settled(probes)
                windows = [p.window(at, at + AFTER) for p in probes]
                results.append((label, windows))
                if verbose:
                    print(label, [f"{w:.2f}" for w in windows], flush=True)
            stop.set()
            await asyncio.gather(*tasks)
    finally:
        for worker, _ in workers.values():
            worker.kill()
        broker.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.availability", description=__doc__)
    parser.add_argument("--static", action="store_true", help="static group membership")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    mode = "static membership, session 10 s" if args.static else "session timeout 3 s"
    by_event: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for label, windows in asyncio.run(run(args.static, args.verbose)):
            by_event.setdefault(label, []).append(max(windows))
            by_event.setdefault(label + " (median partition)", []).append(
                statistics.median(windows)
            )
    print(f"Partition unavailability, 3 workers, {PARTITIONS} partitions ({mode}):")
    for label, values in by_event.items():
        low, high = min(values), max(values)
        span = f"{low:5.2f}-{high:5.2f}" if low != high else f"{low:5.2f}"
        print(f"  {label:<48} {span} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
