"""A workflow store in a Dapr state store, through the sidecar's state API.

By default the store speaks Dapr's HTTP state API to the sidecar:
``GET /v1.0/state/{store}/{key}`` (204 when missing, ``ETag`` header),
``POST /v1.0/state/{store}`` with a JSON array of
``{key, value, etag, options}``, and ``DELETE /v1.0/state/{store}/{key}``
with ``If-Match``. Conditional writes use ``first-write`` concurrency, so a
stale etag is refused (HTTP 409) instead of overwriting. The sidecar URL is
the ``url`` argument, else ``$DAPR_HTTP_ENDPOINT``, else
``http://$DAPR_RUNTIME_HOST:$DAPR_HTTP_PORT`` (``127.0.0.1:3500`` by
default); ``$DAPR_API_TOKEN`` is sent as ``dapr-api-token`` when set.

Instead, ``client`` may be Dapr's own async client
(``dapr.aio.clients.DaprClient``) or anything else with the methods of
:class:`StateClient`.

Keys: workflow ``id`` lives under ``{key_prefix}{percent-encoded id}`` (so
ids may hold ``/``, ``||`` or any character) and the index of workflow ids
under ``{key_prefix}index:v1``, which no encoded id can equal. The index is
in the state store itself, so listing works after a restart and across
processes; see :mod:`providers._http` for how it stays consistent.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any, Final, Protocol
from urllib.parse import quote

import httpx

from app.workflow._errors import InvalidArgumentError, PayloadError
from app.workflow._registry import register, store_backed_factory
from app.workflow._store import WorkflowStore
from app.workflow._types import Duration, to_seconds
from providers._http import (
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    Document,
    DocumentStore,
    EtagMismatch,
    HttpClient,
    StoreClosedError,
    StoreRequestError,
    StoreUnavailableError,
    Transient,
    check_retries,
    retrying,
)

__all__ = [
    "DEFAULT_HTTP_PORT",
    "DEFAULT_KEY_PREFIX",
    "DEFAULT_STORE_NAME",
    "ENV_API_TOKEN",
    "ENV_HTTP_ENDPOINT",
    "ENV_HTTP_PORT",
    "ENV_RUNTIME_HOST",
    "DaprStore",
    "StateClient",
    "StateResponse",
    "StoreClosedError",
    "StoreRequestError",
    "StoreUnavailableError",
    "default_url",
]

DEFAULT_STORE_NAME: Final = "statestore"
"""The state store component used when ``store_name`` is not given."""

DEFAULT_KEY_PREFIX: Final = "workflow-"
"""Prefix of every key the store writes."""

DEFAULT_HTTP_PORT: Final = 3500
"""The sidecar's HTTP port when ``$DAPR_HTTP_PORT`` is not set."""

ENV_HTTP_ENDPOINT: Final = "DAPR_HTTP_ENDPOINT"
"""Environment variable holding the sidecar's full HTTP URL (wins over the port)."""

ENV_HTTP_PORT: Final = "DAPR_HTTP_PORT"
"""Environment variable holding the sidecar's HTTP port."""

ENV_RUNTIME_HOST: Final = "DAPR_RUNTIME_HOST"
"""Environment variable holding the sidecar's host (default ``127.0.0.1``)."""

ENV_API_TOKEN: Final = "DAPR_API_TOKEN"
"""Environment variable holding the sidecar's API token, sent as ``dapr-api-token``."""

_INDEX_SUFFIX: Final = "index:v1"  # ':' is always percent-encoded in workflow keys
_TRANSIENT_GRPC_CODES: Final = frozenset({"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"})


class StateResponse(Protocol):
    """What ``StateClient.get_state`` returns: the value's bytes (empty when missing) and etag."""

    @property
    def data(self) -> bytes: ...

    @property
    def etag(self) -> str: ...


class StateClient(Protocol):
    """The subset of Dapr's async Python client (``dapr.aio.clients.DaprClient``) the store uses.

    A mismatched etag must raise an error whose gRPC ``code()`` is
    ``ABORTED`` or whose message says "etag mismatch", as Dapr's do.
    ``options`` is Dapr's ``StateOptions`` (first-write concurrency) when the
    store creates its index and the Dapr SDK is installed, else ``None``.
    """

    async def get_state(self, store_name: str, key: str) -> StateResponse: ...

    async def save_state(
        self,
        store_name: str,
        key: str,
        value: bytes | str,
        etag: str | None = None,
        options: Any = None,
    ) -> object: ...

    async def delete_state(
        self,
        store_name: str,
        key: str,
        etag: str | None = None,
        options: Any = None,
    ) -> object: ...


