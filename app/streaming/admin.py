"""Creating and checking the topics of a deployment (``python -m app topics create|check``)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from topics import TopicSpec

from .settings import StreamingSettings


@dataclass(frozen=True)
class TopicProblem:
    """A topic that is missing or differs from its spec."""

    topic: str
    problem: str

    def __str__(self) -> str:
        return f"{self.topic}: {self.problem}"


def _admin(settings: StreamingSettings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers,
        request_timeout_ms=int(settings.request_timeout * 1000),
    )


async def ensure_topics(settings: StreamingSettings, specs: list[TopicSpec] | None = None) -> list[str]:
    """Create the topics of ``settings.topology`` that do not exist; returns those created."""
    specs = specs if specs is not None else settings.topology.specs()
    admin = _admin(settings)
    await asyncio.wait_for(admin.start(), settings.request_timeout)
    try:
        existing = set(await admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        created: list[str] = []
        for spec in missing:
            try:
                await admin.create_topics(
                    [NewTopic(spec.name, spec.partitions, spec.replication, topic_configs=spec.configs)]
                )
                created.append(spec.name)
            except TopicAlreadyExistsError:
                pass  # another worker created it first
        return created
    finally:
        await admin.close()


async def check_topics(
    settings: StreamingSettings, specs: list[TopicSpec] | None = None
) -> list[TopicProblem]:
    """What differs between the cluster and the specs (empty: all good)."""
    specs = specs if specs is not None else settings.topology.specs()
    admin = _admin(settings)
    await asyncio.wait_for(admin.start(), settings.request_timeout)
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
            if count < spec.partitions:
                problems.append(
                    TopicProblem(spec.name, f"{count} partitions, expected {spec.partitions}")
                )
        return problems
    except KafkaError as exc:
        return [TopicProblem("*", f"cannot describe topics: {exc}")]
    finally:
        await admin.close()
