"""The streaming runtime: Faust workers on Kafka, and the ``KafkaExecutor`` client.

Needs the ``kafka`` extra (``pip install -e '.[kafka]'``).
"""

from __future__ import annotations

from ._client import BrokerUnavailableError, KafkaExecutor, KafkaHandle
from ._worker import StreamingWorker
from .settings import StreamingSettings

__all__ = [
    "BrokerUnavailableError",
    "KafkaExecutor",
    "KafkaHandle",
    "StreamingSettings",
    "StreamingWorker",
]
