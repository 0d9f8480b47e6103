"""A fake Inngest server implementing the seed's workflow-state contract.

The contract (the seed's Inngest provider):

- ``PUT /v1/workflows/{id}`` with the state as a JSON object: 201 when
  created, 200 when replaced.
- ``GET /v1/workflows/{id}``: 200 with the JSON; 404 when missing.
- ``DELETE /v1/workflows/{id}``: 204; 404 when missing.
- With an ``event_key``, every request must carry
  ``Authorization: Bearer <event key>``; otherwise 401.

On top, standard HTTP conditional requests (RFC 9110): every answer about a
stored workflow carries a strong ``ETag``; ``If-Match`` (a list of etags or
``*``) and ``If-None-Match: *`` on PUT and DELETE answer 412 when the
condition fails. With ``etags=False`` the server sends no ETag and ignores
conditions, like a server that implements only the seed's contract.

Whatever comes before ``/v1/workflows/`` in a path names an independent
namespace, as when one server is mounted under several paths behind a
proxy: tests use it to keep each other's data apart.
"""

from __future__ import annotations

import itertools
import json
from typing import Any
from urllib.parse import unquote

from tests.fakes import FakeServer, Request, Response, json_response

__all__ = ["FakeInngest"]

_MARK = "/v1/workflows/"


def _error(status: int, message: str) -> Response:
    return json_response(status, {"error": message})


def _matches(header: str, etag: str | None) -> bool:
    """Whether an ``If-Match``/``If-None-Match`` list names ``etag`` (``*``: any)."""
    if etag is None:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in header.split(",")]
    return "*" in tags or etag in tags


class FakeInngest(FakeServer):
    """An Inngest server holding workflow states in memory."""

    name = "fake-inngest"

    def __init__(
        self, *, event_key: str | None = None, etags: bool = True, port: int | None = None
    ) -> None:
        super().__init__(port)
        self.event_key = event_key
        self.etags = etags
        self.data: dict[tuple[str, str], tuple[bytes, str]] = {}
        self._versions = itertools.count(1)

    def value(self, workflow_id: str, prefix: str = "") -> Any:
        """The JSON stored for ``workflow_id`` (``None`` if missing)."""
        with self.lock:
            item = self.data.get((prefix, workflow_id))
        return None if item is None else json.loads(item[0])

    def handle(self, request: Request) -> Response:
        expected = None if self.event_key is None else f"Bearer {self.event_key}"
        if expected is not None and request.headers.get("authorization") != expected:
            return _error(401, "unauthorized: missing or invalid event key")
        at = request.path.find(_MARK)
        raw_id = request.path[at + len(_MARK) :] if at >= 0 else ""
        if at < 0 or not raw_id:
            return _error(404, f"no route for {request.method} {request.path}")
        name = (request.path[:at], unquote(raw_id))
        stored = self.data.get(name)
        etag = stored[1] if stored is not None else None
        if request.method == "GET":
            if stored is None:
                return _error(404, "workflow not found")
            return Response(200, stored[0], self._headers(etag))
        if request.method not in ("PUT", "DELETE"):
            return _error(405, f"{request.method} is not allowed")
        if self.etags:
            if_match = request.headers.get("if-match")
            if_none_match = request.headers.get("if-none-match")
            if (if_match is not None and not _matches(if_match, etag)) or (
                if_none_match is not None and _matches(if_none_match, etag)
            ):
                return _error(412, "precondition failed: the workflow changed")
        if request.method == "DELETE":
            if stored is None:
                return _error(404, "workflow not found")
            del self.data[name]
            return Response(204)
        try:
            value = request.json()
        except ValueError as exc:
            return _error(400, f"the body is not JSON: {exc}")
        if not isinstance(value, dict):
            return _error(400, "the body must be a JSON object (a workflow state)")
        new_etag = f'"{next(self._versions)}"'
        self.data[name] = (json.dumps(value).encode(), new_etag)
        return Response(201 if stored is None else 200, b"", self._headers(new_etag))

    def _headers(self, etag: str | None) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.etags and etag is not None:
            headers["ETag"] = etag
        return headers
