"""What the stores that keep workflows on a remote server (Dapr, Inngest) share.

:class:`HttpClient` sends one server's requests: a timeout on every call,
retries with jittered exponential backoff on transient failures (connection
errors, timeouts, HTTP 429 and 5xx), and errors that name the server. Secret
headers (API tokens, event keys) are kept private: never in a repr, an error
or a log line.

:class:`DocumentStore` is the workflow store itself, written once over any
service of keyed JSON documents with etags (a :class:`Documents` backend):

- one document per workflow: the state as JSON plus two bookkeeping fields,
  the run's *index token* and the id of the write that produced it;
- one index document (a reserved key) mapping every workflow id to the index
  token of its latest save, so ``list`` works after a restart and from any
  process. Index updates are compare-and-set on the etag, retried on
  conflict; the updates of concurrent calls are coalesced into one write.

Write order keeps readers consistent without transactions: ``save`` records
the id in the index before it writes the state, ``delete`` removes the state
before the id, so an index entry may outlive its state (``list`` ignores it)
but a stored state is always listed. ``delete`` only removes the entry whose
token is that of the state it deleted, so a concurrent ``save`` of the same
id (which writes a fresh token first) is never unlisted. ``append`` reads the
document, checks the run and the event ids, and writes it back on the etag
it read; a lost race is re-read and re-checked. A write whose answer was lost
is recognised by its write id when the retry finds the etag moved.

A backend without etags (a server that sends no ``ETag``) still works, but
its writes are last-write-wins: two appends to one workflow racing each other,
or index writes from several processes, may overwrite one another. Within one
store object index writes never race: they go through one coalescing writer.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, Protocol, Self, TypeVar

import httpx
import pydantic

from app.workflow._errors import InvalidArgumentError, PayloadError, WorkflowError
from app.workflow._store import StoreClosedError, StoreConflictError
from app.workflow._types import Duration, HistoryEvent, WorkflowFilter, WorkflowState, to_seconds

__all__ = [
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT",
    "Document",
    "DocumentStore",
    "Documents",
    "EtagMismatch",
    "HttpClient",
    "StoreClosedError",
    "StoreRequestError",
    "StoreUnavailableError",
    "Transient",
    "check_retries",
    "retrying",
]

log = logging.getLogger("providers.http")

_T = TypeVar("_T")

DEFAULT_TIMEOUT: Final = 10.0
"""Seconds each request may take (connect, send, wait, read) before it is retried."""

DEFAULT_RETRIES: Final = 3
"""Further tries of a request that failed transiently."""

_TRANSIENT_STATUS: Final = frozenset({408, 429, 500, 502, 503, 504})
_FIRST_BACKOFF_S: Final = 0.05
_MAX_BACKOFF_S: Final = 2.0
_MAX_CAS_ROUNDS: Final = 64  # compare-and-set rounds before a contended write gives up
_LIST_CONCURRENCY: Final = 16
# Keep as many connections alive as may be open: with httpx's default (20 kept
# of 100), many concurrent workflows would reconnect for most requests.
_LIMITS: Final = httpx.Limits(max_connections=64, max_keepalive_connections=64)

_TOKEN_FIELD: Final = "_index_token"
_WRITE_FIELD: Final = "_write_id"
_INDEX_FORMAT: Final = 1


class StoreUnavailableError(WorkflowError, ConnectionError):
    """The store's server could not be reached, or kept failing, through every retry.

    Nothing is known to have been written by the failed call; the store works
    again once the server is back.
    """


class StoreRequestError(WorkflowError):
    """The server refused a request (a 4xx answer): wrong credentials, store name or URL."""


class EtagMismatch(Exception):
    """A conditional write found the document changed (or created, or gone) since it was read."""


def check_retries(retries: int, owner: str) -> int:
    """Validate a ``retries`` argument."""
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise InvalidArgumentError(f"{owner} retries must be an int >= 0, got {retries!r}")
    return retries


def _backoff(attempt: int) -> float:
    # Full jitter between half and all of the capped exponential step.
    step = min(_MAX_BACKOFF_S, _FIRST_BACKOFF_S * 2.0 ** (attempt - 1))
    return step * random.uniform(0.5, 1.0)


class Transient(Exception):
    """A try that failed in a way that may pass if repeated (raised inside :func:`retrying`)."""


async def retrying(
    attempt: Callable[[], Awaitable[_T]], *, where: str, what: str, retries: int
) -> _T:
    """Run ``attempt``, again after a backoff each time it raises :class:`Transient`.

    Raises :class:`StoreUnavailableError` naming ``where`` when the last try
    fails; any other error passes through at once.
    """
    started = time.monotonic()
    for number in range(1, retries + 2):
        try:
            return await attempt()
        except Transient as exc:
            if number > retries:
                raise StoreUnavailableError(
                    f"{where} is unavailable: {what} failed {number} time(s) in "
                    f"{time.monotonic() - started:.1f}s; last error: {exc}"
                ) from exc.__cause__ or exc
            delay = _backoff(number)
            log.warning(
                "%s: %s failed (%s); retry %d of %d in %.2fs",
                where,
                what,
                exc,
                number,
                retries,
                delay,
            )
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


# -- HTTP -----------------------------------------------------------------------


class HttpClient:
    """Requests to one server, with timeouts, retries and errors that name the server.

    ``client`` may be the caller's ``httpx.AsyncClient`` (it is then not
    closed here); otherwise one is created on first use and closed by
    :meth:`aclose`. ``secret_headers`` go on every request and nowhere else.
    """

    def __init__(
        self,
        base_url: str,
        *,
        server: str,
        timeout: Duration = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        secret_headers: Mapping[str, str] | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> None:
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise InvalidArgumentError(
                f"{server} URL must start with http:// or https://, got {base_url!r}"
            )
        if client is not None and not isinstance(client, httpx.AsyncClient):
            raise InvalidArgumentError(
                f"{server} http_client must be an httpx.AsyncClient, got {type(client).__name__}"
            )
        self._base_url = base_url.rstrip("/")
        self._server = server
        self._timeout = to_seconds(timeout, f"{server} timeout")
        self._retries = check_retries(retries, server)
        self._headers = dict(secret_headers or {})
        self._client = client
        self._owns_client = client is None

    @property
    def base_url(self) -> str:
        """The server's base URL, without a trailing slash."""
        return self._base_url

    @property
    def where(self) -> str:
        """The server and its URL, for messages."""
        return f"{self._server} at {self._base_url}"

    def __repr__(self) -> str:
        return f"HttpClient({self.where}, timeout={self._timeout:g}s, retries={self._retries})"

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send ``method path`` and return the first answer that is not transient.

        Raises :class:`StoreUnavailableError` after the last retry.
        """
        client = self._client
        if client is None:
            client = self._client = httpx.AsyncClient(limits=_LIMITS)
        merged = {**(headers or {}), **self._headers}
        url = self._base_url + path

        async def attempt() -> httpx.Response:
            try:
                response = await client.request(
                    method, url, json=json, headers=merged, params=params, timeout=self._timeout
                )
            except httpx.UnsupportedProtocol as exc:
                raise StoreRequestError(f"{self.where}: {method} {path}: {exc}") from exc
            except httpx.TimeoutException as exc:
                raise Transient(
                    f"no answer within {self._timeout:g}s ({type(exc).__name__})"
                ) from exc
            except httpx.TransportError as exc:
                raise Transient(f"{type(exc).__name__}: {exc or 'connection failed'}") from exc
            if response.status_code in _TRANSIENT_STATUS:
                raise Transient(f"HTTP {response.status_code} {_excerpt(response)}")
            return response

        return await retrying(
            attempt, where=self.where, what=f"{method} {path}", retries=self._retries
        )

    def refused(self, response: httpx.Response, what: str) -> StoreRequestError:
        """The error for an answer that is neither success nor a known condition."""
        request = response.request
        return StoreRequestError(
            f"{self.where} refused to {what} ({request.method} {request.url.raw_path.decode()}): "
            f"HTTP {response.status_code} {_excerpt(response)}"
        )

    async def aclose(self) -> None:
        """Close the HTTP client if this object created it."""
        client, self._client = self._client, None
        if client is not None and self._owns_client:
            await client.aclose()


def _excerpt(response: httpx.Response, limit: int = 300) -> str:
    text = response.text.strip()
    return text if len(text) <= limit else text[:limit] + "..."


# -- documents ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Document:
    """A stored JSON document and its etag (``None`` when the server gives none)."""

    value: Any
    etag: str | None


class Documents(Protocol):
    """Keyed JSON documents with etags: all a :class:`DocumentStore` needs from a server.

    ``put`` and ``delete`` with an ``etag`` succeed only if the document still
    has it; ``put(create=True)`` only if the document does not exist. Both
    raise :class:`EtagMismatch` otherwise. ``delete`` of a missing document
    without an etag succeeds.
    """

    @property
    def where(self) -> str:
        """The server and its address, for messages."""
        ...

    @property
    def index_key(self) -> str:
        """The reserved key of the index document."""
        ...

    def key(self, workflow_id: str) -> str:
        """The document key of a workflow (raises ``InvalidArgumentError`` for a reserved id)."""
        ...

    async def get(self, key: str) -> Document | None: ...

    async def put(
        self, key: str, value: dict[str, Any], *, etag: str | None, create: bool = False
    ) -> None: ...

    async def delete(self, key: str, *, etag: str | None) -> None: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class _IndexOp:
    workflow_id: str
    token: str
    add: bool  # False: remove the entry if it still has this token


class _Index:
    """The index document and one coalescing writer for it."""

    def __init__(self, documents: Documents) -> None:
        self._documents = documents
        self._pending: builtins.list[tuple[_IndexOp, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._warned_no_etag = False

    async def read(self) -> dict[str, str]:
        """Workflow id -> index token of its latest save."""
        return self._entries(await self._documents.get(self._documents.index_key))

    async def update(self, op: _IndexOp) -> None:
        """Apply ``op``; concurrent updates share one write."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((op, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._drain())
        await future

    async def wait_idle(self) -> None:
        """Wait until queued updates are written (or failed)."""
        if self._writer is not None and not self._writer.done():
            await asyncio.wait([self._writer])

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self._write([op for op, _ in batch])
            except BaseException as exc:
                for _, future in batch:
                    if future.done():
                        continue
                    if isinstance(exc, Exception):
                        future.set_exception(exc)
                    else:
                        future.cancel()
                if not isinstance(exc, Exception):
                    raise
            else:
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)

    async def _write(self, ops: Sequence[_IndexOp]) -> None:
        key = self._documents.index_key
        for round_ in range(1, _MAX_CAS_ROUNDS + 1):
            document = await self._documents.get(key)
            entries = self._entries(document)
            changed = False
            for op in ops:
                current = entries.get(op.workflow_id)
                if op.add and current != op.token:
                    entries[op.workflow_id] = op.token
                    changed = True
                elif not op.add and current == op.token:
                    del entries[op.workflow_id]
                    changed = True
            if not changed:  # already applied, e.g. by a retried write whose answer was lost
                return
            etag = None if document is None else document.etag
            if document is not None and etag is None:
                self._warn_no_etag()
            value = {"format": _INDEX_FORMAT, "workflows": entries}
            try:
                await self._documents.put(key, value, etag=etag, create=document is None)
                return
            except EtagMismatch:
                await asyncio.sleep(_backoff(min(round_, 6)))
        raise StoreConflictError(
            f"{self._documents.where}: the workflow index {key!r} kept changing under "
            f"{_MAX_CAS_ROUNDS} compare-and-set rounds; too many concurrent writers"
        )

    def _entries(self, document: Document | None) -> dict[str, str]:
        if document is None:
            return {}
        value = document.value
        workflows = value.get("workflows") if isinstance(value, dict) else None
        if not isinstance(workflows, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in workflows.items()
        ):
            raise PayloadError(
                f"{self._documents.where}: the document under the reserved key "
                f"{self._documents.index_key!r} is not a workflow index"
            )
        return dict(workflows)

    def _warn_no_etag(self) -> None:
        if not self._warned_no_etag:
            self._warned_no_etag = True
            log.warning(
                "%s sends no ETag: index writes are last-write-wins, so stores in "
                "several processes may drop each other's entries",
                self._documents.where,
            )


