"""Throughput and latency of the streaming runtime (worker, KafkaExecutor) on Tansu.

Usage::

    python -m bench.streaming [--quick] [--only RT,W1,W3] [--partitions N]
        [--activity-concurrency N] [--fetch-wait-ms MS] [--worker-processes N]
        [--profile DIR] [--w6-signals N] [--w6-every N]

One Tansu broker (memory storage) serves the whole run. Every workload gets
its own topic namespace (``app_id``) on it, a fresh worker and a fresh
:class:`KafkaExecutor` in this process, with the settings of
``test_settings`` (fetch long-poll of 10 ms). The worker is a ``python -m app
worker`` process, as deployed (``--worker-processes N``: N of them sharing
the partitions; 0: a :class:`StreamingWorker` in this process's event loop,
which ``--profile`` implies):

- RT: the raw broker round trip, aiokafka producer -> consumer (manual
  assignment, the same partitions and fetch wait), one message at a time:
  with the consumer's fetch sent after the produce, and with it already
  waiting when the message arrives (as the runtime's consumers' always are;
  the test broker answers a waiting fetch only at its checks, see
  ``docs/architecture.md``). Every workflow step costs such hops (command ->
  executor, history -> client, ...), so the step times below are also
  printed as multiples of the second's p50.
- W1: many short workflows (3 sequential activities), bounded concurrency.
- W2: fan-out: each workflow gathers many activities at once.
- W3: signal round trip: signal, the workflow runs an activity, the client
  hears of its completion through a hook (from the history topic). Also the
  bare ``signal()`` latency (command -> executor -> reply).
- W4: one long workflow: per-step cost at the start vs. the end of its history.
- W4L: W4 at 10,000 steps (windows of 1,000): the per-step cost must stay flat.
- W5: many workflows sleeping on durable timers at the same time.
- W6: one workflow consuming signals, continuing as new every segment:
  the mean step of each segment (each run of the chain) should stay flat.
- W7: a parent fanning out to many child workflows (an activity each).

W1 also reports the CPU time spent per workflow by the worker and client
processes and by the broker: on a small machine the runtime is CPU-bound.
Targets are only printed: timing never makes the script fail. It exits 1
only when a workload raises (the runtime or the broker broke).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import gc
import math
import os
import platform
import pstats
import random
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from app.streaming import KafkaExecutor, StreamingSettings, StreamingWorker
from app.streaming.admin import ensure_topics
from app.streaming.settings import test_settings
from app.workflow import Hooks, WorkflowOptions
from bench._common import (
    ACTIVITIES,
    RUNS,
    SUMMARIES,
    W1_STEPS,
    WAIT_S,
    WORKFLOWS,
    Metric,
    Opener,
    Run,
    Sizes,
    Target,
    Workload,
    align,
    check,
    fmt,
    ms,
    new_parser,
    percentile,
    run_w1,
    run_w4,
    selected,
    three_steps,
)
from tests import servers
from topics import TopicSpec

REPO = Path(__file__).resolve().parents[1]
RT_WARMUP = 20  # broker round trips left out of RT's numbers
RT_VALUE_BYTES = 200  # about the size of an encoded command

# what `python -m app worker --app bench.streaming` runs (--worker-processes)
workflows, activities = WORKFLOWS, ACTIVITIES

FULL = Sizes(
    rt_messages=200,
    w1_workflows=500,
    w1_concurrency=50,
    w2_workflows=50,
    w2_fan_out=20,
    w3_round_trips=200,
    w4_steps=500,
    w4_window=100,
    w5_workflows=200,
    w5_sleep_s=1.0,
)
QUICK = Sizes(
    rt_messages=50,
    w1_workflows=40,
    w1_concurrency=20,
    w2_workflows=5,
    w2_fan_out=10,
    w3_round_trips=20,
    w4_steps=60,
    w4_window=20,
    w5_workflows=20,
    w5_sleep_s=1.0,
    w6_signals=120,
    w6_every=40,
    w7_parents=3,
    w7_children=20,
    w4_long_steps=300,
    w4_long_window=60,
)

METRICS = [
    Metric("RT", "p50", "produce -> consume p50 (ms)"),
    Metric("RT", "p99", "produce -> consume p99 (ms)"),
    Metric("RT", "wait_p50", "  a fetch already waiting: p50 (ms)"),
    Metric("RT", "wait_p99", "  a fetch already waiting: p99 (ms)"),
    Metric("W1", "rate", "workflows/s", Target(100, at_least=True)),
    Metric("W1", "p50", "workflow latency p50 (ms)"),
    Metric("W1", "p99", "workflow latency p99 (ms)"),
    # Under W1's concurrency this includes queueing; W4's first window is the bare step.
    Metric("W1", "step", f"latency p50 / {W1_STEPS} activities (ms)", per_rt=True),
    Metric("W1", "cpu", "CPU per workflow, worker + client (ms)"),
    Metric("W1", "client_cpu", "  of which the client (ms)"),
    Metric("W1", "broker_cpu", "CPU per workflow, broker (ms)"),
    Metric("W1", "rss", "peak RSS, worker + client (MB)"),
    Metric("W1", "broker_rss", "peak RSS, broker (MB)"),
    Metric("W2", "rate", "workflows/s"),
    Metric("W2", "activities", "activities/s"),
    Metric("W3", "rt_p50", "round trip p50 (ms)", Target(25, at_least=False), per_rt=True),
    Metric("W3", "rt_p99", "round trip p99 (ms)", per_rt=True),
    Metric("W3", "sig_p50", "signal() p50 (ms)", per_rt=True),
    Metric("W3", "sig_p99", "signal() p99 (ms)", per_rt=True),
    Metric("W4", "first", "first-window step (ms)", per_rt=True),
    Metric("W4", "last", "last-window step (ms)", per_rt=True),
    Metric("W4", "ratio", "last/first (means)"),
    Metric("W4", "fit", "last/first (line through all windows)"),
    Metric("W4L", "first", "first-window step (ms)", per_rt=True),
    Metric("W4L", "last", "last-window step (ms)", per_rt=True),
    Metric("W4L", "ratio", "last/first (means)"),
    Metric("W4L", "fit", "last/first (line through all windows)"),
    Metric("W5", "wall", "wall, first start to all done (s)"),
    Metric("W5", "started", "all started after (s)"),
    Metric("W6", "first", "first-segment step (ms)", per_rt=True),
    Metric("W6", "last", "last-segment step (ms)", per_rt=True),
    Metric("W6", "ratio", "last/first segment"),
    Metric("W6", "spread", "slowest/fastest segment"),
    Metric("W6", "handoff", "step across a continue-as-new (ms)", per_rt=True),
    Metric("W7", "wall", "parent with its children, median (ms)", per_rt=True),
    Metric("W7", "best", "parent with its children, best (ms)"),
    Metric("W7", "children", "children/s (best parent)"),
]


def process_cpu(pid: int | None = None) -> float:
    """CPU seconds used so far by process ``pid`` (this one by default); NaN if unknown."""
    if pid is None:
        return time.process_time()
    try:
        # Linux: utime and stime are fields 14 and 15, counted after the "(comm)" field.
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return math.nan


def peak_rss_mb(pid: int | None = None) -> float:
    """The peak resident set of process ``pid`` (this one by default) in MB; NaN if unknown."""
    try:
        for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return math.nan


def runtime_cpu() -> float:
    """CPU seconds of this process and of the worker processes (if any)."""
    return process_cpu() + sum(process_cpu(pid) for pid in WORKER_PIDS)


# -- the runtime under test -----------------------------------------------------
@dataclass(frozen=True)
class Env:
    """What every workload needs: the broker and the settings it starts from."""

    bootstrap: str
    base: StreamingSettings
    broker_pid: int | None = None
    worker_processes: int = 0  # 0: the worker runs in this process

    def settings(self, workload: str) -> StreamingSettings:
        # A namespace of its own: no topic, group or table of another workload is seen.
        app_id = f"bench-{workload.lower()}-{uuid.uuid4().hex[:8]}"
        return self.base.model_copy(update={"app_id": app_id})

    def opener(self, workload: str) -> Opener:
        return opener(self.settings(workload), self.worker_processes)


# PIDs of the worker processes of the runtime open now (--worker-processes)
WORKER_PIDS: list[int] = []


def opener(settings: StreamingSettings, processes: int = 0) -> Opener:
    """Opens a worker and a client on ``settings``; both are stopped on exit.

    With ``processes`` > 0 the worker is that many ``python -m app worker``
    processes sharing the partitions, instead of one in this process.
    """

    @asynccontextmanager
    async def open_runtime(hooks: Hooks | None) -> AsyncIterator[KafkaExecutor]:
        await ensure_topics(settings)
        worker = worker_processes(settings, processes) if processes else in_process(settings)
        async with worker, KafkaExecutor(settings=settings, hooks=hooks) as executor:
            # The first command waits until the worker owns its partitions
            # (group join); that is start-up, not the workload, so pay it here.
            await warm_up(executor)
            yield executor

    return open_runtime


@asynccontextmanager
async def in_process(settings: StreamingSettings) -> AsyncIterator[None]:
    worker = StreamingWorker(settings, WORKFLOWS, ACTIVITIES)
    await worker.start()
    try:
        yield
    finally:
        await worker.stop()


@asynccontextmanager
async def worker_processes(settings: StreamingSettings, count: int) -> AsyncIterator[None]:
    procs = _spawn_workers(settings, count)
    WORKER_PIDS[:] = [p.pid for p in procs]
    try:
        yield
    finally:
        WORKER_PIDS.clear()
        _stop_workers(procs)


def _spawn_workers(settings: StreamingSettings, count: int) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, **settings.to_env(), "PYTHONPATH": str(REPO)}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(count):
            with open(f"worker-{settings.app_id}-{i}.log", "ab") as log:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "app", "worker", "--app", "bench.streaming"],
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        env=env,
                        start_new_session=True,
                        preexec_fn=servers.die_with_parent,
                    )
                )
    except BaseException:
        _stop_workers(procs)
        raise
    return procs


def _stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


async def warm_up(executor: KafkaExecutor) -> None:
    handle = await executor.execute(three_steps, WorkflowOptions(id="warm-up", input=0))
    check("warm-up", await handle.result(timeout=WAIT_S), W1_STEPS)


# -- workloads ------------------------------------------------------------------
async def run_rt(env: Env, sizes: Sizes) -> dict[str, float]:
    """Produce one keyed message, wait until the consumer has it; repeat.

    The topic has as many partitions as the runtime's and the keys spread over
    them, as workflow ids do; producer and consumer are set up like the client's.
    Twice: with ``getone``, whose next fetch leaves only when it is called,
    after the produce (the data is there when the fetch arrives), then with
    ``getmany``, whose next fetch leaves at once and is waiting when the
    message arrives, a random part of the fetch wait later: as in the runtime,
    whose consumers always have a fetch waiting. The second is what a hop costs.
    """
    settings = env.settings("rt")
    topic = f"{settings.app_id}.ping"
    partitions = settings.partitions
    await ensure_topics(settings, [TopicSpec(topic, partitions, settings.replication)])
    producer = AIOKafkaProducer(bootstrap_servers=env.bootstrap, acks="all", linger_ms=0)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=env.bootstrap,
        enable_auto_commit=False,
        fetch_max_wait_ms=settings.fetch_wait_ms,
    )
    filler = bytes(RT_VALUE_BYTES)
    phase = random.Random(0)

    async def one_trip(i: int, waiting: bool) -> float:
        key = f"rt-{i}".encode()
        if waiting:
            await asyncio.sleep(phase.uniform(0, settings.fetch_wait_ms / 1000))
        began = time.perf_counter()
        await producer.send_and_wait(topic, filler, key=key)
        if waiting:
            batches = await asyncio.wait_for(consumer.getmany(timeout_ms=WAIT_S * 1000), WAIT_S)
            (message,) = [m for records in batches.values() for m in records]
        else:
            message = await asyncio.wait_for(consumer.getone(), WAIT_S)
        check("rt message key", message.key, key)
        return time.perf_counter() - began

    await producer.start()
    try:
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(partitions)]
            consumer.assign(tps)
            await consumer.seek_to_end(*tps)
            for tp in tps:
                await consumer.position(tp)  # resolve now: the first message must be seen
            total = RT_WARMUP + sizes.rt_messages
            fresh = [await one_trip(i, False) for i in range(total)][RT_WARMUP:]
            waited = [await one_trip(total + i, True) for i in range(total)][RT_WARMUP:]
        finally:
            await consumer.stop()
    finally:
        await producer.stop()
    return {
        "p50": ms(percentile(fresh, 0.50)),
        "p99": ms(percentile(fresh, 0.99)),
        "wait_p50": ms(percentile(waited, 0.50)),
        "wait_p99": ms(percentile(waited, 0.99)),
    }


def cpu_probe(env: Env) -> Callable[[int], dict[str, float]]:
    """Starts counting CPU time; the returned function gives it per workflow."""
    cpu, client_cpu, broker_cpu = runtime_cpu(), process_cpu(), process_cpu(env.broker_pid)

    def per_workflow(n: int) -> dict[str, float]:
        split = {"client_cpu": ms(process_cpu() - client_cpu) / n} if env.worker_processes else {}
        return {
            "cpu": ms(runtime_cpu() - cpu) / n,
            **split,
            "broker_cpu": ms(process_cpu(env.broker_pid) - broker_cpu) / n,
            # peaks since each process started: the worker processes are W1's own
            "rss": peak_rss_mb() + sum(peak_rss_mb(pid) for pid in WORKER_PIDS),
            "broker_rss": peak_rss_mb(env.broker_pid),
        }

    return per_workflow


async def run_streaming_w1(env: Env, sizes: Sizes) -> dict[str, float]:
    return await run_w1(env.opener("w1"), sizes, lambda: cpu_probe(env))


async def run_w4_long(env: Env, sizes: Sizes) -> dict[str, float]:
    long = dataclasses.replace(sizes, w4_steps=sizes.w4_long_steps, w4_window=sizes.w4_long_window)
    return await run_w4(env.opener("w4l"), long)


def on_runtime(name: str, run: Run) -> Workload[Env]:
    """Workload ``name`` of the shared set, on a fresh runtime of its own."""

    async def run_on(env: Env, sizes: Sizes) -> dict[str, float]:
        return await run(env.opener(name), sizes)

    return Workload(name, SUMMARIES[name], run_on)


WORKLOADS: dict[str, Workload[Env]] = {
    "RT": Workload(
        "RT", lambda s: f"{s.rt_messages} raw messages produced and consumed one at a time", run_rt
    ),
    "W1": Workload("W1", SUMMARIES["W1"], run_streaming_w1),
    **{name: on_runtime(name, run) for name, run in RUNS.items() if name != "W1"},
    "W4L": Workload(
        "W4L",
        lambda s: (
            f"1 workflow x {s.w4_long_steps} sequential activities, windows of {s.w4_long_window}"
        ),
        run_w4_long,
    ),
}


# -- running --------------------------------------------------------------------
def run_one(
    env: Env, workload: Workload[Env], sizes: Sizes, profile_dir: Path | None
) -> dict[str, float]:
    # Garbage left by the previous workload must not be collected on this one's clock.
    gc.collect()
    # A loop per workload: no task of one (consumer, timer loop) can slow down the next.
    if profile_dir is None:
        return asyncio.run(workload.run(env, sizes))
    # CPU time of the loop's thread: the runtime is CPU-bound long before it waits on I/O.
    profiler = cProfile.Profile(time.thread_time)
    try:
        return profiler.runcall(asyncio.run, workload.run(env, sizes))
    finally:
        path = profile_dir / f"{workload.name}.prof"
        profiler.dump_stats(path)
        print(f"  profile of {workload.name} in {path}; its top functions (own time):")
        stats = pstats.Stats(str(path))
        stats.sort_stats("tottime").print_stats(12)


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def render_table(
    results: dict[str, dict[str, float]], errors: dict[str, str], selected: Sequence[str]
) -> str:
    """The results as an aligned text table: value, multiple of a broker hop, target."""
    rows = [["workload", "metric", "value", "x hop p50", "target"]]
    # a hop as the runtime's consumers make it: their fetch is waiting when data arrives
    hop_p50 = results.get("RT", {}).get("wait_p50")
    for metric in METRICS:
        if metric.workload not in selected:
            continue
        row = [metric.workload, metric.label]
        if metric.workload in errors:
            rows.append([*row, "error", "", ""])
            continue
        value = results[metric.workload].get(metric.key)
        if value is None:
            continue  # not measured in this set-up (the client's share, in one process)
        ratio = f"{value / hop_p50:.1f}x" if metric.per_rt and hop_p50 else ""
        target = ""
        if metric.target is not None:
            target = f"{metric.target}  {'PASS' if metric.target.met(value) else 'FAIL'}"
        rows.append([*row, fmt(value), ratio, target])
    return align(rows)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = new_parser("python -m bench.streaming", __doc__)
    parser.add_argument("--partitions", type=int, help="partitions per topic (default: 4)")
    parser.add_argument(
        "--activity-concurrency", type=int, help="activity tasks run at once (default: 32)"
    )
    parser.add_argument(
        "--fetch-wait-ms", type=int, help="consumers' fetch long-poll in ms (default: 10)"
    )
    parser.add_argument(
        "--eager-activities",
        type=int,
        metavar="N",
        help="attempts a worker runs itself at once, with no task hop (default: 256; 0: "
        "every task goes through the task topic)",
    )
    parser.add_argument(
        "--worker-processes",
        type=int,
        metavar="N",
        help="run the worker as N `python -m app worker` processes sharing the partitions, "
        "the client staying in this process; 0: the worker in this process too (default: 1, "
        "or 0 with --profile, which profiles this process)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="profile each workload (CPU time of the loop's thread, start-up included) into "
        "DIR/<workload>.prof and print its top functions",
    )
    parser.add_argument("--w6-signals", type=int, metavar="N", help="W6: signals in all")
    parser.add_argument("--w6-every", type=int, metavar="N", help="W6: signals per run")
    args = parser.parse_args(argv)
    if args.worker_processes is None:
        args.worker_processes = 0 if args.profile is not None else 1
    if args.worker_processes < 0:
        parser.error("--worker-processes must be 0 or more")
    # The broker round trip is cheap and every ratio needs it: it always runs.
    chosen = selected(parser, args.only, list(WORKLOADS))
    args.only = [name for name in WORKLOADS if name in chosen or name == "RT"]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = QUICK if args.quick else FULL
    w6 = {"w6_signals": args.w6_signals, "w6_every": args.w6_every}
    sizes = dataclasses.replace(sizes, **{k: v for k, v in w6.items() if v is not None})
    names = args.only
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    overrides = {
        key: value
        for key, value in (
            ("partitions", args.partitions),
            ("activity_concurrency", args.activity_concurrency),
            ("fetch_wait_ms", args.fetch_wait_ms),
            ("eager_activities", args.eager_activities),
        )
        if value is not None
    }

    scratch = servers.scratch_dir("bench-streaming")
    broker = servers.tansu(scratch)
    # worker processes log into the working directory: keep that with the broker's
    # log, out of the checkout
    cwd = Path.cwd()
    errors: dict[str, str] = {}
    results: dict[str, dict[str, float]] = {}
    try:
        broker.start()
        os.chdir(scratch)
        bootstrap = f"127.0.0.1:{broker.port}"
        pid = broker.process.pid if broker.process is not None else None
        env = Env(bootstrap, test_settings(bootstrap, **overrides), pid, args.worker_processes)
        s = env.base
        print(
            f"streaming runtime benchmark ({'quick' if args.quick else 'full'}): "
            f"Python {platform.python_version()}, {os.cpu_count()} CPUs, "
            f"{platform.system()} {platform.machine()}"
        )
        print(
            f"Tansu broker at {bootstrap} (memory storage); "
            + (
                f"{env.worker_processes} worker processes, the client in this process; "
                if env.worker_processes
                else "worker and client in this process; "
            )
            + f"{s.partitions} partitions, fetch wait {s.fetch_wait_ms} ms, "
            f"activity concurrency {s.activity_concurrency}, eager activities "
            f"{s.eager_activities}"
        )
        for name in names:
            print(f"  {name}: {WORKLOADS[name].summary(sizes)}")
        print(f"load average at start: {_load()}")
        print()
        for name in names:
            began = time.perf_counter()
            try:
                values = run_one(env, WORKLOADS[name], sizes, args.profile)
            except Exception as exc:
                errors[name] = f"{type(exc).__name__}: {exc}"
                print(f"{name} FAILED: {errors[name]}", flush=True)
                continue
            results[name] = values
            shown = ", ".join(f"{key}={fmt(value)}" for key, value in values.items())
            print(f"{name} ({time.perf_counter() - began:.1f}s): {shown}", flush=True)
    finally:
        os.chdir(cwd)
        broker.stop()
        shutil.rmtree(scratch, ignore_errors=True)

    print()
    print(render_table(results, errors, names))
    # Other processes on the machine slow every hop: say how busy it was.
    print(f"\nload average at end: {_load()} ({os.cpu_count()} CPUs)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
