"""Local HTTP servers implementing the documented APIs of services that cannot be installed here.

Each fake is a real HTTP/1.1 server (``http.server.ThreadingHTTPServer`` in a
thread) on a free loopback port, keeping its data in memory. ``stop`` closes
the listening socket and every open connection, like a crashed server;
``start`` listens again on the same port with the data kept, like a server
that came back. Faults can be injected per request (see :class:`Fault`) and
every request is recorded (without its body) in :attr:`FakeServer.requests`.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, Self
from urllib.parse import parse_qs, urlsplit

from tests.servers import free_port

__all__ = ["Fault", "FakeServer", "Request", "Response", "json_response"]

FaultAction = Literal["status", "drop", "drop_after", "stop", "hang"]


@dataclass(frozen=True)
class Request:
    """One request as the fake sees it; ``path`` is raw (still percent-encoded)."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes

    def segments(self) -> list[str]:
        """The raw path split on ``/`` (leading empty segment dropped)."""
        return self.path.split("/")[1:]

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def json_response(status: int, value: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(
        status,
        json.dumps(value).encode(),
        {"Content-Type": "application/json", **(headers or {})},
    )


@dataclass
class Fault:
    """What to do with the next ``times`` requests that ``match``.

    ``status``: answer ``status`` without processing. ``drop``: close the
    connection without processing or answering. ``drop_after``: process,
    then close without answering (the client cannot know it was applied).
    ``stop``: close without processing and stop the whole server.
    ``hang``: answer nothing until the server stops.
    """

    action: FaultAction
    match: Callable[[Request], bool] = lambda request: True
    times: int = 1
    status: int = 503


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # a hanging handler must not block stop()

    def __init__(self, port: int, owner: FakeServer) -> None:
        self.owner = owner
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self.connections_lock:
            connections = list(self.connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        # Without it, Nagle's algorithm and delayed ACKs add ~40 ms to small exchanges.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the test output stays readable; requests are recorded instead

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        parts = urlsplit(self.path)
        request = Request(
            method=self.command,
            path=parts.path,
            query=parse_qs(parts.query),
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
        )
        owner = self.server.owner
        fault = owner._take_fault(request)
        owner._record(request)
        if fault is not None and fault.action != "drop_after":
            if fault.action == "status":
                self._send(json_response(fault.status, {"message": "injected fault"}))
                return
            if fault.action == "stop":
                owner.stop()  # before answering, so no retry can reach the server
            elif fault.action == "hang":
                owner._stopped.wait(30)
            self._abort()
            return
        response = owner._dispatch(request)
        if fault is not None:  # drop_after: applied, never answered
            self._abort()
            return
        self._send(response)

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if response.body:
            self.wfile.write(response.body)

    def _abort(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


class FakeServer:
    """Base of the fakes: lifecycle, faults and the request log.

    Subclasses implement :meth:`handle`, which runs under :attr:`lock` so
    that each request is atomic, as in a real server.
    """

    name = "fake"

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.lock = threading.Lock()
        self.requests: list[Recorded] = []
        self.faults: list[Fault] = []
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lifecycle = threading.Lock()
        self._stopped = threading.Event()
        self._stopped.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._httpd is not None

    def start(self) -> Self:
        """Listen (again) on :attr:`port`; the data is kept."""
        with self._lifecycle:
            if self._httpd is not None:
                return self
            httpd = _HTTPServer(self.port, self)
            self._stopped.clear()
            self._httpd = httpd
            self._thread = threading.Thread(
                target=httpd.serve_forever,
                kwargs={"poll_interval": 0.01},
                name=f"{self.name}:{self.port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection; the data is kept."""
        with self._lifecycle:
            httpd, self._httpd = self._httpd, None
            thread, self._thread = self._thread, None
            if httpd is None:
                return
            self._stopped.set()
            httpd.shutdown()
            httpd.close_connections()
            httpd.server_close()
            if thread is not None:
                thread.join(10)

    def wait_stopped(self, timeout: float = 10.0) -> bool:
        """Block until the server has stopped (for a ``stop`` fault)."""
        return self._stopped.wait(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @contextlib.contextmanager
    def faulty(self, *faults: Fault) -> Iterator[None]:
        """Inject ``faults`` for the duration of the block."""
        with self.lock:
            self.faults.extend(faults)
        try:
            yield
        finally:
            with self.lock:
                self.faults = [f for f in self.faults if all(f is not g for g in faults)]

    def handle(self, request: Request) -> Response:
        raise NotImplementedError

    def _dispatch(self, request: Request) -> Response:
        with self.lock:
            try:
                return self.handle(request)
            except Exception as exc:  # a bug in the fake: answer 500 rather than hang
                return json_response(500, {"message": f"fake server error: {exc!r}"})

    def _take_fault(self, request: Request) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.times > 0 and fault.match(request):
                    fault.times -= 1
                    if fault.times == 0:
                        self.faults = [f for f in self.faults if f is not fault]
                    return fault
        return None

    def _record(self, request: Request) -> None:
        with self.lock:
            self.requests.append(Recorded(request.method, request.path, request.headers))