def default_url() -> str:
    """The sidecar URL from the environment (see the module docstring)."""
    endpoint = os.environ.get(ENV_HTTP_ENDPOINT)
    if endpoint:
        return endpoint
    port = os.environ.get(ENV_HTTP_PORT) or str(DEFAULT_HTTP_PORT)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgumentError(f"{ENV_HTTP_PORT} must be a TCP port number, got {port!r}")
    host = os.environ.get(ENV_RUNTIME_HOST) or "127.0.0.1"
    return f"http://{host}:{int(port)}"


class _Keys:
    def __init__(self, key_prefix: str) -> None:
        if not isinstance(key_prefix, str) or "||" in key_prefix:
            raise InvalidArgumentError(
                f"DaprStore key_prefix must be a string without '||' (Dapr reserves it), "
                f"got {key_prefix!r}"
            )
        self.prefix = key_prefix
        self.index_key = key_prefix + _INDEX_SUFFIX

    def key(self, workflow_id: str) -> str:
        return self.prefix + quote(workflow_id, safe="")


class _HttpDocuments(_Keys):
    """Documents through the sidecar's HTTP state API."""

    def __init__(self, http: HttpClient, store_name: str, key_prefix: str) -> None:
        super().__init__(key_prefix)
        self._http = http
        self._store_name = store_name
        self._path = f"/v1.0/state/{quote(store_name, safe='')}"
        self.where = f"{http.where} (state store {store_name!r})"

    async def get(self, key: str) -> Document | None:
        response = await self._http.request("GET", f"{self._path}/{quote(key, safe='')}")
        if response.status_code == 204:
            return None
        if response.status_code != 200:
            raise self._http.refused(
                response, f"read key {key!r} of state store {self._store_name!r}"
            )
        try:
            value = response.json()
        except ValueError as exc:
            raise PayloadError(f"{self.where}: key {key!r} does not hold JSON") from exc
        return Document(value, response.headers.get("etag") or None)

    async def put(
        self, key: str, value: dict[str, Any], *, etag: str | None, create: bool = False
    ) -> None:
        item: dict[str, Any] = {"key": key, "value": value}
        if etag is not None:
            item["etag"] = etag
        if etag is not None or create:
            # With no etag, first-write means "only if absent".
            item["options"] = {"concurrency": "first-write"}
        response = await self._http.request("POST", self._path, json=[item])
        if response.status_code == 409:
            raise EtagMismatch(key)
        if response.status_code not in (200, 204):
            raise self._http.refused(
                response, f"save key {key!r} in state store {self._store_name!r}"
            )

    async def delete(self, key: str, *, etag: str | None) -> None:
        headers = {} if etag is None else {"If-Match": etag}
        params = {} if etag is None else {"concurrency": "first-write"}
        response = await self._http.request(
            "DELETE", f"{self._path}/{quote(key, safe='')}", headers=headers, params=params
        )
        if response.status_code == 409:
            raise EtagMismatch(key)
        if response.status_code not in (200, 204):
            raise self._http.refused(
                response, f"delete key {key!r} of state store {self._store_name!r}"
            )

    async def aclose(self) -> None:
        await self._http.aclose()


def _grpc_code(exc: BaseException) -> str | None:
    code = getattr(exc, "code", None)
    if not callable(code):
        return None
    try:
        name = getattr(code(), "name", None)
    except Exception:
        return None
    return name if isinstance(name, str) else None


def _first_write_options() -> Any:
    try:
        from dapr.clients.grpc._state import (  # type: ignore[import-not-found]
            Concurrency,
            StateOptions,
        )
    except ImportError:
        return None
    return StateOptions(concurrency=Concurrency.first_write)


class _ClientDocuments(_Keys):
    """Documents through a :class:`StateClient`, with the store's timeouts and retries."""

    def __init__(
        self, client: StateClient, store_name: str, key_prefix: str, timeout: float, retries: int
    ) -> None:
        super().__init__(key_prefix)
        self._client = client
        self._store_name = store_name
        self._timeout = timeout
        self._retries = retries
        self.where = f"Dapr state store {store_name!r} through {type(client).__name__}"

    async def _call(self, what: str, call: Callable[[], Awaitable[Any]]) -> Any:
        async def attempt() -> Any:
            try:
                return await asyncio.wait_for(call(), self._timeout)
            except TimeoutError as exc:
                raise Transient(f"no answer within {self._timeout:g}s") from exc
            except (EtagMismatch, Transient):
                raise
            except Exception as exc:
                code = _grpc_code(exc)
                text = str(exc)
                if code == "ABORTED" or ("etag" in text.lower() and "mismatch" in text.lower()):
                    raise EtagMismatch(what) from exc
                if code in _TRANSIENT_GRPC_CODES or isinstance(exc, ConnectionError):
                    raise Transient(f"{type(exc).__name__}: {text}") from exc
                raise StoreRequestError(f"{self.where}: {what} failed: {exc}") from exc

        return await retrying(attempt, where=self.where, what=what, retries=self._retries)

    async def get(self, key: str) -> Document | None:
        response = await self._call(
            f"get key {key!r}", lambda: self._client.get_state(self._store_name, key)
        )
        data = response.data
        if not data:
            return None
        try:
            value = json.loads(data)
        except ValueError as exc:
            raise PayloadError(f"{self.where}: key {key!r} does not hold JSON") from exc
        return Document(value, response.etag or None)

    async def put(
        self, key: str, value: dict[str, Any], *, etag: str | None, create: bool = False
    ) -> None:
        data = json.dumps(value).encode()
        options = _first_write_options() if create and etag is None else None
        await self._call(
            f"save key {key!r}",
            lambda: self._client.save_state(
                self._store_name, key, data, etag=etag, options=options
            ),
        )

    async def delete(self, key: str, *, etag: str | None) -> None:
        await self._call(
            f"delete key {key!r}",
            lambda: self._client.delete_state(self._store_name, key, etag=etag),
        )

    async def aclose(self) -> None:
        """The caller owns the client: it is not closed here."""


