"""SIGKILL a streaming worker mid-workflow; the surviving worker finishes every workflow.

Two worker processes share the executor partitions and the activities. One is
killed at several points: inside an activity (the activity kills its own
process), and after a given number of recorded activity completions. The
other takes the partitions over. Every workflow must complete with the right
result, a well-formed history (each step completed once), and no activity
run that started after its completion had been recorded.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

import pytest

from app.streaming import KafkaExecutor
from app.streaming.admin import ensure_topics
from app.streaming.settings import test_settings
from app.workflow import EventType, Hooks, WorkflowError, WorkflowOptions, WorkflowState
from tests.streaming import crash_app
from tests.streaming.harness import OWNED, WorkerProcess

pytestmark = pytest.mark.crash

WAIT = 90.0
CHAIN = 6


def _app_id(tmp_path: Path) -> str:
    return "crash-" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:12]


def _runs(path: Path) -> list[tuple[str, int, int, float]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        wid, step, attempt, started = line.split()
        rows.append((wid, int(step), int(attempt), float(started)))
    return rows


def check_history(state: WorkflowState, runs: list[tuple[str, int, int, float]]) -> None:
    """Each step completed once; no run began after its step's completion was recorded."""
    history = state.history
    assert [e.id for e in history] == list(range(1, len(history) + 1))
    completed = [e for e in history if e.type is EventType.ACTIVITY_COMPLETED]
    steps = Counter(e.step for e in completed)
    assert all(n == 1 for n in steps.values()), f"a step completed twice: {steps}"
    started = Counter((e.step, e.attempt) for e in history if e.type is EventType.ACTIVITY_STARTED)
    assert all(n == 1 for n in started.values()), f"an attempt started twice: {started}"
    recorded_at: dict[int, datetime] = {e.step: e.timestamp for e in completed if e.step}
    for wid, step, attempt, began in runs:
        if wid != state.workflow_id or step not in recorded_at:
            continue
        assert began <= recorded_at[step].timestamp(), (
            f"{wid} step {step} attempt {attempt} ran at {began}, after its completion "
            f"was recorded at {recorded_at[step].timestamp()}"
        )


async def _run_with_a_kill(
    tmp_path: Path, kafka_bootstrap: str, kill_after: int | None, crashing: int
) -> None:
    app_id = _app_id(tmp_path)
    runs_file = tmp_path / "runs.txt"
    settings = test_settings(kafka_bootstrap, app_id=app_id)
    await ensure_topics(settings)
    env = {"STREAMFLOW_TEST_RUNS": str(runs_file)}
    workers = [
        WorkerProcess(
            f"w{i}", kafka_bootstrap, app_id, "tests.streaming.crash_app", tmp_path, extra_env=env
        )
        for i in range(2)
    ]
    completions = 0
    enough = asyncio.Event()

    def completed(workflow_id: str, result: object) -> None:
        nonlocal completions
        completions += 1
        if kill_after is not None and completions >= kill_after:
            enough.set()

    try:
        for worker in workers:
            worker.start()
        workers[0].wait_for_log(OWNED)
        workers[1].wait_for_log(OWNED)
        hooks = Hooks(on_activity_complete=completed)
        async with KafkaExecutor(settings=settings, hooks=hooks) as ex:
            handles = [
                await ex.execute(crash_app.chain, WorkflowOptions(id=f"chain-{i}", input=CHAIN))
                for i in range(8)
            ]
            handles += [
                await ex.execute(crash_app.crashing, WorkflowOptions(id=f"crash-{i}", input=i))
                for i in range(crashing)
            ]
            if kill_after is not None:
                await asyncio.wait_for(enough.wait(), WAIT)
                workers[0].kill()
            try:
                results = await asyncio.wait_for(
                    asyncio.gather(*(h.result(timeout=WAIT) for h in handles)), WAIT
                )
            except (TimeoutError, WorkflowError):
                for worker in workers:
                    worker.dump_stacks()
                stuck = []
                for h in handles:
                    state = await ex.describe(h.id)
                    if state.status.value == "running":
                        events = [(e.id, e.type.value, e.step, e.attempt) for e in state.history]
                        stuck.append(f"{h.id}: {state.error} {events}")
                raise AssertionError("workflows did not finish:\n" + "\n".join(stuck)) from None
            assert results[:8] == [CHAIN] * 8
            assert results[8:] == [((i + 1) * 10) + 1 for i in range(crashing)]
            runs = _runs(runs_file)
            try:
                for handle in handles:
                    check_history(await ex.describe(handle.id), runs)
            except WorkflowError:
                for worker in workers:
                    worker.dump_stacks()
                raise
        assert sum(1 for w in workers if not w.alive) >= 1, "no worker was killed"
    finally:
        for worker in workers:
            worker.kill()


