"""A fake Dapr sidecar: the state management HTTP API over in-memory state stores.

What it implements, as Dapr documents it (reference/api/state_api) and as the
runtime and its in-memory state store component behave:

- ``POST /v1.0/state/{store}``: a JSON array of ``{key, value, etag?,
  metadata?, options?: {concurrency, consistency}}``, applied all or nothing;
  204.
- ``GET /v1.0/state/{store}/{key}``: 200 with the JSON value and an ``ETag``
  header; 204 when the key is missing.
- ``DELETE /v1.0/state/{store}/{key}``: optional ``If-Match`` header and
  ``concurrency``/``consistency`` query parameters; 204.
- Etags: a write or delete carrying an etag succeeds only if the key exists
  with that etag; ``first-write`` without an etag only if the key is absent;
  otherwise the last write wins. A failed check answers 409 with
  ``ERR_STATE_SAVE``/``ERR_STATE_DELETE``, as the runtime does.
- An unknown store answers 400 ``ERR_STATE_STORE_NOT_FOUND``, a malformed
  request (or a key holding the reserved ``||``) 400 ``ERR_MALFORMED_REQUEST``.
- With ``api_token``, a request without that ``dapr-api-token`` header gets 401.

Bulk get, transactions and queries are not implemented (the store does not
use them): they answer 501.
"""

from __future__ import annotations

import itertools
import json
from typing import Any
from urllib.parse import unquote

from tests.fakes import FakeServer, Request, Response, json_response

__all__ = ["FakeDapr"]

_CONCURRENCY = ("first-write", "last-write")
_CONSISTENCY = ("strong", "eventual")


def _error(status: int, code: str, message: str) -> Response:
    return json_response(status, {"errorCode": code, "message": message})


class FakeDapr(FakeServer):
    """A Dapr sidecar whose state stores (``stores``, by component name) live in memory."""

    name = "fake-dapr"

    def __init__(
        self,
        *,
        stores: tuple[str, ...] = ("statestore",),
        api_token: str | None = None,
        port: int | None = None,
    ) -> None:
        super().__init__(port)
        self.api_token = api_token
        self.data: dict[str, dict[str, tuple[bytes, str]]] = {name: {} for name in stores}
        self._etags = itertools.count(1)

    def value(self, key: str, store: str = "statestore") -> Any:
        """The JSON value stored under ``key`` (``None`` if missing)."""
        with self.lock:
            item = self.data[store].get(key)
        return None if item is None else json.loads(item[0])

    def handle(self, request: Request) -> Response:
        if self.api_token is not None and request.headers.get("dapr-api-token") != self.api_token:
            return _error(401, "ERR_UNAUTHORIZED", "invalid api token")
        segments = request.segments()
        if len(segments) < 3 or segments[:2] != ["v1.0", "state"]:
            return _error(404, "ERR_NOT_FOUND", f"no route for {request.method} {request.path}")
        store_name = unquote(segments[2])
        store = self.data.get(store_name)
        if store is None:
            return _error(
                400, "ERR_STATE_STORE_NOT_FOUND", f"state store {store_name} is not found"
            )
        if len(segments) == 3 and request.method == "POST":
            return self._save(store_name, store, request)
        if len(segments) == 4:
            key = unquote(segments[3])
            if key in ("bulk", "transaction") and request.method in ("POST", "PUT"):
                return _error(501, "ERR_NOT_IMPLEMENTED", f"{key} is not implemented by the fake")
            if request.method == "GET":
                return self._get(store, key)
            if request.method == "DELETE":
                return self._delete(store_name, store, key, request)
        return _error(405, "ERR_METHOD_NOT_ALLOWED", f"{request.method} {request.path}")

    def _get(self, store: dict[str, tuple[bytes, str]], key: str) -> Response:
        item = store.get(key)
        if item is None:
            return Response(204)
        data, etag = item
        return Response(200, data, {"Content-Type": "application/json", "ETag": etag})

    def _save(
        self, store_name: str, store: dict[str, tuple[bytes, str]], request: Request
    ) -> Response:
        try:
            items = request.json()
        except ValueError as exc:
            return _error(400, "ERR_MALFORMED_REQUEST", f"failed to parse request: {exc}")
        if not isinstance(items, list):
            return _error(400, "ERR_MALFORMED_REQUEST", "the body must be a JSON array of states")
        checked: list[tuple[str, bytes]] = []
        for item in items:
            problem = _check_item(item)
            if problem is not None:
                return _error(400, "ERR_MALFORMED_REQUEST", problem)
            checked.append((item["key"], json.dumps(item["value"]).encode()))
        for item in items:  # all checks before any write, as the in-memory store does
            mismatch = _check_etag(store, item["key"], item.get("etag"), _concurrency(item))
            if mismatch is not None:
                return _error(
                    409,
                    "ERR_STATE_SAVE",
                    f"failed saving state in state store {store_name}: possible etag "
                    f"mismatch. error from state store: {mismatch}",
                )
        for key, data in checked:
            store[key] = (data, str(next(self._etags)))
        return Response(204)

    def _delete(
        self, store_name: str, store: dict[str, tuple[bytes, str]], key: str, request: Request
    ) -> Response:
        concurrency = _query(request, "concurrency")
        consistency = _query(request, "consistency")
        if concurrency not in (None, *_CONCURRENCY) or consistency not in (None, *_CONSISTENCY):
            return _error(400, "ERR_MALFORMED_REQUEST", "invalid concurrency or consistency")
        mismatch = _check_etag(store, key, request.headers.get("if-match"), concurrency)
        if mismatch is not None:
            return _error(
                409,
                "ERR_STATE_DELETE",
                f"failed deleting state with key {key}: possible etag mismatch. "
                f"error from state store: {mismatch}",
            )
        store.pop(key, None)
        return Response(204)


def _query(request: Request, name: str) -> str | None:
    values = request.query.get(name)
    return values[0] if values else None


def _concurrency(item: dict[str, Any]) -> str | None:
    options = item.get("options") or {}
    concurrency = options.get("concurrency")
    return concurrency if isinstance(concurrency, str) else None


def _check_item(item: Any) -> str | None:
    if not isinstance(item, dict):
        return "each state must be a JSON object"
    key = item.get("key")
    if not isinstance(key, str) or not key:
        return "each state needs a non-empty string key"
    if "||" in key:
        return f"input key/keyPrefix '{key}' can't contain '||'"
    if "value" not in item:
        return f"state {key!r} has no value"
    etag = item.get("etag")
    if etag is not None and not isinstance(etag, str):
        return f"state {key!r}: etag must be a string"
    options = item.get("options") or {}
    if not isinstance(options, dict):
        return f"state {key!r}: options must be an object"
    if options.get("concurrency") not in (None, *_CONCURRENCY):
        return f"state {key!r}: unknown concurrency {options.get('concurrency')!r}"
    if options.get("consistency") not in (None, *_CONSISTENCY):
        return f"state {key!r}: unknown consistency {options.get('consistency')!r}"
    return None


def _check_etag(
    store: dict[str, tuple[bytes, str]], key: str, etag: str | None, concurrency: str | None
) -> str | None:
    """Why the write of ``key`` fails its etag check, or ``None`` (in-memory store semantics)."""
    item = store.get(key)
    if etag:
        if item is None:
            return f"state not exist or expired for key={key}"
        if item[1] != etag:
            return f"state etag not match for key={key}: current={item[1]}, expect={etag}"
    elif concurrency == "first-write" and item is not None:
        return "item already exists and no etag was passed"
    return None
