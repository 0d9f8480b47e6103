"""``ensure_topics`` reads the broker's answer for each topic it asks to create.

aiokafka's ``create_topics`` raises for no per-topic error: it returns them.
A topic that another worker created between the listing and the create is
answered "already exists" and is not one this call created. (A broker that
refuses a topic, e.g. a replication above its number of brokers, is tested
against Apache Kafka in tests/security/test_apache_kafka.py: the test
broker refuses none.)
"""

from __future__ import annotations

import uuid

from app.streaming.admin import ensure_topics
from app.streaming.settings import test_settings


async def test_a_topic_created_meanwhile_is_not_counted_as_created(kafka_bootstrap: str) -> None:
    settings = test_settings(kafka_bootstrap, app_id=f"adm-{uuid.uuid4().hex[:8]}", partitions=1)
    spec = settings.topology.specs()[0]
    # both are missing when listed; the second create is answered "already exists",
    # as when another worker creates the topic between the listing and the create
    assert await ensure_topics(settings, [spec, spec]) == [spec.name]
    assert await ensure_topics(settings, [spec]) == []
