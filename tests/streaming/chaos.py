"""A chaos scenario for the streaming runtime: workflows run while workers and the broker die.

Worker processes (``python -m app worker``) share the executor partitions and
the activities while :func:`tests.streaming.chaos_app.chaotic` workflows run
activities (half without a timeout), durable sleeps and a signal each. A
seeded schedule SIGKILLs and SIGTERMs random workers (each replaced at once),
adds a worker, and restarts the broker itself once (a broker with durable
storage: Tansu on s3 storage against a local moto server). Signals are sent
while this goes on.

:func:`run` checks what must hold whatever happened: every workflow completes
with its exact result within ``Config.bound``; each history is well formed
(each step completed once, events numbered without gaps); and an activity
attempt ran more than once only if a disruption (a kill, a stop, a join, the
broker restart) fell between its first run and the recording of its result.

``tests/streaming/test_chaos.py`` runs one seed in the suite;
``python -m bench.chaos`` runs many.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from app.streaming import KafkaExecutor
from app.streaming.admin import ensure_topics
from app.streaming.settings import test_settings
from app.workflow import (
    EventType,
    Signal,
    WorkflowError,
    WorkflowOptions,
    WorkflowState,
    WorkflowStatus,
)
from tests import servers
from tests.streaming import chaos_app
from tests.streaming.harness import OWNED, WorkerProcess

SLACK = 1.0
"""Seconds of clock slack when placing an attempt's runs against disruptions."""


@dataclass
class Config:
    """One chaos run."""

    seed: int
    workflows: int = 30
    steps: int = 30
    workers: int = 3
    partitions: int = 6
    disruptions: int = 6
    """SIGKILLs and SIGTERMs (each followed by a replacement worker)."""
    gap: tuple[float, float] = (2.0, 4.0)
    """Seconds between two disruptions (drawn from this range)."""
    restart_broker: bool = True
    join: bool = True
    bound: float = 180.0
    """Seconds from the first start within which every workflow must have completed."""
    call_deadline: float = 60.0
    """The client's deadline per call. With a disruption every 2-4 s, one partition
    went 22 s without a working owner on a loaded machine: handed to three
    replacements in a row, each killed or stopped before it had read the partition."""
    redrive_after: float = 10.0
    """Above what an attempt waits in a busy task queue here, so that re-drives mean
    something was lost."""
    fetch_wait_ms: int = 500
    """Longer than the test broker needs on memory storage: on s3 storage a fetch
    lists and reads the partition's objects on the moto server, and one that takes
    longer than its wait comes back empty (a partition of many batches would starve
    a short wait); fewer fetches also leave the moto server less to do."""


@dataclass
class Report:
    """What a run did and saw."""

    config: Config
    disruptions: list[tuple[float, str]] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0
    reruns: dict[tuple[str, int, int], int] = field(default_factory=dict)
    attempts_run: int = 0
    slowest_call: float = 0.0
    """Seconds the slowest ``signal`` call took (a rebalance in progress waits)."""
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        kinds = Counter(what.split()[0] for _, what in self.disruptions)
        return (
            f"seed {self.config.seed}: {'ok' if self.ok else 'FAILED'}; "
            f"{self.config.workflows} workflows done in {self.finished - self.started:.1f}s; "
            f"disruptions {dict(kinds)}; {self.attempts_run} attempt runs, "
            f"{sum(n - 1 for n in self.reruns.values())} re-runs; "
            f"slowest signal() {self.slowest_call:.1f}s"
        )


