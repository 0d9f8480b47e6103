"""Session-wide servers: each starts once, on first use, and stops at the end."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import servers


@pytest.fixture(scope="session")
def tansu_server() -> Iterator[servers.Server]:
    """A Tansu broker (Kafka protocol) shared by the session."""
    with servers.running(servers.tansu(servers.scratch_dir("tansu"))) as server:
        yield server


@pytest.fixture(scope="session")
def kafka_bootstrap(tansu_server: servers.Server) -> str:
    """``host:port`` of the session's Kafka-protocol broker."""
    return f"127.0.0.1:{tansu_server.port}"


@pytest.fixture(scope="session")
def nats_server() -> Iterator[servers.Server]:
    """A nats-server with JetStream shared by the session."""
    with servers.running(servers.nats(servers.scratch_dir("nats"))) as server:
        yield server


@pytest.fixture(scope="session")
def nats_url(nats_server: servers.Server) -> str:
    """``nats://`` URL of the session's NATS server."""
    return f"nats://127.0.0.1:{nats_server.port}"


@pytest.fixture(scope="session")
def temporal_server() -> Iterator[servers.Server]:
    """A Temporal dev server shared by the session."""
    with servers.running(servers.temporal(servers.scratch_dir("temporal"))) as server:
        yield server


@pytest.fixture(scope="session")
def temporal_address(temporal_server: servers.Server) -> str:
    """``host:port`` of the session's Temporal frontend (gRPC)."""
    return f"127.0.0.1:{temporal_server.port}"
