"""Settings of the streaming runtime: each declared once with its type, default and env var.

``StreamingSettings.from_env()`` reads ``STREAMFLOW_<NAME>`` variables (and
``KAFKA_BOOTSTRAP_SERVERS`` for the broker); keyword arguments override
them. Invalid values fail at construction, naming the setting.
``docs/architecture.md`` lists them all (``python -m app settings`` prints them).
"""

from __future__ import annotations

import os
from typing import Any, Literal, get_args, get_origin

from pydantic import ConfigDict, Field, SecretStr, ValidationError, field_validator

from app.workflow._errors import InvalidArgumentError
from topics import DEFAULT_APP_ID, DEFAULT_PARTITIONS, DEFAULT_TASK_QUEUE, Topology

from ._security import KafkaSecurity

ENV_PREFIX = "STREAMFLOW_"
ENV_BOOTSTRAP = "KAFKA_BOOTSTRAP_SERVERS"


class StreamingSettings(KafkaSecurity):
    """Broker address and security, topology, and every broker-facing timing.

    The TLS and SASL settings (``security_protocol``, ``sasl_*``, ``ssl_*``) come
    from :class:`~app.streaming._security.KafkaSecurity`; docs/security.md.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    bootstrap_servers: str = Field(
        "localhost:9092", description="Kafka bootstrap servers, host:port[,host:port]"
    )
    app_id: str = Field(DEFAULT_APP_ID, description="Prefix of every topic and consumer group")
    generation: int = Field(1, ge=1, description="Topic generation to use (grows partitions)")
    partitions: int = Field(DEFAULT_PARTITIONS, ge=1, description="Partitions per topic")
    replication: int = Field(1, ge=1, description="Replication factor of created topics")
    task_queue: str = Field(DEFAULT_TASK_QUEUE, description="Activity task queue of this worker")
    session_timeout: float = Field(
        10.0,
        gt=0,
        description="Consumer group session timeout (s): how soon a dead worker's partitions move",
    )
    heartbeat_interval: float = Field(1.0, gt=0, description="Consumer heartbeat interval (s)")
    rebalance_timeout: float = Field(20.0, gt=0, description="Rebalance timeout (s)")
    fetch_wait_ms: int = Field(
        100,
        ge=0,
        description="Max fetch long-poll (ms); the test broker needs ~10 "
        "(it answers a waiting fetch only at checks, the first after half the wait)",
    )
    commit_interval: float = Field(
        0.5,
        gt=0,
        description="Offset commit interval (s); a commit always follows a flush of "
        "the state and history it covers",
    )
    timer_tick: float = Field(0.05, gt=0, description="How often due timers are fired (s)")
    timer_refire: float = Field(
        5.0, gt=0, description="A fired timer not yet applied is fired again after this (s)"
    )
    previous_partitions: int | None = Field(
        None,
        ge=1,
        description="Partition count of the commands topic before partitions were "
        "added in place (Apache Kafka): commands of workflows started before are routed to "
        "the partition that owns them",
    )
    follow_generation: bool = Field(
        True, description="Client: use the newest generation announced on the control topic"
    )
    cache_size: int = Field(10_000, ge=1, description="Running workflows kept in memory")
    activity_concurrency: int = Field(32, ge=1, description="Activity tasks run at once")
    activity_threads: int = Field(32, ge=1, description="Threads for plain (sync) activities")
    eager_activities: int = Field(
        256,
        ge=0,
        description="A worker that runs both executor partitions and the activities of its "
        "task queue runs up to this many of the attempts it dispatches itself, with no task "
        "and no result through the broker; the others go to the task topic (0: all do)",
    )
    history_batch_bytes: int = Field(
        512 * 1024,
        ge=0,
        description="The events one activation records go to the history topic as one "
        "HistoryBatch record while their encoded events add up to at most this many "
        "bytes (0: one HistoryEvent record per event, for readers older than batches)",
    )
    drain_timeout: float = Field(
        30.0,
        ge=0,
        description="On stop, how long running activities may finish and report (s)",
    )
    request_timeout: float = Field(30.0, gt=0, description="Client: max wait for a reply (s)")
    metrics_port: int = Field(
        9464,
        ge=0,
        le=65535,
        description="Worker port of /metrics, /healthz and /readyz (0: none)",
    )
    instance_id: str | None = Field(
        None,
        min_length=1,
        description="Worker: a stable id per worker (static group membership): a worker "
        "restarted with the same id within the session timeout gets its partitions back "
        "without a rebalance; unset, each start joins as a new member",
    )
    redrive_after: float = Field(
        30.0,
        gt=0,
        description="An activity attempt still pending this long after its task was sent "
        "is sent again (s); doubled at each re-drive",
    )
    redrive_max: float = Field(
        300.0, gt=0, description="Longest wait between two re-drives of one attempt (s)"
    )
    # -- payload codec (docs/codec.md) ---------------------------------------------------
    codec_key_file: str | None = Field(
        None,
        min_length=1,
        description="JSON key file {current, keys: {id: base64}}: payloads are encrypted "
        "(AES-GCM) with the current key and decrypted with any; unset, not encrypted",
    )
    compress_threshold: int | None = Field(
        None,
        ge=0,
        description="Payloads of at least this many bytes of JSON are zlib-compressed "
        "(before encryption); unset, none are",
    )

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers(cls, value: str) -> str:
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"{server!r} is not host:port")
        return value

    def kafka_options(self) -> dict[str, Any]:
        """Keyword arguments of every aiokafka client: the brokers, TLS and SASL."""
        return {"bootstrap_servers": self.bootstrap_servers, **self.aiokafka_options()}

    @field_validator("codec_key_file")
    @classmethod
    def _key_file(cls, value: str | None) -> str | None:
        if value is not None:
            from app.workflow._codec import read_key_file

            read_key_file(value)  # fails now, naming what is wrong, not at the first payload
        return value

    @property
    def topology(self) -> Topology:
        return Topology(
            self.app_id,
            self.generation,
            self.partitions,
            self.replication,
            (self.task_queue,),
        )

    @classmethod
    def create(cls, **values: Any) -> StreamingSettings:
        """Settings from ``values``; a bad value raises InvalidArgumentError naming it."""
        try:
            return cls(**values)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
                for err in exc.errors()
            )
            raise InvalidArgumentError(f"invalid streaming settings: {problems}") from None

    @classmethod
    def from_env(cls, **overrides: Any) -> StreamingSettings:
        """Settings from ``STREAMFLOW_*`` env vars and ``KAFKA_BOOTSTRAP_SERVERS``."""
        values: dict[str, Any] = {}
        if os.environ.get(ENV_BOOTSTRAP):
            values["bootstrap_servers"] = os.environ[ENV_BOOTSTRAP]
        for name in cls.model_fields:
            env = ENV_PREFIX + name.upper()
            if env in os.environ:
                values[name] = os.environ[env]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.create(**values)

    def to_env(self) -> dict[str, str]:
        """These settings as environment variables (``from_env`` reads them back).

        Secrets are included (to start a worker process with them): never log this.
        """
        values = self.model_dump()
        env: dict[str, str] = {}
        for name in type(self).model_fields:
            value = values[name]
            if value is not None:
                secret = isinstance(value, SecretStr)
                env[env_name(name)] = value.get_secret_value() if secret else str(value)
        return env

    @classmethod
    def describe(cls) -> list[tuple[str, str, str, str]]:
        """(env var, type, default, description) of every setting, for docs and the CLI.

        The broker's address comes first, then the TLS/SASL settings, then the rest.
        """
        security = list(KafkaSecurity.model_fields)
        own = [name for name in cls.model_fields if name not in security]
        rows = []
        for name in [own[0], *security, *own[1:]]:
            info = cls.model_fields[name]
            rows.append(
                (
                    env_name(name),
                    _type_name(info.annotation),
                    repr(info.default),
                    info.description or "",
                )
            )
        return rows


def env_name(field: str) -> str:
    return ENV_BOOTSTRAP if field == "bootstrap_servers" else ENV_PREFIX + field.upper()


def _type_name(annotation: Any) -> str:
    if get_origin(annotation) is Literal:
        return "|".join(str(arg) for arg in get_args(annotation))
    args = get_args(annotation)
    if type(None) in args:
        inner = [arg for arg in args if arg is not type(None)]
        return " | ".join([*(_type_name(arg) for arg in inner), "None"])
    if annotation is SecretStr:
        return "secret"
    return str(getattr(annotation, "__name__", annotation))


def test_settings(bootstrap_servers: str, **overrides: Any) -> StreamingSettings:
    """Timings that make a single-machine broker fast (short sessions, short fetch waits)."""
    values: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers,
        "session_timeout": 3.0,
        "heartbeat_interval": 0.5,
        "rebalance_timeout": 5.0,
        "fetch_wait_ms": 10,
        "commit_interval": 0.2,
        "timer_tick": 0.01,
        "partitions": 4,
        "metrics_port": 0,
        "request_timeout": 20.0,
        "drain_timeout": 3.0,
        "redrive_after": 3.0,
        "redrive_max": 10.0,
    }
    values.update(overrides)
    return StreamingSettings.create(**values)


test_settings.__test__ = False  # type: ignore[attr-defined]  # a factory, not a pytest test
