"""Creating and checking the topics of a deployment (``python -m app topics create|check``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from app.workflow._errors import InvalidArgumentError
from topics import TopicSpec

from ._machine import Command, CommandKind
from ._messages import encode_command
from ._security import start_client
from ._tables import ChangelogTable, partitions_of, recover
from .settings import StreamingSettings

CONTROL_KEY = b"generation"


@dataclass(frozen=True)
class TopicProblem:
    """A topic that is missing or differs from its spec."""

    topic: str
    problem: str

    def __str__(self) -> str:
        return f"{self.topic}: {self.problem}"


def _admin(settings: StreamingSettings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(
        **settings.kafka_options(),
        request_timeout_ms=int(settings.request_timeout * 1000),
    )


async def _start(client: Any, settings: StreamingSettings) -> None:
    try:
        await start_client(
            client.start, settings, settings.bootstrap_servers, settings.request_timeout
        )
    except BaseException:
        with contextlib.suppress(Exception):
            stop = client.close if isinstance(client, AIOKafkaAdminClient) else client.stop
            await asyncio.wait_for(stop(), settings.request_timeout)
        raise


async def ensure_topics(
    settings: StreamingSettings, specs: list[TopicSpec] | None = None
) -> list[str]:
    """Create the topics of ``settings.topology`` that do not exist; returns those created."""
    specs = specs if specs is not None else settings.topology.specs()
    admin = _admin(settings)
    await _start(admin, settings)
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        created: list[str] = []
        for spec in missing:
            topic = NewTopic(
                spec.name, spec.partitions, spec.replication, topic_configs=spec.configs
            )
            response = await admin.create_topics([topic])
            # aiokafka returns the broker's answer per topic, it raises for none of them
            for entry in response.topic_errors:
                code, message = entry[1], entry[2] if len(entry) > 2 else None
                if code == TopicAlreadyExistsError.errno:
                    continue  # another worker created it first
                if code != 0:
                    raise InvalidArgumentError(
                        f"the Kafka broker {settings.bootstrap_servers} refused to create topic "
                        f"{spec.name!r} ({spec.partitions} partitions, replication "
                        f"{spec.replication}, {spec.configs}): error {code}: {message or ''} "
                        "(is the replication at most the number of brokers?)"
                    )
                created.append(spec.name)
        return created
    finally:
        await admin.close()


async def read_generation(settings: StreamingSettings) -> tuple[int, int] | None:
    """(generation, partitions) announced on the control topic, or None if none is."""
    control = ChangelogTable(settings.topology.control)
    if not await partitions_of(settings, control.topic, settings.request_timeout):
        return None
    await asyncio.wait_for(
        recover(
            settings,
            [control],
            {0},
            fetch_wait_ms=settings.fetch_wait_ms,
            timeout=settings.request_timeout,
        ),
        settings.request_timeout * 2,
    )
    raw = control.get(CONTROL_KEY)
    if not raw:
        return None
    record = json.loads(raw)
    return int(record["generation"]), int(record["partitions"])


async def grow(settings: StreamingSettings, partitions: int) -> StreamingSettings:
    """Move the deployment to a new generation of topics with ``partitions`` partitions.

    Creates the next generation's topics, asks every partition of the current
    generation to hand its running workflows over (a ``migrate`` command, which
    each partition owner applies in order with its other commands), and
    announces the new generation on the control topic, where clients read it.
    Workers of the new generation must be started (``STREAMFLOW_GENERATION``);
    those of the old one forward what still reaches them until retired.
    """
    old = settings.topology
    if partitions < old.partitions:
        raise InvalidArgumentError(
            f"a new generation cannot have fewer partitions ({partitions}) than the current "
            f"one ({old.partitions})"
        )
    new = settings.model_copy(
        update={"generation": settings.generation + 1, "partitions": partitions}
    )
    await ensure_topics(new)
    producer = AIOKafkaProducer(**settings.kafka_options(), acks="all")
    await _start(producer, settings)
    try:
        for partition in range(old.partitions):
            wid = f"__migrate__/{partition}"
            cmd = Command(
                command_id=f"migrate/{old.namespace}/{partition}/{new.generation}",
                kind=CommandKind.MIGRATE,
                workflow_id=wid,
                issued_at=datetime.now(UTC),
                step=new.generation,
            )
            await producer.send_and_wait(
                old.commands, encode_command(cmd), key=wid.encode(), partition=partition
            )
        record = {"generation": new.generation, "partitions": partitions}
        await producer.send_and_wait(
            old.control, json.dumps(record).encode(), key=CONTROL_KEY, partition=0
        )
    finally:
        await producer.stop()
    return new


async def check_topics(
    settings: StreamingSettings, specs: list[TopicSpec] | None = None
) -> list[TopicProblem]:
    """What differs between the cluster and the specs (empty: all good)."""
    specs = specs if specs is not None else settings.topology.specs()
    admin = _admin(settings)
    await _start(admin, settings)
    try:
        existing = set(await admin.list_topics())
        problems = [TopicProblem(s.name, "missing") for s in specs if s.name not in existing]
        present = [s for s in specs if s.name in existing]
        if not present:
            return problems
        described = await admin.describe_topics([s.name for s in present])
        by_name = {d["topic"]: d for d in described}
        for spec in present:
            info = by_name.get(spec.name)
            if info is None:
                problems.append(TopicProblem(spec.name, "not described by the broker"))
                continue
            count = len(info.get("partitions", []))
            generation_scoped = spec.name.startswith(settings.topology.namespace)
            if generation_scoped and count < spec.partitions:
                problems.append(
                    TopicProblem(spec.name, f"{count} partitions, expected {spec.partitions}")
                )
        return problems
    except KafkaError as exc:
        return [TopicProblem("*", f"cannot describe topics: {exc}")]
    finally:
        await admin.close()