class Broker:
    """The broker of the scenario: Tansu with durable (s3) storage, restartable."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.moto = servers.moto(workdir)
        self.bucket = "chaos"
        self.tansu: servers.Server | None = None

    def start(self) -> str:
        self.moto.start()
        servers.create_bucket(self.moto.port, self.bucket)
        self.tansu = servers.tansu_s3(self.workdir, self.moto.port, self.bucket).start()
        return f"127.0.0.1:{self.tansu.port}"

    def restart(self) -> None:
        """SIGKILL the broker and start it again on the same port (its data survives)."""
        assert self.tansu is not None
        self.tansu.kill()
        self.tansu.start()

    def stop(self) -> None:
        if self.tansu is not None:
            self.tansu.stop()
        self.moto.stop()


async def run(
    config: Config,
    workdir: Path,
    bootstrap: str,
    restart_broker: Callable[[], None] | None,
    log: Callable[[str], None] = lambda line: None,
) -> Report:
    """Run the scenario against the broker at ``bootstrap``; ``restart_broker`` restarts it."""
    report = Report(config)
    rng = random.Random(config.seed)
    app_id = f"chaos-{config.seed}-{int(time.time() * 1000) % 10**8}"
    runs_file = workdir / "runs.txt"
    settings = test_settings(
        bootstrap,
        app_id=app_id,
        partitions=config.partitions,
        fetch_wait_ms=config.fetch_wait_ms,
        request_timeout=config.call_deadline,
    )
    await ensure_topics(settings)
    count = 0
    workers: list[WorkerProcess] = []

    def new_worker() -> WorkerProcess:
        nonlocal count
        count += 1
        worker = WorkerProcess(
            f"w{count}",
            bootstrap,
            app_id,
            "tests.streaming.chaos_app",
            workdir,
            partitions=config.partitions,
            extra_env={
                "STREAMFLOW_TEST_RUNS": str(runs_file),
                "STREAMFLOW_LOG_LEVEL": "INFO",
                "STREAMFLOW_FETCH_WAIT_MS": str(config.fetch_wait_ms),
                "STREAMFLOW_REDRIVE_AFTER": str(config.redrive_after),
            },
        ).start()
        workers.append(worker)
        return worker

    def disrupt(what: str) -> None:
        report.disruptions.append((time.time(), what))
        log(f"{time.time() - report.started:6.1f}s {what}")

    signals = {f"chaos-{i}": 1000 + i for i in range(config.workflows)}
    try:
        for _ in range(config.workers):
            new_worker()
        for worker in workers:
            await asyncio.to_thread(worker.wait_for_log, OWNED, 60.0)
        async with KafkaExecutor(settings=settings) as ex:
            report.started = time.time()
            handles = await asyncio.gather(
                *(
                    ex.execute(chaos_app.chaotic, WorkflowOptions(id=wid, input=config.steps))
                    for wid in signals
                )
            )
            plan = ["kill", "term"] * config.disruptions
            rng.shuffle(plan)
            plan = plan[: config.disruptions]
            if config.join:
                plan.insert(rng.randrange(len(plan) + 1), "join")
            if config.restart_broker and restart_broker is not None:
                plan.insert(rng.randrange(1, len(plan) + 1), "broker")
            signal_at = rng.randrange(1, len(plan) + 1) if plan else 0
            sending: asyncio.Task[None] | None = None
            for i, action in enumerate(plan):
                await asyncio.sleep(rng.uniform(*config.gap))
                if i == signal_at - 1:
                    sending = asyncio.create_task(_send_signals(ex, signals, rng, report))
                alive = [w for w in workers if w.alive]
                if action == "broker":
                    assert restart_broker is not None
                    disrupt("broker restart")
                    await asyncio.to_thread(restart_broker)
                elif action == "join":
                    disrupt(f"join {new_worker().name}")
                else:
                    victim = rng.choice(alive)
                    if action == "kill":
                        disrupt(f"kill {victim.name}")
                        victim.kill()
                    else:
                        disrupt(f"term {victim.name}")
                        await asyncio.to_thread(victim.stop)
                    disrupt(f"replace {victim.name} by {new_worker().name}")
            if sending is None:
                sending = asyncio.create_task(_send_signals(ex, signals, rng, report))
            remaining = config.bound - (time.time() - report.started)
            try:
                await asyncio.wait_for(sending, max(remaining, 1.0))
                results = await asyncio.wait_for(
                    asyncio.gather(
                        *(h.result(timeout=max(remaining, 1.0)) for h in handles),
                        return_exceptions=True,
                    ),
                    max(config.bound - (time.time() - report.started), 1.0),
                )
            except TimeoutError:
                results = [TimeoutError("not done within the bound")] * len(handles)
            report.finished = time.time()
            for handle, result in zip(handles, results, strict=True):
                want = chaos_app.expected(config.steps, signals[handle.id])
                if result != want:
                    report.problems.append(f"{handle.id}: {result!r}, expected {want}")
            states = [await _describe(ex, h.id) for h in handles]
        _check(report, states, runs_file)
        if report.problems:
            for worker in workers:
                worker.dump_stacks()
            report.problems.append(f"worker logs in {workdir}")
    finally:
        for worker in workers:
            worker.kill()
    return report


async def _send_signals(
    ex: KafkaExecutor, signals: dict[str, int], rng: random.Random, report: Report
) -> None:
    order = list(signals)
    rng.shuffle(order)
    for wid in order:
        while True:
            began = time.monotonic()
            try:
                await ex.signal(wid, Signal(name="go", payload=signals[wid]))
                report.slowest_call = max(report.slowest_call, time.monotonic() - began)
                break
            except WorkflowError as exc:
                # the client's own deadline passed: a failure, but the run goes on
                report.problems.append(f"signal to {wid} failed at {time.time():.1f}: {exc}")


async def _describe(ex: KafkaExecutor, workflow_id: str) -> WorkflowState | str:
    try:
        return await ex.describe(workflow_id)
    except Exception as exc:  # reported, not raised: the other checks still run
        return f"cannot describe {workflow_id}: {exc!r}"


def _check(report: Report, states: list[WorkflowState | str], runs_file: Path) -> None:
    starts: dict[tuple[str, int, int], list[float]] = defaultdict(list)
    if runs_file.exists():
        for line in runs_file.read_text().splitlines():
            what, wid, step, attempt, at = line.split()
            if what == "start":
                starts[(wid, int(step), int(attempt))].append(float(at))
    report.attempts_run = sum(len(v) for v in starts.values())
    report.reruns = {k: len(v) for k, v in starts.items() if len(v) > 1}
    moments = [at for at, _ in report.disruptions]
    for state in states:
        if isinstance(state, str):
            report.problems.append(state)
            continue
        wid = state.workflow_id
        if state.status is not WorkflowStatus.COMPLETED:
            report.problems.append(f"{wid} is {state.status.value}: {state.error}")
        ids = [e.id for e in state.history]
        if ids != list(range(1, len(ids) + 1)):
            report.problems.append(f"{wid}: event ids {ids}")
        done = Counter(e.step for e in state.history if e.type is EventType.ACTIVITY_COMPLETED)
        twice = [step for step, n in done.items() if n > 1]
        if twice:
            report.problems.append(f"{wid}: steps completed twice: {twice}")
        ended = {
            (e.step, e.attempt): e.timestamp.timestamp()
            for e in state.history
            if e.type
            in (EventType.ACTIVITY_COMPLETED, EventType.ACTIVITY_FAILED, EventType.TIMER_FIRED)
            and e.step is not None
        }
        for (rwid, step, attempt), n in report.reruns.items():
            if rwid != wid:
                continue
            first = starts[(rwid, step, attempt)][0]
            end = ended.get((step, attempt), report.finished)
            if not any(first - SLACK <= at <= end + SLACK for at in moments):
                report.problems.append(
                    f"{wid}: attempt {attempt} of step {step} ran {n} times with no "
                    f"disruption between its first run and its result"
                )
