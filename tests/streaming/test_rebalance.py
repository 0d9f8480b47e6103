"""Workers join and leave while workflows run; every workflow completes, each step once.

Two worker processes share the executor partitions and 20 workflows start:
``signalled`` ones that wait for two signals, ``ticking`` ones that run an
activity and a durable sleep until told to stop, and short ``chain`` ones. A
third worker joins; once the partitions are spread over the three, the first
signals go out. One of the original workers then leaves, with SIGTERM (a
graceful leave) or SIGKILL (a crash the session timeout notices); once the
other two own every partition, the second signals go out and, after every
ticker has made progress on the new owners, the tickers are stopped. Every
workflow must complete with the right result and a well-formed history (each
step completed once, no activity run after its completion was recorded).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from app.streaming import KafkaExecutor
from app.streaming.admin import ensure_topics
from app.streaming.settings import test_settings
from app.workflow import EventType, Hooks, Signal, WorkflowOptions, WorkflowState
from tests.streaming import crash_app
from tests.streaming.harness import OWNED, WorkerProcess
from tests.streaming.test_crash import _runs, check_history

pytestmark = pytest.mark.crash

PARTITIONS = 4
WAIT = 60.0
OWNERSHIP_WAIT = 30.0
SIGNALLED = 8
TICKERS = 8
CHAINS = 4
CHAIN = 6
TICK = 0.3
_OWNED_LINE = re.compile(re.escape(OWNED) + r": \[([0-9, ]*)\]")


def _app_id(tmp_path: Path) -> str:
    return "rebalance-" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:12]


def owned_partitions(worker: WorkerProcess) -> set[int] | None:
    """The executor partitions ``worker`` last logged owning (None: it logged none yet)."""
    found = _OWNED_LINE.findall(worker.log())
    if not found:
        return None
    return {int(p) for p in found[-1].split(",") if p.strip()}


async def wait_for_spread(
    workers: Sequence[WorkerProcess], timeout: float = OWNERSHIP_WAIT
) -> dict[str, set[int]]:
    """Wait until the latest ownership logs of ``workers`` split every partition between them.

    A worker's log is all there is to await, so it is polled with a deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        owned = {w.name: owned_partitions(w) for w in workers}
        sets = [s for s in owned.values() if s is not None]
        if (
            len(sets) == len(workers)
            and sum(len(s) for s in sets) == PARTITIONS
            and set().union(*sets) == set(range(PARTITIONS))
        ):
            return {name: s for name, s in owned.items() if s is not None}
        for w in workers:
            if not w.alive:
                raise AssertionError(f"worker {w.name} exited; log:\n{w.log()[-4000:]}")
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {w.name}\n{w.log()[-3000:]}" for w in workers)
            raise AssertionError(
                f"the partitions were not split between {[w.name for w in workers]} within "
                f"{timeout:.0f}s (last logged: {owned}):\n{logs}"
            )
        await asyncio.sleep(0.05)


class Progress:
    """When each ticker last completed an activity (wall clock, from the client's hooks)."""

    def __init__(self, workflow_ids: Sequence[str]) -> None:
        self.ids = set(workflow_ids)
        self.last: dict[str, float] = {}
        self._changed = asyncio.Event()

    def completed(self, workflow_id: str, result: object) -> None:
        if workflow_id in self.ids:
            self.last[workflow_id] = time.time()
            self._changed.set()

    def behind(self, moment: float) -> list[str]:
        return sorted(w for w in self.ids if self.last.get(w, 0.0) <= moment)

    async def all_after(self, moment: float, timeout: float) -> None:
        """Wait until every ticker completed an activity after ``moment``."""
        try:
            async with asyncio.timeout(timeout):
                while self.behind(moment):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"tickers made no progress within {timeout:.0f}s: {self.behind(moment)}"
            ) from None


async def _diagnose(
    ex: KafkaExecutor, handles: Sequence[Any], workers: Sequence[WorkerProcess]
) -> str:
    """The stacks of the live workers (in their logs) and the runs still running."""
    for worker in workers:
        worker.dump_stacks()

    async def describe(workflow_id: str) -> str | None:
        try:
            state = await asyncio.wait_for(ex.describe(workflow_id), 10.0)
        except Exception as exc:  # an owner that does not answer is worth reporting too
            return f"{workflow_id}: cannot describe: {exc!r}"
        if state.status.value != "running":
            return None
        events = [(e.id, e.type.value, e.step, e.attempt) for e in state.history]
        return f"{workflow_id}: {state.error} {events}"

    found = await asyncio.gather(*(describe(h.id) for h in handles))
    return "\n".join(line for line in found if line is not None)


def _completions(state: WorkflowState) -> list[float]:
    return [
        e.timestamp.timestamp() for e in state.history if e.type is EventType.ACTIVITY_COMPLETED
    ]


