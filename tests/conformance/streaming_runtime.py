"""The streaming runtime in the conformance suite: a streaming worker and a KafkaExecutor.

Each test gets its own topic namespace (``app_id``) on the session's broker,
a worker running in the test's event loop (its workflows and activities are
the test's), and a client whose hooks fire from the history topic. A
"restart" stops both and starts new ones on the same topics: the new worker
rebuilds its tables from their changelogs and resumes the running workflows.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from app.streaming import KafkaExecutor, StreamingWorker
from app.streaming.admin import ensure_topics
from app.streaming.settings import test_settings
from app.workflow import Hooks
from providers.inmemory import InMemoryStore
from tests.conformance import workflows as suite

BROKER: dict[str, str] = {}
"""Filled with the session broker's address for tests that run on this runtime."""


def streaming_runtime(tmp_path: Path, runtime_cls: Any) -> Any:
    app_id = "cf-" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:16]

    @asynccontextmanager
    async def open_worker_and_client(
        rt: Any, hooks: Hooks | None, overrides: dict[str, Any]
    ) -> AsyncIterator[KafkaExecutor]:
        settings = test_settings(BROKER["bootstrap"], app_id=app_id)
        workflows = overrides.pop("workflows", suite.workflows)
        activities = overrides.pop("activities", suite.activities)
        codec = overrides.pop("codec", None)
        client_codec = overrides.pop("client_codec", codec)  # a client may lack the worker's key
        await ensure_topics(settings)
        worker = StreamingWorker(settings, workflows, activities, codec=codec)
        await worker.start()
        try:
            async with KafkaExecutor(
                settings=settings, hooks=hooks, workflows=workflows, codec=client_codec
            ) as ex:
                yield ex
        finally:
            await worker.stop()

    return runtime_cls(
        "streaming", InMemoryStore, {"restart", "streaming"}, opener=open_worker_and_client
    )
