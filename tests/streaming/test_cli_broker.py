"""The broker-facing command line against a real worker process on the session's broker.

One worker (``python -m app worker --app tests.streaming.crash_app
--metrics-port N``) serves the module; every command runs as its own
``python -m app ...`` process with the broker and app id given as flags, and
a timeout. The raw publisher (``docs/examples/raw_publish.py``: no engine
code) starts and signals workflows that the worker runs to completion.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app.streaming.settings import test_settings
from tests.servers import free_port
from tests.streaming.harness import FAST_ENV, OWNED, REPO, WorkerProcess, http_get

CLI_TIMEOUT = 60.0
WAIT = 30.0
PARTITIONS = 4
RAW_PUBLISH = REPO / "docs" / "examples" / "raw_publish.py"
# the client-side timings of the test broker; the broker and app id go in as flags
CLIENT_ENV = {
    "PATH": "/usr/bin:/bin",
    "PYTHONPATH": str(REPO),
    "STREAMFLOW_FETCH_WAIT_MS": FAST_ENV["STREAMFLOW_FETCH_WAIT_MS"],
    "STREAMFLOW_REQUEST_TIMEOUT": "20",
}


def _app_id(seed: str) -> str:
    return "cli-" + hashlib.sha256(seed.encode()).hexdigest()[:12]


def run(
    *argv: str, timeout: float = CLI_TIMEOUT, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with this interpreter (a timeout ends the process)."""
    return subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=CLIENT_ENV if env is None else env,
        stdin=subprocess.DEVNULL,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """The stdout of a command that must have succeeded."""
    assert result.returncode == 0, (
        f"{result.args} exited {result.returncode}\nstdout:\n{result.stdout}\n"
        f"stderr:\n{result.stderr}"
    )
    return result.stdout