async def test_kill_inside_an_activity(tmp_path: Path, kafka_bootstrap: str) -> None:
    # crash_once kills whichever worker runs it first; the other one takes over
    await _run_with_a_kill(tmp_path, kafka_bootstrap, None, crashing=2)


@pytest.mark.parametrize("kill_after", [1, 12, 30])
async def test_kill_after_some_completions(
    tmp_path: Path, kafka_bootstrap: str, kill_after: int
) -> None:
    (tmp_path / "runs.crashed").write_text("0")  # crash_once does not crash here
    await _run_with_a_kill(tmp_path, kafka_bootstrap, kill_after, crashing=1)


ITEMS = 60  # 0.1 s each: the first attempt is killed about a second in


def _progress(path: Path) -> list[tuple[int, int, int, float]]:
    """(pid, attempt, items done, time) rows written by ``crash_app.process_items``."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        pid, attempt, done, at = line.split()
        rows.append((int(pid), int(attempt), int(done), float(at)))
    return rows


async def _await_progress(path: Path, done: int, timeout: float) -> tuple[int, int, int, float]:
    """The first row with ``done`` items done (another process writes the file: polled)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for row in _progress(path):
            if row[2] >= done:
                return row
        await asyncio.sleep(0.05)
    raise AssertionError(f"no progress to {done} items within {timeout:.0f}s: {_progress(path)}")


async def test_a_killed_activity_worker_is_noticed_by_the_heartbeat_timeout(
    tmp_path: Path, kafka_bootstrap: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL the activities-only worker mid-activity: the other one takes the retry within
    about the heartbeat timeout (not the activity timeout) and resumes from the details."""
    app_id = _app_id(tmp_path)
    runs_file = tmp_path / "runs.txt"
    progress_file = runs_file.with_suffix(".progress")
    settings = test_settings(kafka_bootstrap, app_id=app_id)
    await ensure_topics(settings)
    env = {"STREAMFLOW_TEST_RUNS": str(runs_file)}

    def worker(name: str, *args: str) -> WorkerProcess:
        module = "tests.streaming.crash_app"
        return WorkerProcess(
            name, kafka_bootstrap, app_id, module, tmp_path, extra_env=env, args=list(args)
        )

    executor = worker("executor", "--no-activities")
    runners = [worker(f"activities-{i}", "--activities-only") for i in range(2)]
    try:
        for w in (executor, *runners):
            w.start()
        executor.wait_for_log(OWNED)
        for w in runners:
            w.wait_for_log(": assigned")
        async with KafkaExecutor(settings=settings) as ex:
            handle = await ex.execute(
                crash_app.resumable, WorkflowOptions(id="heartbeats", input=ITEMS)
            )
            pid, _, _, _ = await _await_progress(progress_file, 10, WAIT)
            victim = next(w for w in runners if w.process is not None and w.process.pid == pid)
            victim.kill()
            killed_at = time.time()
            result = await handle.result(timeout=WAIT)
            state = await ex.describe("heartbeats")
        rows = _progress(progress_file)
        reached = max(done for p, attempt, done, _ in rows if attempt == 1)
        first_retry_row = min(at for p, attempt, _, at in rows if attempt == 2)
        retry_pids = {p for p, attempt, _, _ in rows if attempt == 2}
        retry_started = min(began for wid, _, attempt, began in _runs(runs_file) if attempt == 2)
        gap = retry_started - killed_at
        failed = [e for e in state.history if e.type is EventType.ACTIVITY_FAILED]
        detected = failed[0].timestamp.timestamp() - killed_at if failed else float("nan")
        with capsys.disabled():
            print(
                f"\nkilled after {reached} of {ITEMS} items; missed heartbeat recorded "
                f"{detected:.2f}s and retry started {gap:.2f}s after the "
                f"SIGKILL (heartbeat timeout {crash_app.HEARTBEAT_TIMEOUT:g}s, activity timeout "
                f"{crash_app.ACTIVITY_TIMEOUT:g}s), resumed at item {result['resumed_from']}"
            )
        # the other worker ran the retry, after the kill, long before the activity timeout
        survivor = next(w for w in runners if w is not victim)
        assert survivor.process is not None
        assert retry_pids == {survivor.process.pid}
        assert killed_at < retry_started <= first_retry_row
        assert gap < crash_app.ACTIVITY_TIMEOUT / 4
        # the first attempt failed as a missed heartbeat, and the retry resumed from its details
        assert [(e.attempt, "heartbeat" in (e.error or "")) for e in failed] == [(1, True)]
        assert result["attempt"] == 2 and result["done"] == ITEMS
        assert 0 < result["resumed_from"] <= reached
        check_history(state, _runs(runs_file))
    finally:
        for w in (executor, *runners):
            w.kill()
