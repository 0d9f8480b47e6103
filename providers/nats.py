"""A durable workflow store in a NATS JetStream key-value bucket.

Layout: one key per workflow in the bucket (default ``beluga_workflows``).
The key is the workflow id escaped to the characters KV keys allow (see
:func:`encode_key`); the value is the whole :class:`WorkflowState` as compact
JSON (fields at their default value are left out). Every write replaces one
value, so a write is applied whole or not at all: nothing is ever half-written.

``append`` is a compare-and-set on the key's revision (``KV update`` with
``last=revision``): two writers can never silently overwrite each other; the
loser re-reads and either applies its events to the newer value or raises
:class:`~app.workflow.StoreConflictError`. The store remembers the revision
and value it last wrote for recent workflows, so a step normally costs one
round trip; but each step rewrites the whole history, so a step costs
O(history) bytes. ``save`` replaces the value unconditionally (a new run
wins). ``list`` reads the latest value of every key in one pass, so it costs
O(everything stored): delete finished workflows you no longer need.

Size limit: one value must fit in one NATS message, i.e. the server's
``max_payload`` (1 MB by default, at most 64 MB in the server config) less a
little room for headers, and the bucket's ``max_value_size`` when it has one.
An event with small payloads takes about 150 bytes, so about 7,000 fit in
1 MB; large activity inputs or results use the room up faster. A write that
would exceed the limit raises :class:`HistoryTooLargeError` naming the sizes;
nothing is written (the embedded executor then parks the workflow).

Every network request is bounded by ``timeout``; transient failures (a
timeout, a lost or refused connection, JetStream not answering) are retried
``retries`` times with exponential backoff, reconnecting as needed, and then
raise :class:`NatsUnavailableError` naming the server. The connection is
opened on first use (or by ``async with`` / :meth:`NatsStore.connect`).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import copy
import functools
import logging
import math
import os
import random
import re
import ssl
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, NamedTuple, TypeVar
from urllib.parse import urlsplit

try:
    import nats.errors
    import nats.js.errors
    from nats.aio.client import Client
    from nats.js.api import (
        AckPolicy,
        ConsumerConfig,
        DeliverPolicy,
        KeyValueConfig,
        StorageType,
    )
    from nats.js.kv import KeyValue
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "providers.nats needs nats-py: pip install 'streamflow-engine[nats]'"
    ) from exc

import pydantic

from app.workflow._errors import InvalidArgumentError, WorkflowError
from app.workflow._registry import register, store_backed_factory
from app.workflow._store import StoreClosedError as _StoreClosedError
from app.workflow._store import StoreConflictError, WorkflowStore
from app.workflow._types import HistoryEvent, WorkflowFilter, WorkflowState, WorkflowStatus

__all__ = [
    "DEFAULT_BUCKET",
    "DEFAULT_URL",
    "ENV_URL",
    "HistoryTooLargeError",
    "NatsStore",
    "NatsStoreError",
    "NatsUnavailableError",
    "StoreClosedError",
    "decode_key",
    "encode_key",
]

ENV_URL: Final = "NATS_URL"
"""Environment variable naming the server(s) when neither a URL nor a connection is given."""

DEFAULT_URL: Final = "nats://localhost:4222"
"""Server used when neither a URL, ``$NATS_URL`` nor a connection is given."""

DEFAULT_BUCKET: Final = "beluga_workflows"
"""Key-value bucket used when none is given."""

_SCHEMES: Final = ("nats", "tls", "ws", "wss")
_BUCKET_RE: Final = re.compile(r"^[A-Za-z0-9_-]+$")
_PLAIN_KEY_CHARS: Final = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_/"
)
_ESCAPE_RE: Final = re.compile(r"=([0-9A-F]{2})")
# The key travels in the subject of a PUB line, which the server caps at
# max_control_line (4 KB by default) together with the other fields.
_MAX_KEY_LENGTH: Final = 2048
# Room for the headers of an update (expected revision) next to the value.
_HEADER_ROOM: Final = 256
_BACKOFF_FIRST: Final = 0.05
_BACKOFF_MAX: Final = 2.0
_CAS_ROUNDS: Final = 8
_CACHE_SIZE: Final = 256
_UNSURE_SIZE: Final = 4096
_LIST_BATCH: Final = 256  # messages per fetch when listing
# What removes a key: a KV-Operation header, or a marker the server (2.11+) places
_REMOVED: Final = frozenset({"DEL", "PURGE", "MaxAge", "Purge", "Remove"})

log = logging.getLogger("providers.nats")

_T = TypeVar("_T")


# -- errors ---------------------------------------------------------------------


class NatsStoreError(WorkflowError):
    """Base of the errors of :class:`NatsStore` (besides ``StoreConflictError``)."""


class NatsUnavailableError(NatsStoreError, ConnectionError):
    """The NATS server could not be reached or did not answer within the retries."""


class HistoryTooLargeError(NatsStoreError, ValueError):
    """A workflow's state is larger than one NATS message may be; nothing was written."""