@dataclass
class Deployment:
    """The module's broker, app id and worker."""

    bootstrap: str
    app_id: str
    worker: WorkerProcess
    metrics_port: int

    def app(self, *args: str, timeout: float = CLI_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """``python -m app *args --broker B --app-id A --partitions N``."""
        return run(
            "-m",
            "app",
            *args,
            "--broker",
            self.bootstrap,
            "--app-id",
            self.app_id,
            "--partitions",
            str(PARTITIONS),
            timeout=timeout,
        )

    def raw(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``docs/examples/raw_publish.py --broker B --app-id A *args``."""
        return run(str(RAW_PUBLISH), "--broker", self.bootstrap, "--app-id", self.app_id, *args)

    def query(self, workflow_id: str, name: str) -> object:
        return json.loads(ok(self.app("query", workflow_id, name)))

    def wait_for_status(self, workflow_id: str, status: str, timeout: float = WAIT) -> None:
        """Poll ``query ID status`` (each a separate process) until it says ``status``."""
        deadline = time.monotonic() + timeout
        last: subprocess.CompletedProcess[str] | None = None
        while time.monotonic() < deadline:
            last = self.app("query", workflow_id, "status")
            # not found yet: a raw start has no reply, the worker may not have applied it
            if last.returncode == 0 and json.loads(last.stdout) == status:
                return
            if not self.worker.alive:
                break
            time.sleep(0.2)
        self.worker.dump_stacks()
        raise AssertionError(
            f"{workflow_id} is not {status} after {timeout:.0f}s: {last and last.stdout!r} "
            f"{last and last.stderr!r}\nworker log:\n{self.worker.log()[-4000:]}"
        )


@pytest.fixture(scope="module")
def deployment(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    logdir = tmp_path_factory.mktemp("cli-worker")
    app_id = _app_id(str(logdir))
    port = free_port()
    worker = WorkerProcess(
        "worker",
        kafka_bootstrap,
        app_id,
        "tests.streaming.crash_app",
        logdir,
        partitions=PARTITIONS,
        args=["--metrics-port", str(port)],
    )
    try:
        worker.start()
        worker.wait_for_log(OWNED, timeout=60.0)
        yield Deployment(kafka_bootstrap, app_id, worker, port)
    finally:
        worker.kill()


def test_topics_check_names_missing_topics_then_create_makes_it_pass(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    app_id = _app_id(str(tmp_path))
    flags = ("--broker", kafka_bootstrap, "--app-id", app_id, "--partitions", str(PARTITIONS))
    names = [s.name for s in test_settings(kafka_bootstrap, app_id=app_id).topology.specs()]

    missing = run("-m", "app", "topics", "check", *flags)
    assert missing.returncode == 1, missing
    for name in names:
        assert f"{name}: missing" in missing.stderr, missing.stderr

    created = ok(run("-m", "app", "topics", "create", *flags))
    assert f"created {len(names)} of {len(names)} topics on {kafka_bootstrap}" in created
    for name in names:
        assert name in created

    checked = run("-m", "app", "topics", "check", *flags)
    assert checked.returncode == 0, checked
    assert f"all {len(names)} topics present on {kafka_bootstrap}" in checked.stdout
    assert checked.stderr == ""

    again = ok(run("-m", "app", "topics", "create", *flags))  # idempotent
    assert f"created 0 of {len(names)} topics" in again


def test_start_signal_query_show_list(deployment: Deployment) -> None:
    started = json.loads(ok(deployment.app("start", "signalled", "--id", "cli-x", "--input", "1")))
    assert started["workflow_id"] == "cli-x"
    assert started["run_id"]
    assert deployment.query("cli-x", "status") == "running"

    for _ in range(2):
        out = ok(deployment.app("signal", "cli-x", "go", "--payload", "5"))
        assert "signal 'go' recorded for 'cli-x'" in out
    deployment.wait_for_status("cli-x", "completed")
    assert deployment.query("cli-x", "result") == [4, 5, 5]

    lines = ok(deployment.app("start", "chain", "--id", "cli-y", "--input", "2", "--wait"))
    first, result = lines.strip().splitlines()
    assert json.loads(first)["workflow_id"] == "cli-y"
    assert json.loads(result) == 2

    shown = ok(deployment.app("show", "cli-x"))
    assert "Workflow  cli-x" in shown
    assert f"Run       {started['run_id']}" in shown
    assert "Status    completed" in shown
    assert "Result    [4, 5, 5]" in shown
    history = shown.split("History (", 1)[1]
    events = [line.split()[2] for line in history.splitlines()[3:] if line.strip()]
    assert events[0] == "workflow_started"
    assert events[-1] == "workflow_completed"
    assert events.count("signal_received") == 2
    assert events.count("activity_completed") == 3

    listed = ok(deployment.app("list"))
    rows = {line.split()[0]: line.split() for line in listed.splitlines()[2:] if line.strip()}
    assert rows["cli-x"][1:3] == ["signalled", "completed"]
    assert rows["cli-y"][1:3] == ["chain", "completed"]
    only_running = ok(deployment.app("list", "--status", "running"))
    assert "cli-x" not in only_running


def test_visibility_index_and_list_by_attribute(deployment: Deployment, tmp_path: Path) -> None:
    for wid, tier in (("cli-a1", "gold"), ("cli-a2", "free"), ("cli-a3", "gold")):
        args = ("start", "chain", "--id", wid, "--input", "1", "--attr", f"tier={tier}")
        ok(deployment.app(*args, "--memo", '{"by": "cli"}', "--wait"))
    index = str(tmp_path / "index.db")
    caught = ok(deployment.app("visibility", "--index", index, "--once"))
    applied = rf"^Index {re.escape(index)}: [1-9][0-9]* history records applied; workflows: "
    assert re.search(applied, caught)
    listed = ok(deployment.app("list", "--index", index, "--attr", "tier=gold"))
    rows = [line.split() for line in listed.splitlines()[2:] if line.strip()]
    assert [r[0] for r in rows] == ["cli-a3", "cli-a1"]
    assert all(r[1:3] == ["chain", "completed"] and r[-1] == 'tier="gold"' for r in rows)
    # without --index: built in memory from the topic
    assert "cli-a2" in ok(deployment.app("list", "--attr", "tier=free"))
    again = ok(deployment.app("visibility", "--index", index, "--once"))
    assert re.search(r": 0 history records applied;", again), again


def test_cancel_a_running_workflow(deployment: Deployment) -> None:
    ok(deployment.app("start", "signalled", "--id", "cli-z", "--input", "0"))
    assert "cancel recorded for 'cli-z'" in ok(deployment.app("cancel", "cli-z"))
    deployment.wait_for_status("cli-z", "canceled")
    shown = ok(deployment.app("show", "cli-z"))
    assert "cancel_requested" in shown
    assert "workflow_canceled" in shown


def test_terminate_a_running_workflow(deployment: Deployment) -> None:
    ok(deployment.app("start", "signalled", "--id", "cli-t", "--input", "0"))
    out = ok(deployment.app("terminate", "cli-t", "--reason", "bad deploy"))
    assert "terminate recorded for 'cli-t'" in out
    deployment.wait_for_status("cli-t", "canceled")
    shown = ok(deployment.app("show", "cli-t"))
    assert "Error     Terminated: bad deploy" in shown


def test_pause_and_resume(deployment: Deployment) -> None:
    ok(deployment.app("start", "signalled", "--id", "cli-p", "--input", "0"))
    assert "pause recorded for 'cli-p'" in ok(deployment.app("pause", "cli-p", "--reason", "ops"))
    again = deployment.app("pause", "cli-p")
    assert again.returncode == 1 and "already paused" in again.stderr
    assert "resume recorded" in ok(deployment.app("resume", "cli-p"))
    shown = ok(deployment.app("show", "cli-p"))
    assert "workflow_paused" in shown and "workflow_resumed" in shown

    reset = json.loads(ok(deployment.app("reset", "cli-p", "--to-event", "1", "--reason", "r")))
    assert reset["workflow_id"] == "cli-p" and reset["run_id"]
    deployment.wait_for_status("cli-p", "running")
    shown = ok(deployment.app("show", "cli-p"))
    assert f"Run       {reset['run_id']}" in shown
    assert "workflow_reset" in shown
    bad = deployment.app("reset", "cli-p", "--to-event", "99")
    assert bad.returncode == 1 and "to_event_id must be an event id from 1 to" in bad.stderr

    again = deployment.app("cancel", "cli-z")
    assert again.returncode == 1
    assert "'cli-z' not found: cannot cancel: it is not running" in again.stderr


def test_update_a_running_workflow(deployment: Deployment) -> None:
    ok(deployment.app("start", "counter", "--id", "cli-u", "--input", "10"))
    first = ok(deployment.app("update", "cli-u", "add", "--payload", "4", "--update-id", "u-1"))
    assert json.loads(first) == 15  # work(4) = 5
    again = ok(deployment.app("update", "cli-u", "add", "--payload", "4", "--update-id", "u-1"))
    assert json.loads(again) == 15  # the recorded answer: not run twice

    rejected = deployment.app("update", "cli-u", "add", "--payload", "-1")
    assert rejected.returncode == 1, rejected
    assert "was rejected: amount must be positive, got -1" in rejected.stderr
    unknown = deployment.app("update", "cli-u", "nope")
    assert unknown.returncode == 1, unknown
    assert "has no update handler 'nope'; known updates: add" in unknown.stderr
    assert "Traceback" not in rejected.stderr + unknown.stderr

    ok(deployment.app("signal", "cli-u", "stop"))
    deployment.wait_for_status("cli-u", "completed")
    assert deployment.query("cli-u", "result") == 15
    shown = ok(deployment.app("show", "cli-u"))
    assert shown.count("update_accepted") == 1
    assert shown.count("update_completed") == 1
    assert "add [u-1]" in shown
    ended = deployment.app("update", "cli-u", "add", "--payload", "1")
    assert ended.returncode == 1
    assert "cannot update: it is not running" in ended.stderr


def test_errors_exit_1_with_a_clear_message(deployment: Deployment) -> None:
    unknown = deployment.app("signal", "no-such-workflow", "go", "--payload", "1")
    assert unknown.returncode == 1, unknown
    assert "workflow 'no-such-workflow' not found" in unknown.stderr
    assert "Traceback" not in unknown.stderr

    bad_type = deployment.app("start", "no_such_type", "--id", "cli-bad")
    assert bad_type.returncode == 1, bad_type
    assert "'no_such_type' is not registered" in bad_type.stderr
    for name in ("chain", "crashing", "signalled", "ticking", "waiting"):
        assert name in bad_type.stderr
    assert "Traceback" not in bad_type.stderr

    query = deployment.app("query", "no-such-workflow", "status")
    assert query.returncode == 1
    assert "workflow 'no-such-workflow' not found" in query.stderr

    bad_json = deployment.app("start", "chain", "--id", "cli-j", "--input", "{nope")
    assert bad_json.returncode == 2  # argparse usage error
    assert "not valid JSON" in bad_json.stderr


def test_raw_publisher_drives_the_worker(deployment: Deployment) -> None:
    published = json.loads(
        ok(deployment.raw("start", "--workflow-id", "raw-chain", "--type", "chain", "--input", "3"))
    )
    assert published["kind"] == "start"
    assert published["topic"] == f"{deployment.app_id}.g1.commands"

    ok(deployment.raw("start", "--workflow-id", "raw-sig", "--type", "signalled", "--input", "10"))
    deployment.wait_for_status("raw-sig", "running")
    for payload in ("7", "8"):
        ok(
            deployment.raw(
                "signal", "--workflow-id", "raw-sig", "--name", "go", "--payload", payload
            )
        )

    deployment.wait_for_status("raw-chain", "completed")
    assert deployment.query("raw-chain", "result") == 3
    deployment.wait_for_status("raw-sig", "completed")
    assert deployment.query("raw-sig", "result") == [13, 7, 8]
    shown = ok(deployment.app("show", "raw-sig"))
    assert "from raw_publish: 7" in shown
    assert "from raw_publish: 8" in shown
    assert "workflow_completed" in shown


def _metrics(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def test_metrics_endpoint(deployment: Deployment) -> None:
    for i in range(2):
        ok(deployment.app("start", "chain", "--id", f"metrics-{i}", "--input", "2", "--wait"))
    assert deployment.app("signal", "metrics-nobody", "go").returncode == 1  # a dead letter

    m = _metrics(deployment.metrics_port)
    started = sum(v for _, v in m["streamflow_workflows_started_total"])
    assert started >= 2
    starts = [
        v
        for labels, v in m["streamflow_commands_total"]
        if labels == {"kind": "start", "outcome": "ok"}
    ]
    assert starts and starts[0] >= started
    results = sum(
        v for labels, v in m["streamflow_commands_total"] if labels["kind"] == "activity_result"
    )
    assert results >= 4
    work = [
        v
        for labels, v in m["streamflow_activity_seconds_count"]
        if labels["outcome"] == "ok" and labels["activity"].endswith("work")
    ]
    assert work and work[0] >= 4
    total = sum(v for labels, v in m["streamflow_activity_seconds_sum"])
    assert 0.05 * 4 <= total < 60  # ``work`` sleeps 50 ms
    dead = [(labels, v) for labels, v in m["streamflow_dead_letters_total"]]
    assert sum(v for _, v in dead) >= 1, dead
    assert any("unknown workflow" in labels["reason"] for labels, _ in dead), dead
    lag = m["streamflow_consumer_lag"]
    assert lag, "no consumer lag reported"
    assert {labels["partition"] for labels, _ in lag} <= {str(p) for p in range(PARTITIONS)}
    assert all(0 <= v < 1000 for _, v in lag), lag


def test_show_says_what_a_running_workflow_waits_on(deployment: Deployment, tmp_path: Path) -> None:
    release = tmp_path / "release"
    ok(deployment.app("start", "waiting", "--id", "cli-w", "--input", json.dumps(str(release))))
    deadline = time.monotonic() + WAIT
    while True:  # the activity's attempt is recorded once the start is applied
        shown = ok(deployment.app("show", "cli-w"))
        if "activity" in shown.split("Waiting on", 1)[-1]:
            break
        assert time.monotonic() < deadline, shown
        time.sleep(0.1)
    waiting = shown.split("Waiting on (owner: partition ", 1)[1]
    partition = int(waiting.split(")", 1)[0])
    assert 0 <= partition < PARTITIONS
    assert re.search(r"activity 'held' step \d+ attempt 1: started ", waiting), waiting
    assert "task sent " in waiting
    assert "(sleep): due " in waiting and "(in 3" in waiting  # the receive timeout, in ~1 h
    assert "signal 'go'" in waiting

    # the owner's gauge of its oldest pending attempt counts this one
    deadline = time.monotonic() + WAIT
    while True:
        ages = {
            labels["partition"]: v
            for labels, v in _metrics(deployment.metrics_port).get(
                "streamflow_oldest_pending_attempt_seconds", []
            )
        }
        if ages.get(str(partition), 0) > 0:
            break
        assert time.monotonic() < deadline, ages
        time.sleep(0.2)

    release.write_text("go")
    ok(deployment.app("signal", "cli-w", "go", "--payload", '"now"'))
    deployment.wait_for_status("cli-w", "completed")
    assert deployment.query("cli-w", "result") == ["now", "released"]
    assert "Waiting on" not in ok(deployment.app("show", "cli-w"))


def test_health_endpoints_of_a_running_worker(deployment: Deployment) -> None:
    assert http_get(deployment.metrics_port, "/healthz") == (200, "ok\n")
    status, text = http_get(deployment.metrics_port, "/readyz")
    assert status == 200, text
    assert f"{deployment.app_id}.g1: partitions [0, 1, 2, 3]" in text


def test_schedule_commands(deployment: Deployment) -> None:
    made = json.loads(
        ok(
            deployment.app(
                "schedule",
                "create",
                "cli-sched",
                "chain",
                "--input",
                "1",
                "--every",
                "3600",
                "--paused",
            )
        )
    )
    assert made["schedule_id"] == "cli-sched" and made["paused"] is True
    listed = [json.loads(line) for line in ok(deployment.app("schedule", "list")).splitlines()]
    assert [s["schedule_id"] for s in listed] == ["cli-sched"]
    assert "trigger recorded" in ok(deployment.app("schedule", "trigger", "cli-sched"))
    state = json.loads(ok(deployment.app("schedule", "describe", "cli-sched")))
    assert state["started"] == 1 and state["paused"] is True
    run_id = state["recent"][0]["workflow_id"]
    deployment.wait_for_status(run_id, "completed")
    assert "delete recorded" in ok(deployment.app("schedule", "delete", "cli-sched"))
    assert ok(deployment.app("schedule", "list")).strip() == ""
    bad = deployment.app("schedule", "create", "x", "chain", "--cron", "nope")
    assert bad.returncode == 1 and "valid cron expression" in bad.stderr