def _created_key(moment: datetime) -> datetime:
    # Naive datetimes count as UTC so that mixed values still sort (as in SQLiteStore).
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _span(first: int, count: int) -> str:
    return f"id {first}" if count == 1 else f"ids {first}..{first + count - 1}"


class DocumentStore:
    """An :class:`~app.workflow._store.AppendingStore` over a :class:`Documents` backend.

    Every call is a few requests to the server; ``list`` reads the index and
    then every listed workflow (O(number of workflows)). ``append`` rewrites
    the workflow's document (O(history length) bytes per step). Use
    ``async with`` or :meth:`close`; calls after ``close`` raise
    :class:`StoreClosedError`. A cancelled call may still be applied.
    """

    def __init__(self, documents: Documents) -> None:
        self._documents = documents
        self._index = _Index(documents)
        self._closed = False

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def save(self, state: WorkflowState) -> None:
        """Replace everything stored under ``state.workflow_id``, and list it."""
        ids = [event.id for event in state.history]
        if len(set(ids)) != len(ids):
            raise StoreConflictError(
                f"workflow {state.workflow_id!r}: the saved history repeats event ids {ids}"
            )
        key = self._key(state.workflow_id)
        token = uuid.uuid4().hex
        value = _encode(state, token)
        # Index first: a failure after it leaves an entry that list ignores,
        # never a stored workflow that list cannot see.
        await self._index.update(_IndexOp(state.workflow_id, token, add=True))
        await self._documents.put(key, value, etag=None)

    async def load(self, workflow_id: str) -> WorkflowState | None:
        """Return the stored state with its history, or ``None``."""
        key = self._key(workflow_id)
        document = await self._documents.get(key)
        return None if document is None else self._decode(key, document)

    async def list(self, filter: WorkflowFilter) -> builtins.list[WorkflowState]:
        """Return the matching states, newest ``created_at`` first (ties by id)."""
        self._check_open()
        entries = await self._index.read()
        gate = asyncio.Semaphore(_LIST_CONCURRENCY)

        async def fetch(workflow_id: str) -> WorkflowState | None:
            async with gate:
                return await self.load(workflow_id)

        tasks = [asyncio.ensure_future(fetch(workflow_id)) for workflow_id in sorted(entries)]
        try:
            loaded = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:  # one failed: the others would retry a dead server for nothing
                task.cancel()
            raise
        matching = [
            state
            for state in loaded
            if state is not None and (filter.status is None or state.status == filter.status)
        ]
        # Two stable sorts: workflow_id ascending breaks created_at ties.
        matching.sort(key=lambda state: state.workflow_id)
        matching.sort(key=lambda state: _created_key(state.created_at), reverse=True)
        return matching[: filter.limit] if filter.limit else matching

    async def delete(self, workflow_id: str) -> None:
        """Remove the workflow; an unknown id is a no-op."""
        key = self._key(workflow_id)
        document = await self._documents.get(key)
        tried: str | None = None  # index token of a state a conditional delete aimed at
        for _ in range(_MAX_CAS_ROUNDS):
            if document is None:
                if tried is not None:  # gone: deleted by us (answer lost) or by another caller
                    await self._index.update(_IndexOp(workflow_id, tried, add=False))
                return
            token = _token_of(document)
            try:
                await self._documents.delete(key, etag=document.etag)
            except EtagMismatch:
                tried = token
                document = await self._documents.get(key)
                continue
            # State first, then the entry: a failure in between leaves an entry list ignores.
            await self._index.update(_IndexOp(workflow_id, token, add=False))
            return
        raise StoreConflictError(
            f"{self._documents.where}: workflow {workflow_id!r} kept changing while it "
            f"was being deleted ({_MAX_CAS_ROUNDS} tries)"
        )

    async def append(self, state: WorkflowState, events: Sequence[HistoryEvent]) -> None:
        """Add ``events`` to the stored run and copy the header fields of ``state``.

        Raises :class:`StoreConflictError`, storing nothing, when the workflow
        is not stored, its stored run is not ``state.run_id``, or the event ids
        do not continue the stored history.
        """
        workflow_id = state.workflow_id
        if any(event.id != events[0].id + offset for offset, event in enumerate(events)):
            ids = ", ".join(str(e.id) for e in events)
            raise StoreConflictError(
                f"cannot append to workflow {workflow_id!r}: "
                f"the appended event ids are not consecutive: [{ids}]"
            )
        key = self._key(workflow_id)
        new_events = [event.model_dump(mode="json") for event in events]
        header = state.model_dump(mode="json", include={"status", "result", "error", "updated_at"})
        write_id = uuid.uuid4().hex
        document = await self._documents.get(key)
        for _ in range(_MAX_CAS_ROUNDS):
            stored = self._check_append(state, events, key, document)
            value = {**stored, **header, "history": [*stored["history"], *new_events]}
            value[_WRITE_FIELD] = write_id
            try:
                await self._documents.put(
                    key, value, etag=None if document is None else document.etag
                )
                return
            except EtagMismatch:
                document = await self._documents.get(key)
                if document is not None and _write_of(document) == write_id:
                    return  # our own write landed; its answer was lost and the retry conflicted
        raise StoreConflictError(
            f"{self._documents.where}: workflow {workflow_id!r} kept changing while "
            f"events were appended ({_MAX_CAS_ROUNDS} tries)"
        )

    async def close(self) -> None:
        """Finish queued index writes and release the connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            await self._index.wait_idle()
        await self._documents.aclose()

    # -- internals ----------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"{type(self).__name__} for {self._documents.where} is closed")

    def _key(self, workflow_id: str) -> str:
        self._check_open()
        if not isinstance(workflow_id, str) or not workflow_id:
            raise InvalidArgumentError(
                f"workflow id must be a non-empty string, got {workflow_id!r}"
            )
        return self._documents.key(workflow_id)

    def _check_append(
        self,
        state: WorkflowState,
        events: Sequence[HistoryEvent],
        key: str,
        document: Document | None,
    ) -> dict[str, Any]:
        workflow_id = state.workflow_id
        if document is None:
            raise StoreConflictError(
                f"cannot append to workflow {workflow_id!r} (run {state.run_id}): "
                "it is not stored; save it first"
            )
        value = document.value
        history = value.get("history") if isinstance(value, dict) else None
        if not isinstance(history, builtins.list):
            raise PayloadError(f"{self._documents.where}: {key!r} is not a workflow state")
        stored: dict[str, Any] = value
        if stored.get("run_id") != state.run_id:
            raise StoreConflictError(
                f"cannot append to workflow {workflow_id!r}: the stored run is "
                f"{stored.get('run_id')}, the writer's run is {state.run_id}"
            )
        count = len(history)
        if events and events[0].id != count + 1:
            raise StoreConflictError(
                f"workflow {workflow_id!r} has {count} stored events, so the appended "
                f"events must be {_span(count + 1, len(events))}; got "
                f"{_span(events[0].id, len(events))} (a duplicate or a gap)"
            )
        return stored

    def _decode(self, key: str, document: Document) -> WorkflowState:
        value = document.value
        if not isinstance(value, dict):
            raise PayloadError(f"{self._documents.where}: {key!r} is not a workflow state")
        fields = {k: v for k, v in value.items() if k not in (_TOKEN_FIELD, _WRITE_FIELD)}
        try:
            return WorkflowState.model_validate(fields)
        except pydantic.ValidationError as exc:
            raise PayloadError(
                f"{self._documents.where}: {key!r} is not a workflow state: {exc}"
            ) from exc


def _encode(state: WorkflowState, token: str) -> dict[str, Any]:
    value = state.model_dump(mode="json")
    value[_TOKEN_FIELD] = token
    value[_WRITE_FIELD] = uuid.uuid4().hex
    return value


def _token_of(document: Document) -> str:
    value = document.value
    token = value.get(_TOKEN_FIELD) if isinstance(value, dict) else None
    return token if isinstance(token, str) else ""


def _write_of(document: Document) -> str | None:
    value = document.value
    write = value.get(_WRITE_FIELD) if isinstance(value, dict) else None
    return write if isinstance(write, str) else None