class StoreClosedError(NatsStoreError, _StoreClosedError):
    """The store was closed: it takes no more calls."""


class _NotConnected(Exception):
    """A borrowed connection is reconnecting: retry later (never leaves the module)."""


_TRANSIENT: Final[tuple[type[BaseException], ...]] = (
    TimeoutError,  # also asyncio's and nats.errors.TimeoutError
    OSError,
    _NotConnected,
    nats.errors.ConnectionClosedError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.NoServersError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.NoRespondersError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.ServerError,
)


# -- keys and URLs ----------------------------------------------------------------


def encode_key(workflow_id: str) -> str:
    """The KV key of ``workflow_id``.

    Letters, digits, ``-``, ``_`` and ``/`` stay as they are; every other
    character becomes ``=XX`` per UTF-8 byte (upper-case hex), so any
    non-empty id maps to a valid key and back. Raises
    :class:`~app.workflow.InvalidArgumentError` for an empty id or one whose
    key would be longer than 2048 characters.
    """
    if not isinstance(workflow_id, str) or not workflow_id:
        raise InvalidArgumentError(
            f"a NATS store needs a non-empty string workflow id, got {workflow_id!r}"
        )
    parts = [
        char
        if char in _PLAIN_KEY_CHARS
        else "".join(f"={byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))
        for char in workflow_id
    ]
    key = "".join(parts)
    if len(key) > _MAX_KEY_LENGTH:
        raise InvalidArgumentError(
            f"workflow id {workflow_id[:40]!r}... is too long for a NATS key: it escapes to "
            f"{len(key)} characters, at most {_MAX_KEY_LENGTH} fit"
        )
    return key


def decode_key(key: str) -> str | None:
    """The workflow id whose key is ``key``, or ``None`` if no id encodes to it."""
    try:
        raw = bytearray()
        position = 0
        while position < len(key):
            char = key[position]
            if char == "=":
                match = _ESCAPE_RE.match(key, position)
                if match is None:
                    return None
                raw.append(int(match.group(1), 16))
                position += 3
            elif char in _PLAIN_KEY_CHARS:
                raw.extend(char.encode("ascii"))
                position += 1
            else:
                return None
        workflow_id = raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return None
    # Only the canonical spelling counts: "=41" is not the key of "A".
    try:
        return workflow_id if encode_key(workflow_id) == key else None
    except InvalidArgumentError:
        return None


def _redact(url: str) -> str:
    """``url`` without the user, password or token it may carry."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"***@{host}").geturl()


def _tls_context(
    ca: str | os.PathLike[str] | None,
    cert: str | os.PathLike[str] | None,
    key: str | os.PathLike[str] | None,
) -> ssl.SSLContext | None:
    """The TLS context of the given PEM files (None when none is given); errors name the file."""
    if ca is None and cert is None and key is None:
        return None
    for name, path in (("tls_ca_file", ca), ("tls_cert_file", cert), ("tls_key_file", key)):
        if path is not None and not os.path.isfile(path):
            raise InvalidArgumentError(f"NatsStore {name}: no such file {os.fspath(path)!r}")
    if key is not None and cert is None:
        raise InvalidArgumentError("NatsStore tls_key_file needs tls_cert_file")
    try:
        context = ssl.create_default_context(cafile=ca)
    except (ssl.SSLError, OSError) as exc:
        raise InvalidArgumentError(f"NatsStore tls_ca_file {ca!r}: not PEM ({exc})") from None
    if cert is not None:
        try:
            context.load_cert_chain(cert, key)
        except (ssl.SSLError, OSError) as exc:
            raise InvalidArgumentError(
                f"NatsStore tls_cert_file {cert!r} / tls_key_file {key!r}: cannot load ({exc})"
            ) from None
    return context


def _servers(url: str) -> list[str]:
    servers = [part.strip() for part in url.split(",")]
    for server in servers:
        shown = _redact(server)
        try:
            parts = urlsplit(server)
            port = parts.port
        except ValueError as exc:
            raise InvalidArgumentError(f"NATS URL {shown!r} is malformed: {exc}") from None
        if parts.scheme not in _SCHEMES:
            raise InvalidArgumentError(
                f"NATS URL {shown!r} must start with one of "
                f"{', '.join(s + '://' for s in _SCHEMES)}"
            )
        if not parts.hostname:
            raise InvalidArgumentError(f"NATS URL {shown!r} names no host")
        if port == 0:
            raise InvalidArgumentError(f"NATS URL {shown!r} has port 0")
    return servers


# -- encoding -----------------------------------------------------------------------


def _created_key(moment: datetime) -> datetime:
    # Naive datetimes count as UTC so that mixed values still sort (as in the other stores).
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# Leaving defaults out (mostly None fields of events) halves the size of a history.


def _events_json(events: Sequence[HistoryEvent]) -> bytes:
    """The events as the inside of a JSON array."""
    return b",".join(event.model_dump_json(exclude_defaults=True).encode() for event in events)


def _state_json(state: WorkflowState, history_json: bytes) -> bytes:
    """``state`` as JSON, its history given already encoded by :func:`_events_json`."""
    # Splicing the encoded history in keeps a step from re-encoding every past event.
    head = state.model_dump_json(exclude_defaults=True, exclude={"history"}).encode()
    return b"".join((head[:-1], b',"history":[', history_json, b"]}"))


class _Stored(NamedTuple):
    """A value of the bucket as the store last wrote or read it (never mutated)."""

    revision: int
    state: WorkflowState
    history_json: bytes


def _ids_problem(workflow_id: str, stored: int, events: Sequence[HistoryEvent]) -> str | None:
    """Why ``events`` cannot follow ``stored`` stored events, or ``None`` if they can."""
    for offset, event in enumerate(events):
        if event.id != stored + 1 + offset:
            ids = ", ".join(str(e.id) for e in events)
            return (
                f"workflow {workflow_id!r} has {stored} stored events, so the appended "
                f"events must have ids {stored + 1}..{stored + len(events)}; got [{ids}] "
                f"(event {event.id} is a duplicate or leaves a gap)"
            )
    return None


def _already_applied(
    stored: WorkflowState, state: WorkflowState, events: Sequence[HistoryEvent]
) -> bool:
    """Whether ``stored`` is exactly what appending ``events`` for ``state`` produces."""
    count = len(events)
    return (
        stored.run_id == state.run_id
        and len(stored.history) >= count
        and (count == 0 or stored.history[-count:] == list(events))
        and (stored.status, stored.result, stored.error, stored.updated_at)
        == (state.status, state.result, state.error, state.updated_at)
    )


# -- the store ------------------------------------------------------------------------


class NatsStore:
    """An :class:`~app.workflow.AppendingStore` in a NATS JetStream key-value bucket.

    Args:
        url: Server URL(s), comma-separated; ``$NATS_URL``, else
            ``nats://localhost:4222``. May carry ``user:password@`` or
            ``token@``; these never appear in errors, logs or ``repr``.
        bucket: The KV bucket; created (file storage, history 1) on first
            use if missing.
        connection: An open ``nats.aio.client.Client`` to use instead of a
            URL. The store never closes it; a closed one fails every call.
        timeout: Seconds allowed for each network request (and each
            connection attempt).
        retries: How many times a request that failed transiently is tried
            again (exponential backoff from 0.05 s, capped at 2 s). A call
            therefore fails within about ``(retries + 1) * timeout`` seconds
            plus the backoff.
        replicas: Replicas of the bucket when the store creates it.
        user: User name (with ``password``) for the server.
        password: Password for ``user``.
        token: Authentication token.
        credentials: Path of a ``.creds`` file (JWT and NKey); else ``$NATS_CREDS``.
        tls_ca_file: CA certificates (PEM) that sign the server's certificate;
            else ``$NATS_CA``. Setting it (or a ``tls://`` URL) turns TLS on;
            the server's hostname is always checked.
        tls_cert_file: A client certificate (PEM), for servers that verify
            clients; else ``$NATS_CERT``. ``tls_key_file`` (``$NATS_KEY``) is its key.

    Bad values raise :class:`~app.workflow.InvalidArgumentError` here; the
    connection is opened on first use. Use ``async with`` or :meth:`close`.
    A store belongs to one event loop. A cancelled write may still be
    applied. See the module docstring for the layout and the size limit.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        bucket: str = DEFAULT_BUCKET,
        connection: Client | None = None,
        timeout: float = 5.0,
        retries: int = 3,
        replicas: int = 1,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        credentials: str | os.PathLike[str] | None = None,
        tls_ca_file: str | os.PathLike[str] | None = None,
        tls_cert_file: str | os.PathLike[str] | None = None,
        tls_key_file: str | os.PathLike[str] | None = None,
    ) -> None:
        if connection is None:  # the nats CLI's variables
            credentials = credentials or os.environ.get("NATS_CREDS") or None
            tls_ca_file = tls_ca_file or os.environ.get("NATS_CA") or None
            tls_cert_file = tls_cert_file or os.environ.get("NATS_CERT") or None
            tls_key_file = tls_key_file or os.environ.get("NATS_KEY") or None
        tls_files = {"tls_ca_file": tls_ca_file, "tls_cert_file": tls_cert_file}
        tls_files["tls_key_file"] = tls_key_file
        secrets = {"user": user, "password": password, "token": token, "credentials": credentials}
        secrets.update(tls_files)
        if connection is not None:
            if not isinstance(connection, Client):
                raise InvalidArgumentError(
                    "NatsStore connection must be a nats.aio.client.Client, "
                    f"got {type(connection).__name__}"
                )
            given = [name for name, value in (("url", url), *secrets.items()) if value is not None]
            if given:
                raise InvalidArgumentError(
                    f"NatsStore takes a connection or {', '.join(given)}, not both: "
                    "the connection already knows its server and credentials"
                )
            servers: list[str] = []
        else:
            if url is None:
                url = os.environ.get(ENV_URL) or DEFAULT_URL
            if not isinstance(url, str) or not url.strip():
                raise InvalidArgumentError(f"NatsStore url must be a non-empty string, got {url!r}")
            servers = _servers(url)
        if not isinstance(bucket, str) or not _BUCKET_RE.match(bucket):
            raise InvalidArgumentError(
                f"NatsStore bucket must be letters, digits, '-' or '_', got {bucket!r}"
            )
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not math.isfinite(timeout)
            or timeout <= 0
        ):
            raise InvalidArgumentError(
                f"NatsStore timeout must be a positive number of seconds, got {timeout!r}"
            )
        for name, number, least in (("retries", retries, 0), ("replicas", replicas, 1)):
            if isinstance(number, bool) or not isinstance(number, int) or number < least:
                raise InvalidArgumentError(
                    f"NatsStore {name} must be an int >= {least}, got {number!r}"
                )
        for name, secret in secrets.items():
            if secret is not None and not isinstance(secret, str | os.PathLike):
                # never echo the value: it may be a secret
                raise InvalidArgumentError(
                    f"NatsStore {name} must be a string, got {type(secret).__name__}"
                )
        if (password is None) != (user is None):
            raise InvalidArgumentError("NatsStore user and password go together")

        self._servers = servers
        self._shown = ", ".join(_redact(s) for s in servers) if servers else "a given connection"
        self._bucket_name = bucket
        self._timeout = float(timeout)
        self._retries = retries
        self._replicas = replicas
        self._auth: dict[str, Any] = {}
        if user is not None:
            self._auth.update(user=user, password=password)
        if token is not None:
            self._auth["token"] = token
        if credentials is not None:
            if not os.path.isfile(credentials):
                raise InvalidArgumentError(f"NatsStore credentials: no such file {credentials!r}")
            self._auth["user_credentials"] = os.fspath(credentials)
        context = _tls_context(*tls_files.values())
        if context is not None:
            self._auth["tls"] = context
        self._borrowed = connection
        self._nc: Client | None = connection
        self._kv: KeyValue | None = None
        self._kv_client: Client | None = None
        self._limit = 0
        self._lock: asyncio.Lock | None = None
        self._closed = False
        self._last_connect_error: BaseException | None = None
        # what append last wrote or read, per recent workflow
        self._cache: OrderedDict[str, _Stored] = OrderedDict()
        # keys whose last write failed without telling whether it was applied
        self._unsure: OrderedDict[str, None] = OrderedDict()

    def __repr__(self) -> str:
        where = f"url={self.url!r}" if self._servers else "connection=<given>"
        return f"NatsStore({where}, bucket={self._bucket_name!r})"

    @property
    def url(self) -> str:
        """The server URL(s), without credentials (empty for a given connection)."""
        return ", ".join(_redact(s) for s in self._servers)

    @property
    def bucket(self) -> str:
        """The key-value bucket."""
        return self._bucket_name

    @property
    def max_value_size(self) -> int:
        """The largest value the store writes, in bytes (0 until connected)."""
        return self._limit

    async def __aenter__(self) -> NatsStore:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect and open (or create) the bucket now instead of on first use."""
        await self._call("connect", lambda kv: asyncio.sleep(0))

    async def close(self) -> None:
        """Close the connection the store opened (never a given one). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._kv = None
        self._cache.clear()
        nc, self._nc = self._nc, None
        if nc is not None and nc is not self._borrowed:
            await self._close_client(nc)

    # -- the WorkflowStore API ------------------------------------------------

    async def save(self, state: WorkflowState) -> None:
        """Replace everything stored under ``state.workflow_id`` with ``state``."""
        key = encode_key(state.workflow_id)
        ids = [event.id for event in state.history]
        if len(set(ids)) != len(ids):
            raise StoreConflictError(
                f"workflow {state.workflow_id!r}: the saved history repeats event ids {ids}"
            )
        owned = state.model_copy(deep=True)
        history_json = _events_json(owned.history)
        value = await self._checked(owned, history_json)
        revision = await self._write(
            key, f"save of workflow {state.workflow_id!r}", lambda kv: kv.put(key, value)
        )
        self._remember(key, _Stored(revision, owned, history_json))

    async def load(self, workflow_id: str) -> WorkflowState | None:
        """Return the stored state with its history, or ``None``."""
        key = encode_key(workflow_id)
        entry = await self._call(f"load of workflow {workflow_id!r}", lambda kv: self._get(kv, key))
        return None if entry is None else self._parse(key, entry[1])

    async def list(self, filter: WorkflowFilter) -> builtins.list[WorkflowState]:
        """Return the matching states with their histories, newest ``created_at`` first.

        Reads the latest value of every key in one pass over the bucket.
        """
        values = await self._call("list", self._values)
        matching: builtins.list[WorkflowState] = []
        for key, value in values:
            if decode_key(key) is None:
                log.debug("NATS bucket %r: skipping foreign key %r", self._bucket_name, key)
                continue
            state = self._parse(key, value)
            if filter.status is None or state.status == filter.status:
                matching.append(state)
        # Two stable sorts: workflow_id ascending breaks created_at ties.
        matching.sort(key=lambda state: state.workflow_id)
        matching.sort(key=lambda state: _created_key(state.created_at), reverse=True)
        return matching[: filter.limit] if filter.limit else matching

    async def delete(self, workflow_id: str) -> None:
        """Remove the workflow; an unknown id is a no-op."""
        key = encode_key(workflow_id)
        self._cache.pop(key, None)
        await self._write(key, f"delete of workflow {workflow_id!r}", lambda kv: kv.delete(key))
        self._unsure.pop(key, None)

    async def append(self, state: WorkflowState, events: Sequence[HistoryEvent]) -> None:
        """Add ``events`` and the header fields of ``state`` with one compare-and-set.

        Raises :class:`~app.workflow.StoreConflictError`, writing nothing,
        when the workflow is not stored, its stored run is not
        ``state.run_id``, or the event ids do not continue the stored history.
        """
        workflow_id = state.workflow_id
        key = encode_key(workflow_id)
        new_events = [event.model_copy(deep=True) for event in events]
        header = {
            "status": WorkflowStatus(state.status),
            "result": copy.deepcopy(state.result),
            "error": state.error,
            "updated_at": state.updated_at,
        }
        for _ in range(_CAS_ROUNDS):
            cached = self._cache.get(key)
            if cached is None:
                entry = await self._call(
                    f"load of workflow {workflow_id!r}", lambda kv: self._get(kv, key)
                )
                if entry is None:
                    raise StoreConflictError(
                        f"cannot append to workflow {workflow_id!r} (run {state.run_id}): "
                        "it is not stored; save it first"
                    )
                parsed = self._parse(key, entry[1])
                cached = _Stored(entry[0], parsed, _events_json(parsed.history))
            stored = cached.state
            if key in self._unsure and _already_applied(stored, state, new_events):
                # our earlier write whose answer was lost did land: do not write it twice
                self._remember(key, cached)
                return
            if stored.run_id != state.run_id:
                raise StoreConflictError(
                    f"cannot append to workflow {workflow_id!r}: the stored run is "
                    f"{stored.run_id}, the writer's run is {state.run_id}"
                )
            problem = _ids_problem(workflow_id, len(stored.history), new_events)
            if problem is not None:
                raise StoreConflictError(problem)
            updated = stored.model_copy(
                update={**header, "history": [*stored.history, *new_events]}
            )
            history_json = cached.history_json
            if new_events:
                added = _events_json(new_events)
                history_json = b",".join((history_json, added)) if history_json else added
            value = await self._checked(updated, history_json)
            try:
                new_revision = await self._write(
                    key,
                    f"append to workflow {workflow_id!r}",
                    functools.partial(self._update, key=key, value=value, last=cached.revision),
                )
            except nats.js.errors.KeyWrongLastSequenceError:
                # another writer (or our own unanswered try) changed it: re-read and re-check
                self._cache.pop(key, None)
                continue
            self._remember(key, _Stored(new_revision, updated, history_json))
            return
        raise StoreConflictError(
            f"cannot append to workflow {workflow_id!r}: it changed under this writer "
            f"{_CAS_ROUNDS} times in a row"
        )

    # -- internals --------------------------------------------------------------

    def _remember(self, key: str, stored: _Stored) -> None:
        self._unsure.pop(key, None)
        self._cache[key] = stored
        self._cache.move_to_end(key)
        while len(self._cache) > _CACHE_SIZE:
            self._cache.popitem(last=False)

    def _parse(self, key: str, value: bytes) -> WorkflowState:
        try:
            return WorkflowState.model_validate_json(value)
        except pydantic.ValidationError as exc:
            raise NatsStoreError(
                f"NATS bucket {self._bucket_name!r} on {self._shown}: key {key!r} holds a "
                f"value that is not a workflow state ({exc.error_count()} errors, first: "
                f"{exc.errors()[0]['msg']})"
            ) from exc

    async def _checked(self, state: WorkflowState, history_json: bytes) -> bytes:
        """``state`` as JSON, or :class:`HistoryTooLargeError` if it cannot be written."""
        value = _state_json(state, history_json)
        if not self._limit:
            await self.connect()
        if len(value) > self._limit:
            raise HistoryTooLargeError(
                f"workflow {state.workflow_id!r} (run {state.run_id}, "
                f"{len(state.history)} events) is {len(value):,} bytes as JSON, but one "
                f"value in NATS bucket {self._bucket_name!r} on {self._shown} may be at "
                f"most {self._limit:,} bytes (the server's max_payload less room for "
                "headers, or the bucket's max_value_size); raise max_payload in the "
                "server configuration (up to 64 MB) or keep histories shorter"
            )
        return value

    @staticmethod
    async def _update(kv: KeyValue, key: str, value: bytes, last: int) -> int:
        return await kv.update(key, value, last=last)

    @staticmethod
    async def _get(kv: KeyValue, key: str) -> tuple[int, bytes] | None:
        try:
            entry = await kv.get(key)
        except nats.js.errors.KeyNotFoundError:  # never written, or deleted
            return None
        return entry.revision or 0, entry.value or b""

    async def _values(self, kv: KeyValue) -> builtins.list[tuple[str, bytes]]:
        """The latest value of every key (deleted ones left out).

        Read with a pull consumer that starts at the last message of each key:
        its pending count when created is exactly what there is to read. The KV
        watcher was used first; its end-of-values marker could come before
        values already on their way, and a list came back short or empty.
        """
        nc = self._nc
        if nc is None:  # _bucket() connected it; closed meanwhile
            raise _NotConnected()
        prefix = f"$KV.{self._bucket_name}."
        sub = await nc.jetstream(timeout=self._timeout).pull_subscribe(
            f"{prefix}>",
            stream=f"KV_{self._bucket_name}",
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
                ack_policy=AckPolicy.NONE,
                inactive_threshold=max(self._timeout * 2, 5.0),
                mem_storage=True,
            ),
        )
        try:
            left = (await sub.consumer_info()).num_pending
            latest: dict[str, bytes] = {}  # a key written while listing: its newest value
            while left:
                for msg in await sub.fetch(min(left, _LIST_BATCH), timeout=self._timeout):
                    left = msg.metadata.num_pending
                    key = msg.subject[len(prefix) :]
                    headers = msg.headers or {}
                    operation = headers.get("KV-Operation") or headers.get("Nats-Marker-Reason")
                    if operation in _REMOVED:
                        latest.pop(key, None)
                    else:
                        latest[key] = msg.data or b""
            return list(latest.items())
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _write(self, key: str, what: str, op: Callable[[KeyValue], Awaitable[_T]]) -> _T:
        """A write through :meth:`_call` that marks ``key`` unsure when its outcome is unknown."""
        try:
            return await self._call(what, op, unsure_key=key)
        except nats.js.errors.KeyWrongLastSequenceError:
            raise
        except BaseException:
            self._cache.pop(key, None)
            raise

    async def _call(
        self,
        what: str,
        op: Callable[[KeyValue], Awaitable[_T]],
        *,
        unsure_key: str | None = None,
    ) -> _T:
        """Run ``op`` on the bucket with a timeout, retrying transient failures."""
        attempts = self._retries + 1
        delay = _BACKOFF_FIRST
        for attempt in range(1, attempts + 1):
            sent = False
            try:
                kv = await self._bucket()
                sent = True
                async with asyncio.timeout(self._timeout):
                    return await op(kv)
            except NatsStoreError:
                raise
            except _TRANSIENT as exc:
                if sent and unsure_key is not None:
                    self._mark_unsure(unsure_key)
                self._forget_broken_connection()
                if attempt == attempts or self._closed:
                    raise NatsUnavailableError(
                        f"NATS at {self._shown} (bucket {self._bucket_name!r}): {what} "
                        f"failed after {attempts} attempt{'s' if attempts > 1 else ''} "
                        f"with {self._timeout:g}s timeouts: {self._describe(exc)}"
                    ) from exc
                wait = delay * (0.5 + random.random() / 2)
                log.warning(
                    "NATS at %s: %s failed (%s); retry %d of %d in %.2fs",
                    self._shown,
                    what,
                    type(exc).__name__,
                    attempt,
                    self._retries,
                    wait,
                )
                await asyncio.sleep(wait)
                delay = min(delay * 2, _BACKOFF_MAX)
            except asyncio.CancelledError:
                if sent and unsure_key is not None:
                    self._mark_unsure(unsure_key)
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _mark_unsure(self, key: str) -> None:
        self._cache.pop(key, None)
        self._unsure[key] = None
        self._unsure.move_to_end(key)
        while len(self._unsure) > _UNSURE_SIZE:
            self._unsure.popitem(last=False)

    def _describe(self, exc: BaseException) -> str:
        if isinstance(exc, nats.errors.NoServersError) and self._last_connect_error is not None:
            exc = self._last_connect_error
        if isinstance(
            exc,
            nats.errors.NoRespondersError
            | nats.js.errors.NoStreamResponseError
            | nats.js.errors.ServiceUnavailableError,
        ):
            detail = getattr(exc, "description", None)
            return "JetStream did not answer (is the server started with JetStream, -js?)" + (
                f": {detail}" if detail else ""
            )
        if isinstance(exc, TimeoutError):
            return f"no answer within {self._timeout:g}s"
        if isinstance(exc, _NotConnected):
            return "the given connection is not connected (reconnecting)"
        text = str(exc) or type(exc).__name__
        return f"{type(exc).__name__}: {text}"

    async def _bucket(self) -> KeyValue:
        """The bucket on a live connection: connects, reconnects or creates as needed."""
        if self._closed:
            raise StoreClosedError(
                f"NATS store (bucket {self._bucket_name!r} on {self._shown}) is closed"
            )
        nc = self._nc
        if self._kv is not None and nc is not None and nc.is_connected and self._kv_client is nc:
            return self._kv
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._closed:
                raise StoreClosedError(
                    f"NATS store (bucket {self._bucket_name!r} on {self._shown}) is closed"
                )
            nc = self._nc
            if nc is None or nc.is_closed:
                if self._borrowed is not None:
                    raise StoreClosedError(
                        f"the NATS connection given to the store (bucket "
                        f"{self._bucket_name!r}) is closed; the store cannot reopen it"
                    )
                nc = self._nc = await self._open_client()
            if not nc.is_connected:
                raise _NotConnected()
            if self._kv is None or self._kv_client is not nc:
                self._kv = await self._open_bucket(nc)
                self._kv_client = nc
            return self._kv

    async def _open_client(self) -> Client:
        nc = Client()
        self._last_connect_error = None

        async def on_error(exc: Exception) -> None:
            self._last_connect_error = exc
            log.debug("NATS at %s: %s", self._shown, type(exc).__name__)

        options: dict[str, Any] = {
            "servers": self._servers,
            "error_cb": on_error,
            "name": "streamflow-workflow-store",
            "connect_timeout": self._timeout,
            # The store reconnects itself on the next call, with its own
            # timeouts and backoff: nats-py's reconnect would buffer writes
            # and send them after the caller was told they failed.
            "allow_reconnect": False,
            "max_reconnect_attempts": 1,
            "reconnect_time_wait": 0,
            "ping_interval": 10,
            "max_outstanding_pings": 2,
            **self._auth,
        }
        try:
            async with asyncio.timeout(self._timeout):
                await nc.connect(**options)
        except BaseException as exc:
            await self._close_client(nc)
            if isinstance(exc, ssl.SSLError):  # a refused certificate: not transient
                verify = getattr(exc, "verify_message", None)
                reason = f"certificate verify failed: {verify}" if verify else exc.reason or exc
                raise NatsUnavailableError(
                    f"TLS handshake with NATS at {self._shown} failed: {reason} "
                    "(check tls_ca_file / $NATS_CA and the server's certificate name)"
                ) from exc
            if isinstance(exc, nats.errors.Error) and not isinstance(exc, _TRANSIENT):
                # e.g. an authorization violation: trying again would not help
                raise NatsUnavailableError(
                    f"cannot connect to NATS at {self._shown}: {self._describe(exc)}"
                ) from exc
            raise
        log.info("NATS store connected to %s (bucket %r)", self._shown, self._bucket_name)
        return nc

    async def _open_bucket(self, nc: Client) -> KeyValue:
        js = nc.jetstream(timeout=self._timeout)
        async with asyncio.timeout(self._timeout):
            try:
                kv = await js.key_value(self._bucket_name)
            except nats.js.errors.BucketNotFoundError:
                config = KeyValueConfig(
                    bucket=self._bucket_name,
                    description="workflow states (streamflow)",
                    history=1,
                    storage=StorageType.FILE,
                    replicas=self._replicas,
                    direct=True,
                )
                kv = await js.create_key_value(config)
            status = await kv.status()
        limit = nc.max_payload - _HEADER_ROOM
        bucket_limit = status.stream_info.config.max_msg_size
        if bucket_limit is not None and bucket_limit > 0:
            limit = min(limit, bucket_limit)
        self._limit = limit
        return kv

    def _forget_broken_connection(self) -> None:
        nc = self._nc
        if nc is not None and nc is not self._borrowed and nc.is_closed:
            self._nc = None
            self._kv = None

    async def _close_client(self, nc: Client) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                await nc.close()
        except Exception as exc:
            log.warning("NATS at %s: closing the connection failed: %r", self._shown, exc)


# -- registry ---------------------------------------------------------------------------

_STORE_KEYS: Final = frozenset(
    {"url", "bucket", "connection", "timeout", "retries", "replicas"}
    | {"user", "password", "token", "credentials"}
)


def make_store(options: dict[str, Any]) -> WorkflowStore:
    """A :class:`NatsStore` from ``Config.extra`` keys of the same names."""
    return NatsStore(**options)


register("nats", store_backed_factory("nats", make_store, store_keys=_STORE_KEYS))
