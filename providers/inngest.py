"""A workflow store on an Inngest server's HTTP API, as the seed defines it.

The contract: ``PUT {base_url}/v1/workflows/{id}`` stores a workflow's state
as JSON, ``GET`` reads it (404 when missing) and ``DELETE`` removes it (404
counts as done). With an event key, every request carries
``Authorization: Bearer <event key>``. ``{id}`` is the workflow id,
percent-encoded. ``base_url`` defaults to ``$INNGEST_BASE_URL``, else
``http://localhost:8288``; the event key to ``$INNGEST_EVENT_KEY``.

Where the server supports them the store adds standard HTTP conditional
requests: the ``ETag`` of a GET, ``If-Match`` on PUT and DELETE and
``If-None-Match: *`` to create, refused with 412. They make appends and the
index safe against other processes; a server that sends no ETag still
works, last-write-wins between processes.

The index of workflow ids lives on the server too, as the document of the
reserved id :data:`INDEX_ID` (which no workflow may use), so listing works
after a restart; see :mod:`providers._http` for how it stays consistent.
"""

from __future__ import annotations

import os
from typing import Any, Final
from urllib.parse import quote

import httpx

from app.workflow._errors import InvalidArgumentError, PayloadError
from app.workflow._registry import register, store_backed_factory
from app.workflow._store import WorkflowStore
from app.workflow._types import Duration
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
)

__all__ = [
    "DEFAULT_BASE_URL",
    "ENV_BASE_URL",
    "ENV_EVENT_KEY",
    "INDEX_ID",
    "InngestStore",
    "StoreClosedError",
    "StoreRequestError",
    "StoreUnavailableError",
]

DEFAULT_BASE_URL: Final = "http://localhost:8288"
"""The server used when neither ``base_url`` nor ``$INNGEST_BASE_URL`` is given."""

ENV_BASE_URL: Final = "INNGEST_BASE_URL"
"""Environment variable holding the server's base URL."""

ENV_EVENT_KEY: Final = "INNGEST_EVENT_KEY"
"""Environment variable holding the event key."""

INDEX_ID: Final = "__workflow_index__"
"""The reserved id under which the store keeps its index of workflow ids."""


class _HttpDocuments:
    """Documents under ``/v1/workflows/{id}``."""

    index_key = INDEX_ID

    def __init__(self, http: HttpClient) -> None:
        self._http = http
        self.where = http.where

    def key(self, workflow_id: str) -> str:
        if workflow_id == INDEX_ID:
            raise InvalidArgumentError(
                f"workflow id {INDEX_ID!r} is reserved by InngestStore for its index; "
                "use another id"
            )
        return workflow_id

    def _path(self, key: str) -> str:
        return f"/v1/workflows/{quote(key, safe='')}"

    def _check_auth(self, response: httpx.Response) -> None:
        if response.status_code in (401, 403):
            raise StoreRequestError(
                f"{self.where} rejected the event key (HTTP {response.status_code}): "
                f"pass the server's key as event_key or set ${ENV_EVENT_KEY}"
            )

    async def get(self, key: str) -> Document | None:
        response = await self._http.request("GET", self._path(key))
        self._check_auth(response)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise self._http.refused(response, f"read workflow {key!r}")
        try:
            value = response.json()
        except ValueError as exc:
            raise PayloadError(f"{self.where}: workflow {key!r} is not JSON") from exc
        return Document(value, response.headers.get("etag") or None)

    async def put(
        self, key: str, value: dict[str, Any], *, etag: str | None, create: bool = False
    ) -> None:
        headers: dict[str, str] = {}
        if etag is not None:
            headers["If-Match"] = etag
        elif create:
            headers["If-None-Match"] = "*"
        response = await self._http.request("PUT", self._path(key), json=value, headers=headers)
        self._check_auth(response)
        if response.status_code in (409, 412):
            raise EtagMismatch(key)
        if not 200 <= response.status_code < 300:
            raise self._http.refused(response, f"store workflow {key!r}")

    async def delete(self, key: str, *, etag: str | None) -> None:
        headers = {} if etag is None else {"If-Match": etag}
        response = await self._http.request("DELETE", self._path(key), headers=headers)
        self._check_auth(response)
        if response.status_code in (409, 412):
            raise EtagMismatch(key)
        if response.status_code != 404 and not 200 <= response.status_code < 300:
            raise self._http.refused(response, f"delete workflow {key!r}")

    async def aclose(self) -> None:
        await self._http.aclose()


class InngestStore(DocumentStore):
    """A workflow store on an Inngest server (the seed's PUT/GET/DELETE contract).

    Args:
        base_url: The server; default ``$INNGEST_BASE_URL``, else
            :data:`DEFAULT_BASE_URL`. It may carry a path prefix.
        event_key: Sent as ``Authorization: Bearer <key>``; default
            ``$INNGEST_EVENT_KEY``, none if unset. Never shown in a repr,
            an error or a log.
        http_client: An ``httpx.AsyncClient`` to send requests with (the
            caller closes it); one is created otherwise.
        timeout: Seconds (or a timedelta) each request may take.
        retries: Further tries of a request that failed transiently.

    Raises :class:`StoreUnavailableError` (naming the server) when the server
    cannot be reached through every retry, and :class:`StoreRequestError`
    when it refuses a request (for instance a wrong event key).
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        event_key: str | None = None,
        http_client: httpx.AsyncClient | None = None,
        timeout: Duration = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
    ) -> None:
        if base_url is None:
            base_url = os.environ.get(ENV_BASE_URL) or DEFAULT_BASE_URL
        key = os.environ.get(ENV_EVENT_KEY) if event_key is None else event_key
        if key is not None and not isinstance(key, str):
            raise InvalidArgumentError("InngestStore event_key must be a string")
        self._has_key = bool(key)
        http = HttpClient(
            base_url,
            server="Inngest server",
            timeout=timeout,
            retries=retries,
            secret_headers={"Authorization": f"Bearer {key}"} if key else None,
            client=http_client,
        )
        self._base_url = http.base_url
        super().__init__(_HttpDocuments(http))

    @property
    def base_url(self) -> str:
        """The server's base URL."""
        return self._base_url

    def __repr__(self) -> str:
        key = ", event_key=<hidden>" if self._has_key else ""
        return f"InngestStore(base_url={self._base_url!r}{key})"


_STORE_KEYS: Final = frozenset({"base_url", "event_key", "http_client", "timeout", "retries"})


def _from_extra(extra: dict[str, Any]) -> WorkflowStore:
    return InngestStore(**extra)


register("inngest", store_backed_factory("inngest", _from_extra, _STORE_KEYS))
