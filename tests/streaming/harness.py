"""Streaming workers as real processes (``python -m app worker``), for crash and scale tests.

A :class:`WorkerProcess` runs the CLI worker with the test broker's fast
timings, logs to a file, and is ended by its PID. ``wait_for_log`` polls that
file with a deadline: a subprocess's log is the only thing there is to await.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from tests.servers import die_with_parent

FAST_ENV = {
    "STREAMFLOW_SESSION_TIMEOUT": "3",
    "STREAMFLOW_HEARTBEAT_INTERVAL": "0.5",
    "STREAMFLOW_REBALANCE_TIMEOUT": "5",
    "STREAMFLOW_FETCH_WAIT_MS": "10",
    "STREAMFLOW_COMMIT_INTERVAL": "0.2",
    "STREAMFLOW_TIMER_TICK": "0.01",
    "STREAMFLOW_TIMER_REFIRE": "2",
    "STREAMFLOW_REDRIVE_AFTER": "3",
    "STREAMFLOW_REDRIVE_MAX": "10",
    "STREAMFLOW_METRICS_PORT": "0",
    "STREAMFLOW_LOG_LEVEL": "DEBUG",
}
REPO = Path(__file__).resolve().parents[2]


@dataclass
class WorkerProcess:
    """One ``python -m app worker`` process."""

    name: str
    bootstrap: str
    app_id: str
    module: str
    logdir: Path
    partitions: int = 4
    extra_env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.logdir / f"{self.name}.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def start(self) -> WorkerProcess:
        env = {
            **os.environ,
            **FAST_ENV,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "STREAMFLOW_APP_ID": self.app_id,
            "STREAMFLOW_PARTITIONS": str(self.partitions),
            "PYTHONPATH": str(REPO),
            **self.extra_env,
        }
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app", "worker", "--app", self.module, *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.logdir,
                env=env,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        return self

    def wait_for_log(self, text: str, timeout: float = 60.0, count: int = 1) -> None:
        """Return once ``text`` appears ``count`` times in the log; fail with the log."""
        deadline = time.monotonic() + timeout
        while self.log().count(text) < count:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(
                    f"worker {self.name} exited with {self.process.returncode} before "
                    f"logging {text!r}; log:\n{self.log()[-4000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"worker {self.name} did not log {text!r} within {timeout:.0f}s; "
                    f"log:\n{self.log()[-4000:]}"
                )
            time.sleep(0.05)

    def dump_stacks(self, timeout: float = 10.0) -> None:
        """Ask a live worker to log its task and thread stacks (for a failure report)."""
        if self.alive:
            assert self.process is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGUSR1)
            with contextlib.suppress(AssertionError):
                self.wait_for_log("end of stacks", timeout)

    def kill(self) -> None:
        """SIGKILL: a crash."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait (SIGKILL after ``timeout``)."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return process.returncode

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


OWNED = "executor partitions owned"


def http_get(port: int, path: str) -> tuple[int, str]:
    """Status and body of ``GET http://127.0.0.1:port/path`` (0 and the error if unreachable)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, repr(exc)
