"""The streaming runtime: workers on Kafka, and the ``KafkaExecutor`` client.

Needs the ``kafka`` extra (``pip install -e '.[kafka]'``). Importing it
registers the ``"streaming"`` provider: ``new("streaming", Config(extra=
{"bootstrap_servers": "kafka:9092"}))`` gives a :class:`KafkaExecutor`.
"""

from __future__ import annotations

from app.workflow._errors import InvalidArgumentError
from app.workflow._executor import DurableExecutor
from app.workflow._registry import Config, register

from ._client import BrokerUnavailableError, KafkaExecutor, KafkaHandle, NoReplyError
from ._security import (
    BrokerAuthenticationError,
    BrokerSecurityError,
    BrokerTLSError,
    KafkaSecurity,
)
from ._visibility import VisibilityIndex
from ._worker import StreamingWorker
from .settings import StreamingSettings

__all__ = [
    "VisibilityIndex",
    "BrokerAuthenticationError",
    "BrokerSecurityError",
    "BrokerTLSError",
    "BrokerUnavailableError",
    "KafkaExecutor",
    "KafkaHandle",
    "KafkaSecurity",
    "NoReplyError",
    "StreamingSettings",
    "StreamingWorker",
]

_EXTRA_KEYS = frozenset(
    {"bootstrap_servers", "settings", "hooks", "workflows", "client_id", "codec"}
)


def _factory(config: Config) -> DurableExecutor:
    unknown = set(config.extra) - _EXTRA_KEYS
    if unknown:
        raise InvalidArgumentError(
            f"unknown Config.extra keys for provider 'streaming': {', '.join(sorted(unknown))} "
            f"(accepted: {', '.join(sorted(_EXTRA_KEYS))})"
        )
    if config.store is not None:
        raise InvalidArgumentError(
            "provider 'streaming' keeps its state in Kafka (tables backed by changelog "
            "topics): Config.store must be None"
        )
    return KafkaExecutor(**config.extra)


register("streaming", _factory)
