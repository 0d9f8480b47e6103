"""A worker's HTTP port: ``/metrics``, ``/healthz`` and ``/readyz``.

Served from a thread, so that a blocked event loop is seen rather than
hidden: ``/healthz`` asks the loop to answer and reports 503 when it does not
within :data:`LOOP_DEADLINE`. ``/readyz`` reports 200 once every consumer
group is joined and every partition assigned has its state read back, and
503 with the reason while the worker is starting, rebalancing, reading
partitions or stopping.
"""

from __future__ import annotations

import asyncio
import errno
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

LOOP_DEADLINE = 2.0
"""Seconds the event loop has to answer a probe."""

Readiness = Callable[[], tuple[bool, list[str]]]
"""Whether the worker is ready, and a line per part of it saying where it is."""


class PortInUseError(OSError):
    """The worker's HTTP port is taken; the message names the port, its setting and flag."""


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # probes are frequent
        pass


class HealthServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on ``port``, for the loop of the caller.

    Args:
        registry: the metrics to serve.
        port: the TCP port (``STREAMFLOW_METRICS_PORT``, ``--metrics-port``).
        readiness: called on the event loop for ``/readyz``.
        host: the address to bind.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        port: int,
        readiness: Readiness,
        host: str = "0.0.0.0",
    ) -> None:
        self.port = port
        self.host = host
        self._readiness = readiness
        self._metrics = make_wsgi_app(registry)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and serve; :class:`PortInUseError` at once if the port is taken."""
        self._loop = asyncio.get_running_loop()
        try:
            server = make_server(
                self.host, self.port, self._app, server_class=_Server, handler_class=_QuietHandler
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(
                    exc.errno,
                    f"port {self.port} is already in use: give each worker on this host its "
                    "own port with --metrics-port N or STREAMFLOW_METRICS_PORT=N "
                    "(0: no HTTP port)",
                ) from None
            raise
        self._server = server
        self.port = server.server_port
        self._thread = threading.Thread(
            target=server.serve_forever, name="health-http", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    # -- WSGI ------------------------------------------------------------------------
    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            ok, text = self._on_loop(lambda: (True, ["ok"]))
        elif path == "/readyz":
            ok, text = self._on_loop(self._readiness)
        else:
            return self._metrics(environ, start_response)  # type: ignore[no-any-return]
        body = ("\n".join(text) + "\n").encode()
        status = "200 OK" if ok else "503 Service Unavailable"
        start_response(
            status,
            [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))],
        )
        return [body]

    def _on_loop(self, probe: Readiness) -> tuple[bool, list[str]]:
        loop = self._loop
        if loop is None or loop.is_closed():
            return False, ["the event loop is not running"]

        async def ask() -> tuple[bool, list[str]]:
            return probe()

        try:
            future = asyncio.run_coroutine_threadsafe(ask(), loop)
            return future.result(timeout=LOOP_DEADLINE)
        except TimeoutError:
            future.cancel()
            return False, [f"the event loop did not answer within {LOOP_DEADLINE:g}s"]
        except Exception as exc:
            return False, [f"probe failed: {exc!r}"]