async def _join_then_leave(tmp_path: Path, kafka_bootstrap: str, leave: str) -> None:
    app_id = _app_id(tmp_path)
    runs_file = tmp_path / "runs.txt"
    settings = test_settings(kafka_bootstrap, app_id=app_id, partitions=PARTITIONS)
    await ensure_topics(settings)
    env = {"STREAMFLOW_TEST_RUNS": str(runs_file)}

    def worker(i: int) -> WorkerProcess:
        return WorkerProcess(
            f"w{i}",
            kafka_bootstrap,
            app_id,
            "tests.streaming.crash_app",
            tmp_path,
            partitions=PARTITIONS,
            extra_env=env,
        )

    workers = [worker(0), worker(1)]
    tickers = [f"tick-{i}" for i in range(TICKERS)]
    progress = Progress(tickers)
    try:
        for w in workers:
            w.start()
        await wait_for_spread(workers, WAIT)
        hooks = Hooks(on_activity_complete=progress.completed)
        async with KafkaExecutor(settings=settings, hooks=hooks) as ex:
            handles = list(
                await asyncio.gather(
                    *(
                        ex.execute(crash_app.signalled, WorkflowOptions(id=f"sig-{i}", input=i))
                        for i in range(SIGNALLED)
                    ),
                    *(
                        ex.execute(crash_app.ticking, WorkflowOptions(id=wid, input=TICK))
                        for wid in tickers
                    ),
                    *(
                        ex.execute(crash_app.chain, WorkflowOptions(id=f"chain-{i}", input=CHAIN))
                        for i in range(CHAINS)
                    ),
                )
            )
            signalled = handles[:SIGNALLED]
            try:
                await progress.all_after(0.0, WAIT)
                joined_at = time.time()
                third = worker(2).start()
                workers.append(third)
                await asyncio.to_thread(third.wait_for_log, OWNED, OWNERSHIP_WAIT)
                await wait_for_spread(workers)
                await asyncio.gather(
                    *(
                        ex.signal(h.id, Signal(name="go", payload=100 + i))
                        for i, h in enumerate(signalled)
                    )
                )

                leaving = workers[0]
                if leave == "sigterm":
                    code = await asyncio.to_thread(leaving.stop)
                    assert code == 0, f"{leaving.name} exited {code}:\n{leaving.log()[-4000:]}"
                else:
                    leaving.kill()
                left_at = time.time()
                await wait_for_spread(workers[1:])
                moved_at = time.time()
                await asyncio.gather(
                    *(
                        ex.signal(h.id, Signal(name="go", payload=200 + i))
                        for i, h in enumerate(signalled)
                    )
                )
                # a completion heard of after the move was recorded after the leave: moving
                # the partitions takes far longer than a hook takes to arrive
                await progress.all_after(moved_at, WAIT)
                await asyncio.gather(*(ex.signal(wid, Signal(name="stop")) for wid in tickers))
                results = await asyncio.wait_for(
                    asyncio.gather(*(h.result(timeout=WAIT) for h in handles)), WAIT
                )
            except (TimeoutError, AssertionError) as exc:
                raise AssertionError(
                    f"{exc}\nworker logs in {tmp_path}; workflows still running:\n"
                    f"{await _diagnose(ex, handles, workers)}"
                ) from None

            assert results[:SIGNALLED] == [[i + 3, 100 + i, 200 + i] for i in range(SIGNALLED)]
            assert results[SIGNALLED + TICKERS :] == [CHAIN] * CHAINS
            runs = _runs(runs_file)
            for handle, result in zip(handles, results, strict=True):
                state = await ex.describe(handle.id)
                check_history(state, runs)
                if handle.id in progress.ids:
                    done = _completions(state)
                    assert result == len(done), f"{handle.id}: {result} != {len(done)} completions"
                    assert min(done) < joined_at < left_at < max(done), (
                        f"{handle.id} did not run across the join and the leave"
                    )
    finally:
        for w in workers:
            w.kill()


@pytest.mark.parametrize("leave", ["sigterm", "sigkill"])
async def test_workers_join_and_leave_while_workflows_run(
    tmp_path: Path, kafka_bootstrap: str, leave: str
) -> None:
    await _join_then_leave(tmp_path, kafka_bootstrap, leave)


async def test_sigterm_with_activities_in_flight(tmp_path: Path, kafka_bootstrap: str) -> None:
    """SIGTERM while activities run: exit 0 without crashes; a new worker finishes them.

    The worker used to cancel its in-flight activity tasks under the activities
    agent: each actor crashed, Faust's supervisor gave up with SystemExit(1)
    and the final offset commit was cancelled.
    """
    app_id = _app_id(tmp_path)
    runs_file = tmp_path / "runs.txt"
    settings = test_settings(kafka_bootstrap, app_id=app_id, partitions=PARTITIONS)
    await ensure_topics(settings)
    env = {"STREAMFLOW_TEST_RUNS": str(runs_file)}

    def worker(name: str) -> WorkerProcess:
        return WorkerProcess(
            name,
            kafka_bootstrap,
            app_id,
            "tests.streaming.crash_app",
            tmp_path,
            partitions=PARTITIONS,
            extra_env=env,
        )

    first, second = worker("first"), worker("second")
    try:
        first.start()
        await asyncio.to_thread(first.wait_for_log, OWNED, WAIT)
        async with KafkaExecutor(settings=settings) as ex:
            handles = [
                await ex.execute(crash_app.lingering, WorkflowOptions(id=f"linger-{i}", input=2.0))
                for i in range(6)
            ]
            deadline = time.monotonic() + WAIT
            while len(_runs(runs_file)) < len(handles):  # the activities' own record
                assert time.monotonic() < deadline, f"activities did not start:\n{first.log()}"
                await asyncio.sleep(0.05)
            code = await asyncio.to_thread(first.stop)
            log = first.log()
            assert "Traceback" not in log, log[-6000:]
            assert code == 0, f"SIGTERM exit code {code}:\n{log[-6000:]}"
            second.start()
            results = await asyncio.wait_for(
                asyncio.gather(*(h.result(timeout=WAIT) for h in handles)), WAIT
            )
            assert results == [2.0] * len(handles)
            runs = _runs(runs_file)
            for handle in handles:
                check_history(await ex.describe(handle.id), runs)
    finally:
        first.kill()
        second.kill()
