"""Fixtures for the Temporal provider tests: a client on a fresh namespace of the session server."""

from __future__ import annotations

import pytest
from temporalio.client import Client

from tests.providers_temporal.runtime import fresh_namespace


@pytest.fixture
async def temporal_client(temporal_address: str) -> Client:
    """A client whose namespace no other test uses."""
    return await fresh_namespace(temporal_address)
