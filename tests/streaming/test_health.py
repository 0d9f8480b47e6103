"""A worker's HTTP port: /healthz and /readyz through a rebalance; start-up failures.

Worker processes (``python -m app worker``) on the session's broker, each with
its own ``--metrics-port``. ``/readyz`` must say 503 while a joining worker
makes the group rebalance and 200 once the partitions are read back, while
``/healthz`` says 200 throughout. A second worker on a taken port, or one
whose broker does not answer, must fail at once with one line and no
traceback, and leave no process behind.
"""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.streaming.admin import ensure_topics
from app.streaming.settings import test_settings
from tests.servers import free_port
from tests.streaming.harness import FAST_ENV, REPO, WorkerProcess, http_get

WAIT = 60.0
PARTITIONS = 4


def _until_ready(worker: WorkerProcess, port: int) -> str:
    deadline = time.monotonic() + WAIT
    while True:
        status, body = http_get(port, "/readyz")
        if status == 200:
            return body
        assert worker.alive, worker.log()[-3000:]
        assert time.monotonic() < deadline, f"{worker.name} not ready: {status} {body}"
        time.sleep(0.05)


def _watch(port: int, until: object, what: str) -> list[tuple[int, str, int]]:
    """Poll /readyz and /healthz of ``port`` until ``until()``; every answer seen."""
    seen = []
    deadline = time.monotonic() + WAIT
    while True:
        ready, body = http_get(port, "/readyz")
        healthy, _ = http_get(port, "/healthz")
        seen.append((ready, body, healthy))
        if until():  # type: ignore[operator]
            return seen
        assert time.monotonic() < deadline, f"{what}; seen {seen[-5:]}"
        time.sleep(0.02)


@pytest.fixture
def app_id(tmp_path: Path) -> str:
    return "health-" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:12]


def _topics(kafka_bootstrap: str, app_id: str) -> None:
    asyncio.run(ensure_topics(test_settings(kafka_bootstrap, app_id=app_id, partitions=PARTITIONS)))


def test_readyz_and_healthz_through_a_join_and_a_leave(
    tmp_path: Path, kafka_bootstrap: str, app_id: str
) -> None:
    _topics(kafka_bootstrap, app_id)
    port_a, port_b = free_port(), free_port()

    def worker(name: str, port: int) -> WorkerProcess:
        return WorkerProcess(
            name,
            kafka_bootstrap,
            app_id,
            "tests.streaming.crash_app",
            tmp_path,
            partitions=PARTITIONS,
            args=["--metrics-port", str(port)],
        )

    a, b = worker("a", port_a), worker("b", port_b)
    try:
        a.start()
        body = _until_ready(a, port_a)
        assert f"{app_id}.g1: partitions [0, 1, 2, 3]" in body, body
        assert f"{app_id}.g1.activities.default: partitions [0, 1, 2, 3]" in body, body
        assert http_get(port_a, "/healthz") == (200, "ok\n")

        b.start()
        # A's view while B joins: not ready during the rebalance, ready after it.
        seen = _watch(
            port_a,
            lambda: http_get(port_b, "/readyz")[0] == 200 and http_get(port_a, "/readyz")[0] == 200,
            "the two workers did not both become ready",
        )
        not_ready = [body for status, body, _ in seen if status == 503]
        assert not_ready, "a's /readyz never said 503 while b joined"
        assert any("rebalancing" in body or "reading partitions" in body for body in not_ready)
        assert all(healthy == 200 for _, _, healthy in seen), seen
        owned = [http_get(port, "/readyz")[1] for port in (port_a, port_b)]
        assert all("partitions [" in body for body in owned), owned

        # B leaves with SIGTERM: A is not ready while it takes the partitions back.
        assert b.process is not None
        b.process.terminate()
        seen = _watch(
            port_a,
            lambda: (
                b.process is not None
                and b.process.poll() is not None
                and f"{app_id}.g1: partitions [0, 1, 2, 3]" in http_get(port_a, "/readyz")[1]
            ),
            "a did not take every partition back",
        )
        assert b.process.returncode == 0, b.log()[-3000:]
        assert any(status == 503 for status, _, _ in seen), "a stayed ready through the leave"
        assert all(healthy == 200 for _, _, healthy in seen), seen
    finally:
        a.kill()
        b.kill()


def _cli_worker(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", "worker", "--app", "tests.streaming.crash_app", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), **FAST_ENV, **env},
        stdin=subprocess.DEVNULL,
    )


def test_a_second_worker_on_a_taken_port_fails_at_once_with_one_line(
    tmp_path: Path, kafka_bootstrap: str, app_id: str
) -> None:
    _topics(kafka_bootstrap, app_id)
    port = free_port()
    first = WorkerProcess(
        "first",
        kafka_bootstrap,
        app_id,
        "tests.streaming.crash_app",
        tmp_path,
        partitions=PARTITIONS,
        args=["--metrics-port", str(port)],
    )
    try:
        first.start()
        _until_ready(first, port)
        started = time.monotonic()
        second = _cli_worker(
            "--metrics-port",
            str(port),
            env={"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "STREAMFLOW_APP_ID": app_id},
        )
        took = time.monotonic() - started
        assert second.returncode == 2, second
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert f"port {port} is already in use" in lines[0]
        assert "--metrics-port" in lines[0] and "STREAMFLOW_METRICS_PORT" in lines[0]
        assert "Traceback" not in second.stdout + second.stderr
        assert took < 30, f"the second worker took {took:.1f}s to fail"
        assert http_get(port, "/readyz")[0] == 200, "the first worker was disturbed"
    finally:
        first.kill()


def test_a_worker_whose_broker_does_not_answer_fails_with_one_line() -> None:
    dead = f"127.0.0.1:{free_port()}"
    result = _cli_worker(
        "--metrics-port",
        str(free_port()),
        env={"KAFKA_BOOTSTRAP_SERVERS": dead, "STREAMFLOW_REQUEST_TIMEOUT": "3"},
    )
    assert result.returncode == 1, result
    out = result.stdout + result.stderr
    assert "Traceback" not in out, out
    assert "Event loop is closed" not in out, out
    errors = [line for line in result.stderr.splitlines() if "could not start" in line]
    assert len(errors) == 1, result.stderr
    assert dead in errors[0], errors