class DaprStore(DocumentStore):
    """A workflow store in the Dapr state store ``store_name``.

    Args:
        url: The sidecar's HTTP URL; default from the environment
            (:func:`default_url`). Not used with ``client``.
        store_name: The state store component name.
        client: A :class:`StateClient` (e.g. Dapr's async Python client) to
            use instead of HTTP; the caller keeps ownership and closes it.
        key_prefix: Prefix of every key written, so that several stores can
            share one state store.
        api_token: The sidecar's API token; default ``$DAPR_API_TOKEN``.
            Sent on every request, never shown in a repr or a log.
        timeout: Seconds (or a timedelta) each call may take.
        retries: Further tries of a call that failed transiently.
        http_client: An ``httpx.AsyncClient`` to send requests with (the
            caller closes it); one is created otherwise.

    Raises :class:`StoreUnavailableError` (naming the sidecar) when the
    sidecar cannot be reached through every retry, and
    :class:`StoreRequestError` when it refuses a request (for instance an
    unknown state store).
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        store_name: str = DEFAULT_STORE_NAME,
        client: StateClient | None = None,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        api_token: str | None = None,
        timeout: Duration = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        if not isinstance(store_name, str) or not store_name.strip():
            raise InvalidArgumentError(
                f"DaprStore store_name must be a non-empty string, got {store_name!r}"
            )
        self._store_name = store_name
        self._key_prefix = key_prefix
        self._url: str | None
        documents: _HttpDocuments | _ClientDocuments
        if client is not None:
            if url is not None or http_client is not None or api_token is not None:
                raise InvalidArgumentError(
                    "DaprStore takes either a client or url/api_token/http_client, not both"
                )
            missing = [
                name
                for name in ("get_state", "save_state", "delete_state")
                if not callable(getattr(client, name, None))
            ]
            if missing:
                raise InvalidArgumentError(
                    f"DaprStore client {type(client).__name__} lacks {', '.join(missing)}: "
                    "pass Dapr's dapr.aio.clients.DaprClient or a StateClient"
                )
            self._url = None
            self._has_token = False
            documents = _ClientDocuments(
                client,
                store_name,
                key_prefix,
                to_seconds(timeout, "DaprStore timeout"),
                check_retries(retries, "DaprStore"),
            )
        else:
            self._url = default_url() if url is None else url
            token = os.environ.get(ENV_API_TOKEN) if api_token is None else api_token
            self._has_token = bool(token)
            http = HttpClient(
                self._url,
                server="Dapr sidecar",
                timeout=timeout,
                retries=retries,
                secret_headers={"dapr-api-token": token} if token else None,
                client=http_client,
            )
            documents = _HttpDocuments(http, store_name, key_prefix)
        super().__init__(documents)

    @property
    def url(self) -> str | None:
        """The sidecar URL (``None`` when a client is used)."""
        return self._url

    @property
    def store_name(self) -> str:
        """The Dapr state store component."""
        return self._store_name

    @property
    def key_prefix(self) -> str:
        """The prefix of every key written."""
        return self._key_prefix

    def __repr__(self) -> str:
        where = f"url={self._url!r}" if self._url is not None else "client"
        token = ", api_token=<hidden>" if self._has_token else ""
        return (
            f"DaprStore({where}, store_name={self._store_name!r}, "
            f"key_prefix={self._key_prefix!r}{token})"
        )


_STORE_KEYS: Final = frozenset(
    {"url", "store_name", "client", "key_prefix", "api_token", "timeout", "retries", "http_client"}
)


def _from_extra(extra: dict[str, Any]) -> WorkflowStore:
    return DaprStore(**extra)


register("dapr", store_backed_factory("dapr", _from_extra, _STORE_KEYS))
