"""A workflow store kept in a compacted Kafka topic (aiokafka).

Each workflow is one record: the key is the workflow id, the value the whole
:class:`~app.workflow.WorkflowState` (header and history) as JSON. A delete
writes a tombstone (a record with no value), so compaction drops the key.
The topic (default ``beluga-workflows``) is created with
``cleanup.policy=compact`` when it is missing; an existing topic without
``compact`` in its policy is refused, since time or size retention would
silently drop running workflows.

Reads are served from an in-memory cache. :meth:`KafkaStore.start` (run on
first use) reads every partition from its beginning up to the end offsets
taken at start, so a new process sees what an earlier one wrote. Writes are
produced with ``acks=all`` and awaited; only an acknowledged write updates
the cache, so a caller reads its own writes and a failed write leaves the
cache as it was. After a write fails on a lost connection, the next one
first checks the topic again (and creates it, compacted, if it is gone), so
that a broker that lost it does not auto-create it without compaction.

Concurrent writers: within one store, writes to the same workflow are
serialized and ``append`` checks run and event ids against the cache. The
cache does not follow the topic after start, so two live processes writing
the same workflow are not detected: the last record wins. The engine runs
each workflow in one executor at a time (single writer per workflow), which
is the model this store is built for.

Size: one record carries a workflow's full history, so ``append`` costs
O(history) bytes, and a workflow whose encoded state exceeds
``max_record_bytes`` (default 8 MiB; the topic is created with a matching
``max.message.bytes``) cannot be written: the write fails with
:class:`KafkaStoreError` naming the size and the limit.

Outcomes: a write that fails after it reached the broker (a lost
acknowledgement, a timeout) may still be in the topic. The cache keeps the
previous state; a later write of the same workflow supersedes it, and a new
process may see it if none does. Every record is a complete state, so such a
record is a valid earlier or later step, never a torn one.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import math
import random
import re
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, TypeVar

# aiokafka ships no type information (no py.typed): its names are untyped (see the
# mypy override in pyproject.toml).
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import KafkaError, KafkaTimeoutError
from pydantic import ValidationError

from app.streaming._security import BrokerSecurityError, KafkaSecurity, start_client
from app.workflow._errors import InvalidArgumentError, WorkflowError
from app.workflow._registry import register, store_backed_factory
from app.workflow._store import StoreClosedError, StoreConflictError
from app.workflow._types import Duration, HistoryEvent, WorkflowFilter, WorkflowState, to_seconds

__all__ = [
    "DEFAULT_TOPIC",
    "KafkaStore",
    "KafkaStoreClosedError",
    "KafkaStoreConfig",
    "KafkaStoreError",
]

DEFAULT_TOPIC: Final = "beluga-workflows"
"""The topic used when none is given (the seed's default)."""

_TOPIC_NAME: Final = re.compile(r"[A-Za-z0-9._-]{1,249}")
_SECURITY_PROTOCOLS: Final = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
_SASL_MECHANISMS: Final = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_RECORD_OVERHEAD: Final = 1024  # batch and record headers on top of key + value
_TOPIC_EXISTS: Final = 36  # Kafka error code TOPIC_ALREADY_EXISTS

log = logging.getLogger("providers.kafka")

_T = TypeVar("_T")


class KafkaStoreError(WorkflowError):
    """The Kafka store could not do what was asked; the message names the brokers and topic."""


class KafkaStoreClosedError(KafkaStoreError, StoreClosedError):
    """The store was closed: it takes no more calls."""


class _StalledError(Exception):
    """Reading the topic made no progress within the request timeout (transient)."""


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgumentError(f"KafkaStoreConfig.{what} must be an int >= 1, got {value!r}")
    return value


def _optional_str(value: object, what: str) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise InvalidArgumentError(f"KafkaStoreConfig.{what} must be a non-empty string or None")
    return value


def _servers(value: object) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise InvalidArgumentError(
            "KafkaStoreConfig.bootstrap_servers must be 'host:port' or a list of them, "
            f"got {value!r}"
        )
    servers: builtins.list[str] = []
    for item in items:
        parts = [part.strip() for part in item.split(",")] if isinstance(item, str) else [item]
        for part in parts:
            host, sep, port = part.rpartition(":") if isinstance(part, str) else ("", "", "")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise InvalidArgumentError(
                    f"KafkaStoreConfig.bootstrap_servers entries must be 'host:port', got {part!r}"
                )
            servers.append(part)
    return tuple(servers)


@dataclass(frozen=True, repr=False)
class KafkaStoreConfig:
    """Where and how :class:`KafkaStore` keeps workflow state; validated at construction.

    Args:
        bootstrap_servers: ``"host:port"``, a comma-separated list, or a list of them.
        topic: The compacted topic holding one record per workflow.
        partitions: Partitions of the topic when the store creates it. Keep it
            fixed afterwards: a key must stay on its partition.
        replication_factor: Replicas of the topic when the store creates it
            (use 3 on a production cluster).
        request_timeout: Seconds for each request to the brokers (connect,
            produce, fetch, admin); a call that waits longer fails.
        retry_attempts: Tries of one store operation on a transient error
            (connection lost, timeout, leader moving); 1 disables retries.
        retry_backoff: Seconds before the first retry; doubled per retry
            (with jitter) up to ``retry_max_backoff``.
        retry_max_backoff: The cap of the retry backoff, in seconds.
        fetch_max_wait: How long a fetch may wait for data on the broker.
            Apache Kafka answers as soon as data arrives; a broker that does
            not (Tansu) needs a small value, e.g. 0.01.
        max_record_bytes: The largest encoded workflow state (key + JSON).
        client_id: The client id the brokers see in their logs and quotas.
        security_protocol: ``PLAINTEXT``, ``SSL``, ``SASL_PLAINTEXT`` or ``SASL_SSL``.
        sasl_mechanism: ``PLAIN``, ``SCRAM-SHA-256`` or ``SCRAM-SHA-512``.
        sasl_plain_username: The SASL user.
        sasl_plain_password: The SASL password; never shown in a repr or a log.
        ssl_ca_location: CA certificates (PEM) that sign the brokers'
            certificates (the system CAs when ``None``).
        ssl_certificate_location: A client certificate (PEM), for brokers
            that require one; ``ssl_key_location`` its private key and
            ``ssl_key_password`` the key's password (never shown).
        ssl_endpoint_identification_algorithm: ``"https"`` (the default)
            checks that a broker's certificate names its host; ``"none"`` does not.
        ssl_context: A ready TLS context for ``SSL``/``SASL_SSL``; overrides
            the ``ssl_*`` files. These settings mean what the streaming
            runtime's do (docs/security.md).
    """

    bootstrap_servers: str | Sequence[str]
    topic: str = DEFAULT_TOPIC
    partitions: int = 1
    replication_factor: int = 1
    request_timeout: Duration = 10.0
    retry_attempts: int = 3
    retry_backoff: Duration = 0.1
    retry_max_backoff: Duration = 2.0
    fetch_max_wait: Duration = 0.1
    max_record_bytes: int = 8 * 1024 * 1024
    client_id: str = "beluga-workflow-store"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: str | None = None
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: str | None = field(default=None, repr=False)
    ssl_endpoint_identification_algorithm: str = "https"
    ssl_context: ssl.SSLContext | None = None
    security: KafkaSecurity = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "bootstrap_servers", _servers(self.bootstrap_servers))
        topic = self.topic
        if not isinstance(topic, str) or not _TOPIC_NAME.fullmatch(topic) or topic in (".", ".."):
            raise InvalidArgumentError(
                "KafkaStoreConfig.topic must be 1-249 of [A-Za-z0-9._-] (not '.' or '..'), "
                f"got {topic!r}"
            )
        for name in ("partitions", "replication_factor", "retry_attempts", "max_record_bytes"):
            _positive_int(getattr(self, name), name)
        timeout = to_seconds(self.request_timeout, "KafkaStoreConfig.request_timeout")
        backoff = to_seconds(self.retry_backoff, "KafkaStoreConfig.retry_backoff", allow_zero=True)
        cap = to_seconds(
            self.retry_max_backoff, "KafkaStoreConfig.retry_max_backoff", allow_zero=True
        )
        if cap < backoff:
            raise InvalidArgumentError(
                f"KafkaStoreConfig.retry_max_backoff ({cap:g}s) must not be below "
                f"retry_backoff ({backoff:g}s)"
            )
        fetch = to_seconds(self.fetch_max_wait, "KafkaStoreConfig.fetch_max_wait", allow_zero=True)
        if fetch >= timeout:
            raise InvalidArgumentError(
                f"KafkaStoreConfig.fetch_max_wait ({fetch:g}s) must be below "
                f"request_timeout ({timeout:g}s)"
            )
        set_(self, "request_timeout", timeout)
        set_(self, "retry_backoff", backoff)
        set_(self, "retry_max_backoff", cap)
        set_(self, "fetch_max_wait", fetch)
        if not isinstance(self.client_id, str) or not self.client_id:
            raise InvalidArgumentError("KafkaStoreConfig.client_id must be a non-empty string")
        if self.security_protocol not in _SECURITY_PROTOCOLS:
            raise InvalidArgumentError(
                f"KafkaStoreConfig.security_protocol must be one of "
                f"{', '.join(_SECURITY_PROTOCOLS)}, got {self.security_protocol!r}"
            )
        _optional_str(self.sasl_plain_username, "sasl_plain_username")
        _optional_str(self.sasl_plain_password, "sasl_plain_password")
        if self.security_protocol.startswith("SASL"):
            if self.sasl_mechanism not in _SASL_MECHANISMS:
                raise InvalidArgumentError(
                    f"KafkaStoreConfig.sasl_mechanism must be one of "
                    f"{', '.join(_SASL_MECHANISMS)} with {self.security_protocol}, "
                    f"got {self.sasl_mechanism!r}"
                )
            if self.sasl_plain_username is None or self.sasl_plain_password is None:
                raise InvalidArgumentError(
                    f"KafkaStoreConfig with {self.security_protocol} needs "
                    "sasl_plain_username and sasl_plain_password"
                )
        elif self.sasl_mechanism is not None:
            raise InvalidArgumentError(
                "KafkaStoreConfig.sasl_mechanism needs security_protocol SASL_PLAINTEXT "
                f"or SASL_SSL, not {self.security_protocol}"
            )
        if self.ssl_context is not None and not isinstance(self.ssl_context, ssl.SSLContext):
            raise InvalidArgumentError("KafkaStoreConfig.ssl_context must be an ssl.SSLContext")
        try:
            security = KafkaSecurity(
                security_protocol=self.security_protocol,
                sasl_mechanism=self.sasl_mechanism,
                sasl_username=self.sasl_plain_username,
                sasl_password=self.sasl_plain_password,
                ssl_ca_location=self.ssl_ca_location,
                ssl_certificate_location=self.ssl_certificate_location,
                ssl_key_location=self.ssl_key_location,
                ssl_key_password=self.ssl_key_password,
                ssl_endpoint_identification_algorithm=self.ssl_endpoint_identification_algorithm,
            )
        except ValidationError as exc:
            problems = "; ".join(
                (f"{'.'.join(str(p) for p in err['loc'])}: " if err["loc"] else "")
                + err["msg"].removeprefix("Value error, ")
                for err in exc.errors()
            )
            raise InvalidArgumentError(f"KafkaStoreConfig: {problems}") from None
        set_(self, "security", security)

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "security":
                continue
            if f.name in ("sasl_plain_password", "ssl_key_password") and value is not None:
                value = "***"
            elif f.name == "ssl_context" and value is not None:
                value = "<SSLContext>"
            shown.append(f"{f.name}={value!r}")
        return f"KafkaStoreConfig({', '.join(shown)})"

    @property
    def servers(self) -> str:
        """The bootstrap servers as one comma-separated string (for messages)."""
        return ",".join(self.bootstrap_servers)

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments shared by the aiokafka clients."""
        options: dict[str, Any] = {
            "bootstrap_servers": list(self.bootstrap_servers),
            "client_id": self.client_id,
            "request_timeout_ms": _ms(_seconds(self.request_timeout)),
            "retry_backoff_ms": max(1, _ms(_seconds(self.retry_backoff))),
        }
        try:
            options.update(self.security.aiokafka_options())
        except ValueError as exc:  # a file that exists but holds no usable PEM
            raise InvalidArgumentError(f"KafkaStoreConfig: {exc}") from None
        if self.ssl_context is not None and self.security.tls:
            options["ssl_context"] = self.ssl_context
        return options


_CONFIG_KEYS: Final = frozenset(f.name for f in fields(KafkaStoreConfig) if f.init)


def _seconds(value: Duration) -> float:
    # The config's durations are floats once validated; this keeps mypy informed.
    return to_seconds(value, "duration", allow_zero=True)


def _ms(seconds: float) -> int:
    return math.ceil(seconds * 1000)


def _created_key(moment: datetime) -> datetime:
    # Naive datetimes count as UTC so that mixed values still sort (as in SQLiteStore).
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, (KafkaTimeoutError, _StalledError, TimeoutError, OSError)):
        return True
    return isinstance(exc, KafkaError) and bool(exc.retriable)


def _describe(exc: BaseException) -> str:
    name, text = type(exc).__name__, str(exc)
    return text if text.startswith(name) else f"{name}: {text}" if text else name


@dataclass(frozen=True)
class _Entry:
    """One cached workflow, kept encoded: its header and each history event as JSON.

    Keeping the JSON makes a write cost a join of bytes (not a re-encoding of
    the whole history), and makes every read a fresh decode: callers get
    copies, exactly what a new process would read from the topic.
    """

    head: WorkflowState  # the header fields; its history is empty and unused
    head_json: bytes
    events: tuple[bytes, ...]

    @classmethod
    def of(cls, head: WorkflowState, events: tuple[bytes, ...]) -> _Entry:
        head_json = head.model_dump_json(exclude={"history"}).encode()
        # Decoding what is stored detaches the cache from the caller's objects.
        return cls(WorkflowState.model_validate_json(head_json), head_json, events)

    @classmethod
    def from_state(cls, state: WorkflowState) -> _Entry:
        return cls.of(
            state,
            tuple(event.model_dump_json(exclude_defaults=True).encode() for event in state.history),
        )

    def record(self) -> bytes:
        """The topic record: the header object with the history spliced in."""
        return b"".join((self.head_json[:-1], b',"history":[', b",".join(self.events), b"]}"))

    def state(self) -> WorkflowState:
        return WorkflowState.model_validate_json(self.record())


@dataclass
class _KeyLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class KafkaStore:
    """An :class:`~app.workflow.AppendingStore` in a compacted Kafka topic.

    Pass a :class:`KafkaStoreConfig` or its fields as keyword arguments::

        async with KafkaStore(bootstrap_servers="kafka:9092") as store: ...

    The first call (or :meth:`start`) creates the topic if it is missing and
    reads it into memory; :meth:`close` flushes and disconnects. Every call
    fails with :class:`KafkaStoreError` naming the brokers after
    ``retry_attempts`` tries of at most about twice ``request_timeout`` each,
    and :class:`KafkaStoreClosedError` after ``close``.
    """

    def __init__(self, config: KafkaStoreConfig | None = None, /, **options: Any) -> None:
        if config is not None and options:
            raise InvalidArgumentError(
                "pass either a KafkaStoreConfig or keyword options to KafkaStore, not both "
                f"(got config and {', '.join(sorted(options))})"
            )
        if config is None:
            unknown = set(options) - _CONFIG_KEYS
            if unknown:
                raise InvalidArgumentError(
                    f"unknown KafkaStore options: {', '.join(sorted(unknown))} "
                    f"(accepted: {', '.join(sorted(_CONFIG_KEYS))})"
                )
            if "bootstrap_servers" not in options:
                raise InvalidArgumentError("KafkaStore needs bootstrap_servers ('host:port')")
            config = KafkaStoreConfig(**options)
        elif not isinstance(config, KafkaStoreConfig):
            raise InvalidArgumentError(
                f"config must be a KafkaStoreConfig, got {type(config).__name__}"
            )
        self._config = config
        self._timeout = _seconds(config.request_timeout)
        self._call_timeout = 2 * self._timeout
        self._producer: Any = None
        self._entries: dict[str, _Entry] = {}
        self._locks: dict[str, _KeyLock] = {}
        self._start_lock = asyncio.Lock()
        self._recheck_topic = False
        self._closed = False

    def __repr__(self) -> str:
        state = "closed" if self._closed else "started" if self._producer else "not started"
        return (
            f"KafkaStore(bootstrap_servers={self._config.servers!r}, "
            f"topic={self._config.topic!r}, {state})"
        )

    @property
    def config(self) -> KafkaStoreConfig:
        """The settings of this store."""
        return self._config

    async def __aenter__(self) -> KafkaStore:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        """Create the topic if missing and read it into the cache; idempotent.

        Called by the first operation when not called before. A failed start
        is tried again by the next call.
        """
        self._check_open()
        if self._producer is not None:
            return
        async with self._start_lock:
            self._check_open()
            if self._producer is None:
                # Not bounded as a whole: each request inside is, and reading
                # a long topic may legitimately take longer than one request.
                await self._retrying("connecting and reading the topic", self._open, timed=False)

    async def close(self) -> None:
        """Flush pending writes and disconnect; idempotent."""
        if self._closed:
            return
        self._closed = True
        async with self._start_lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            await self._stop(producer.stop(), "producer")

    async def _open(self) -> None:
        config = self._config
        await self._check_topic()
        producer = AIOKafkaProducer(
            **config.client_options(),
            acks="all",
            max_request_size=config.max_record_bytes + _RECORD_OVERHEAD,
            linger_ms=0,
        )
        try:
            await self._start_client(producer)
            partitions = await self._timed(producer.partitions_for(config.topic))
            states = await self._read_topic(sorted(partitions))
        except BaseException:
            await self._stop(producer.stop(), "producer")
            raise
        self._entries = states
        self._producer = producer

    async def _check_topic(self) -> None:
        admin = AIOKafkaAdminClient(**self._config.client_options())
        try:
            await self._start_client(admin)
            await self._ensure_topic(admin)
        finally:
            await self._stop(admin.close(), "admin client")

    async def _ensure_topic(self, admin: Any) -> None:
        # list_topics first: a metadata request naming a missing topic may
        # auto-create it on brokers that allow that, without compaction.
        config = self._config
        if config.topic not in await self._timed(admin.list_topics()):
            topic = NewTopic(
                config.topic,
                config.partitions,
                config.replication_factor,
                topic_configs={
                    "cleanup.policy": "compact",
                    "max.message.bytes": str(config.max_record_bytes + _RECORD_OVERHEAD),
                },
            )
            response = await self._timed(admin.create_topics([topic]))
            for entry in response.topic_errors:
                code, message = entry[1], entry[2] if len(entry) > 2 else ""
                if code not in (0, _TOPIC_EXISTS):
                    raise KafkaStoreError(
                        f"Kafka at {config.servers} refused to create topic {config.topic!r} "
                        f"(error {code}: {message}); create it with cleanup.policy=compact "
                        "or grant the client CreateTopics"
                    )
                if code == 0:
                    log.info("created compacted topic %r on %s", config.topic, config.servers)
                    return
        resource = ConfigResource(ConfigResourceType.TOPIC, config.topic)
        try:
            described = await self._timed(admin.describe_configs([resource]))
        except KafkaError as exc:
            if _transient(exc):
                raise
            log.warning(
                "cannot read the configs of topic %r on %s (%s); assuming it is compacted",
                config.topic,
                config.servers,
                _describe(exc),
            )
            return
        entries = [
            entry
            for response in described
            for resource in response.resources
            if resource[0] == 0
            for entry in resource[4]
        ]
        policy = next((value for name, value, *_ in entries if name == "cleanup.policy"), None)
        if policy is not None and "compact" not in policy.split(","):
            raise KafkaStoreError(
                f"topic {config.topic!r} on {config.servers} has cleanup.policy={policy}: "
                "retention would delete running workflows; set cleanup.policy=compact "
                "on it or use another topic"
            )

    async def _read_topic(self, partitions: Sequence[int]) -> dict[str, _Entry]:
        config = self._config
        fetch_bytes = config.max_record_bytes + _RECORD_OVERHEAD
        consumer = AIOKafkaConsumer(
            **config.client_options(),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=_ms(_seconds(config.fetch_max_wait)),
            max_partition_fetch_bytes=fetch_bytes,
            fetch_max_bytes=max(fetch_bytes, 52_428_800),
        )
        states: dict[str, _Entry] = {}
        await self._start_client(consumer)
        try:
            tps = [TopicPartition(config.topic, p) for p in partitions]
            consumer.assign(tps)
            await self._timed(consumer.seek_to_beginning(*tps))
            ends = await self._timed(consumer.end_offsets(tps))
            positions = {tp: await self._timed(consumer.position(tp)) for tp in tps}
            progress = time.monotonic()
            poll_ms = _ms(_seconds(config.fetch_max_wait)) + 100
            while pending := [tp for tp in tps if positions[tp] < ends[tp]]:
                batches = await consumer.getmany(*pending, timeout_ms=poll_ms)
                for tp, records in batches.items():
                    for record in records:
                        self._apply(states, tp, record)
                moved = {tp: await self._timed(consumer.position(tp)) for tp in pending}
                if any(moved[tp] != positions[tp] for tp in pending):
                    progress = time.monotonic()
                elif time.monotonic() - progress > self._timeout:
                    raise _StalledError(
                        f"reading topic {config.topic!r} stopped at offsets "
                        f"{ {tp.partition: moved[tp] for tp in pending} } short of its end "
                        f"offsets { {tp.partition: ends[tp] for tp in pending} } for "
                        f"{self._timeout:g}s"
                    )
                positions.update(moved)
        finally:
            await self._stop(consumer.stop(), "consumer")
        return states

    def _apply(self, states: dict[str, _Entry], tp: Any, record: Any) -> None:
        where = f"topic {tp.topic!r} partition {tp.partition} offset {record.offset}"
        if record.key is None:
            log.warning("skipping a record without a key at %s", where)
            return
        try:
            workflow_id = record.key.decode()
        except UnicodeDecodeError:
            log.error("skipping a record whose key is not UTF-8 at %s", where)
            return
        if record.value is None:
            states.pop(workflow_id, None)
            return
        try:
            state = WorkflowState.model_validate_json(record.value)
        except ValueError as exc:
            # Dropping the key (not keeping an older state) keeps a stale run from coming back.
            states.pop(workflow_id, None)
            log.error(
                "workflow %r at %s is not a valid state, ignored: %s", workflow_id, where, exc
            )
            return
        if state.workflow_id != workflow_id:
            states.pop(workflow_id, None)
            log.error(
                "record key %r at %s holds workflow %r, ignored",
                workflow_id,
                where,
                state.workflow_id,
            )
            return
        states[workflow_id] = _Entry.from_state(state)

    # -- the WorkflowStore API --------------------------------------------------

    async def save(self, state: WorkflowState) -> None:
        """Replace everything stored under ``state.workflow_id`` with ``state``."""
        ids = [event.id for event in state.history]
        if len(set(ids)) != len(ids):
            raise StoreConflictError(
                f"workflow {state.workflow_id!r}: the saved history repeats event ids {ids}"
            )
        await self.start()
        entry = _Entry.from_state(state)
        async with self._locked(state.workflow_id):
            await self._write(state.workflow_id, entry)

    async def append(self, state: WorkflowState, events: Sequence[HistoryEvent]) -> None:
        """Add ``events`` to the stored run and take the header fields of ``state``.

        Writes the whole state again (one record per workflow). Raises
        :class:`StoreConflictError`, writing nothing, when the workflow is
        not stored, its stored run is not ``state.run_id``, or the event ids
        do not continue the stored history.
        """
        await self.start()
        workflow_id = state.workflow_id
        async with self._locked(workflow_id):
            stored = self._entries.get(workflow_id)
            if stored is None:
                raise StoreConflictError(
                    f"cannot append to workflow {workflow_id!r} (run {state.run_id}): "
                    "it is not stored; save it first"
                )
            if stored.head.run_id != state.run_id:
                raise StoreConflictError(
                    f"cannot append to workflow {workflow_id!r}: the stored run is "
                    f"{stored.head.run_id}, the writer's run is {state.run_id}"
                )
            count = len(stored.events)
            if [event.id for event in events] != list(range(count + 1, count + 1 + len(events))):
                ids = ", ".join(str(event.id) for event in events)
                raise StoreConflictError(
                    f"workflow {workflow_id!r} has {count} stored events, so the appended "
                    f"events must have ids {count + 1}..{count + len(events)}; got [{ids}] "
                    "(a duplicate or a gap)"
                )
            head = stored.head.model_copy(
                update={
                    "status": state.status,
                    "result": state.result,
                    "error": state.error,
                    "updated_at": state.updated_at,
                }
            )
            added = tuple(event.model_dump_json(exclude_defaults=True).encode() for event in events)
            await self._write(workflow_id, _Entry.of(head, stored.events + added))

    async def load(self, workflow_id: str) -> WorkflowState | None:
        """Return a copy of the stored state with its history, or ``None``."""
        await self.start()
        entry = self._entries.get(workflow_id)
        return None if entry is None else entry.state()

    async def list(self, filter: WorkflowFilter) -> builtins.list[WorkflowState]:
        """Return copies of the matching states, newest ``created_at`` first."""
        await self.start()
        matching = [
            entry
            for entry in self._entries.values()
            if filter.status is None or entry.head.status == filter.status
        ]
        # Two stable sorts: workflow_id ascending breaks created_at ties.
        matching.sort(key=lambda entry: entry.head.workflow_id)
        matching.sort(key=lambda entry: _created_key(entry.head.created_at), reverse=True)
        if filter.limit:
            matching = matching[: filter.limit]
        return [entry.state() for entry in matching]

    async def delete(self, workflow_id: str) -> None:
        """Write a tombstone for the workflow; an unknown id is a no-op for reads.

        The tombstone is written even for an id this process has not seen,
        since another process may have stored it.
        """
        await self.start()
        async with self._locked(workflow_id):
            await self._write(workflow_id, None)

    # -- internals ----------------------------------------------------------------

    async def _write(self, workflow_id: str, entry: _Entry | None) -> None:
        """Produce one record (a tombstone for ``None``); once acknowledged, cache it."""
        config = self._config
        key = workflow_id.encode()
        payload = None if entry is None else entry.record()
        size = len(key) + (0 if payload is None else len(payload))
        if size > config.max_record_bytes:
            raise KafkaStoreError(
                f"workflow {workflow_id!r} is {size} bytes encoded, over the Kafka store's "
                f"max_record_bytes ({config.max_record_bytes}); raise max_record_bytes (and "
                f"max.message.bytes of topic {config.topic!r}) or keep histories shorter"
            )

        async def produce() -> None:
            self._check_open()
            if self._recheck_topic:
                await self._check_topic()
                self._recheck_topic = False
            try:
                await self._timed(self._producer.send_and_wait(config.topic, payload, key=key))
            except Exception as exc:
                # After losing the brokers, make sure the topic is still there
                # (and compacted) before writing again: a broker that lost it
                # may otherwise auto-create it without compaction.
                self._recheck_topic = _transient(exc)
                raise

        await self._retrying(f"writing workflow {workflow_id!r}", produce, timed=False)
        if entry is None:
            self._entries.pop(workflow_id, None)
        else:
            self._entries[workflow_id] = entry

    async def _retrying(self, what: str, call: Callable[[], Awaitable[_T]], *, timed: bool) -> _T:
        config = self._config
        delay = _seconds(config.retry_backoff)
        for attempt in range(1, config.retry_attempts + 1):
            try:
                return await (self._timed(call()) if timed else call())
            except (StoreConflictError, KafkaStoreError):
                raise
            except Exception as exc:
                if not _transient(exc) or attempt == config.retry_attempts:
                    raise KafkaStoreError(
                        f"Kafka store at {config.servers} (topic {config.topic!r}): {what} "
                        f"failed after {attempt} attempt(s): {_describe(exc)}"
                    ) from exc
                log.warning(
                    "Kafka store at %s: %s failed (%s); retry %d of %d in %.2fs",
                    config.servers,
                    what,
                    _describe(exc),
                    attempt,
                    config.retry_attempts - 1,
                    delay,
                )
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, _seconds(config.retry_max_backoff))
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _timed(self, awaitable: Awaitable[_T]) -> _T:
        # aiokafka bounds each request by request_timeout; this bounds the
        # whole call (connects, metadata refreshes, internal retries) too.
        try:
            return await asyncio.wait_for(awaitable, self._call_timeout)
        except TimeoutError as exc:
            raise TimeoutError(f"no answer within {self._call_timeout:g}s") from exc

    async def _start_client(self, client: Any) -> None:
        # A refused certificate or login is not transient: fail at once, saying which.
        config = self._config
        try:
            await start_client(client.start, config.security, config.servers, self._call_timeout)
        except BrokerSecurityError as exc:
            raise KafkaStoreError(
                f"Kafka store at {config.servers} (topic {config.topic!r}): {exc}"
            ) from exc
        except TimeoutError as exc:
            raise TimeoutError(f"no answer within {self._call_timeout:g}s") from exc

    async def _stop(self, stopping: Awaitable[Any], what: str) -> None:
        try:
            await asyncio.wait_for(stopping, self._call_timeout)
        except Exception as exc:
            log.warning(
                "Kafka store at %s: stopping the %s failed: %s",
                self._config.servers,
                what,
                _describe(exc),
            )

    def _check_open(self) -> None:
        if self._closed:
            raise KafkaStoreClosedError(
                f"Kafka store at {self._config.servers} (topic {self._config.topic!r}) is closed"
            )

    @contextlib.asynccontextmanager
    async def _locked(self, workflow_id: str) -> AsyncIterator[None]:
        entry = self._locks.get(workflow_id)
        if entry is None:
            entry = self._locks[workflow_id] = _KeyLock()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._locks[workflow_id]


def _make_store(extra: Mapping[str, Any]) -> KafkaStore:
    return KafkaStore(**extra)


register("kafka", store_backed_factory("kafka", _make_store, store_keys=_CONFIG_KEYS))
