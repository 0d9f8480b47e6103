"""Payload codecs on every runtime: nothing in plaintext at rest or on the wire, keys rotate.

Each test puts a distinctive marker string in a workflow input, an activity
result, a signal, an activity failure and a workflow failure, then reads
every byte the runtime stored or published, around the engine
(``tests/conformance/raw.py``): the marker must not be there, while the
workflow type name (left plain) must, which shows the scan saw the data.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from app.workflow import (
    ActivityError,
    ClaimCheckCodec,
    CompressionCodec,
    EncryptionCodec,
    LocalBlobStore,
    NonRetryableError,
    PayloadCodecError,
    RetryPolicy,
    Signal,
    WorkflowContext,
    WorkflowFailedError,
    WorkflowOptions,
    WorkflowStatus,
)
from tests.conformance.conftest import WAIT, Runtime
from tests.conformance.raw import kafka_topics_bytes, persisted_bytes
from tests.test_claim_check import blob_files

KEY_A = base64.b64encode(bytes(range(32))).decode()
KEY_B = base64.b64encode(bytes(range(32, 64))).decode()


def codec_a() -> list[Any]:
    return [CompressionCodec(256), EncryptionCodec(KEY_A, "key-a")]


def codec_b_with_a() -> list[Any]:
    return [CompressionCodec(256), EncryptionCodec(KEY_B, "key-b", {"key-a": KEY_A})]


def echo_secret(text: str) -> str:
    return f"{text}|activity-result"


def fail_secret(text: str) -> None:
    raise NonRetryableError(f"activity failed on {text}")


async def codec_flow(ctx: WorkflowContext, text: str) -> dict[str, Any]:
    echoed = await ctx.execute_activity(echo_secret, text)
    try:
        await ctx.execute_activity(fail_secret, text, retry=RetryPolicy(max_attempts=1))
        err = ""
    except ActivityError as exc:
        err = str(exc.__cause__)
    signalled = await ctx.receive_signal("secret").receive()
    return {"echoed": echoed, "err": err, "signal": signalled}


async def codec_fails(ctx: WorkflowContext, text: str) -> None:
    raise ValueError(f"workflow failed with {text}")


FLOWS = {"workflows": [codec_flow, codec_fails], "activities": [echo_secret, fail_secret]}


def _marker() -> str:
    return f"PLAIN-{uuid.uuid4().hex}"


async def test_encrypted_payloads_are_never_stored_in_plaintext(
    runtime: Runtime, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    marker = _marker()
    async with runtime.open(codec=codec_a(), **FLOWS) as ex:
        handle = await ex.execute(codec_flow, WorkflowOptions(id="enc", input=f"in:{marker}"))
        await ex.signal("enc", Signal("secret", {"note": f"sig:{marker}"}))
        result = await handle.result(timeout=WAIT)
        failing = await ex.execute(codec_fails, WorkflowOptions(id="enc-f", input=marker))
        with pytest.raises(WorkflowFailedError, match=marker):
            await failing.result(timeout=WAIT)
        state = await ex.describe("enc")
        failed = await ex.describe("enc-f")
        raw = await persisted_bytes(runtime, tmp_path, request, ex, ["enc", "enc-f"])
    assert result == {
        "echoed": f"in:{marker}|activity-result",
        "err": f"activity failed on in:{marker}",
        "signal": {"note": f"sig:{marker}"},
    }
    # the history reads back decoded
    assert state.input == f"in:{marker}"
    assert state.result == result
    assert any(e.signal_payload == {"note": f"sig:{marker}"} for e in state.history)
    assert any(e.failure and marker in e.failure.message for e in state.history)
    assert failed.status is WorkflowStatus.FAILED and marker in (failed.error or "")
    # ... and nothing of it is plaintext where it is kept or carried
    assert b"codec_flow" in raw, "the scan did not see the workflow's records"
    assert marker.encode() not in raw
    assert marker[6:].encode() not in raw  # not even the random part alone


def reader(runtime: Runtime, codec: list[Any] | None, worker: list[Any] | None = None) -> Any:
    """An executor reading with ``codec``; on streaming, its workers keep the right key."""
    if runtime.name == "streaming":
        return runtime.open(codec=worker or codec_a(), client_codec=codec, **FLOWS)
    return runtime.open(codec=codec, **FLOWS)


async def test_reading_without_the_key_says_so(runtime: Runtime) -> None:
    marker = _marker()
    async with runtime.open(codec=codec_a(), **FLOWS) as ex:
        handle = await ex.execute(codec_flow, WorkflowOptions(id="nokey", input=marker))
        await ex.signal("nokey", Signal("secret", marker))
        await handle.result(timeout=WAIT)
    async with reader(runtime, None) as ex:
        with pytest.raises(PayloadCodecError, match=r"aes-256-gcm.*key-a") as err:
            await ex.describe("nokey")
    assert err.value.key_id == "key-a"
    wrong = [EncryptionCodec(KEY_B, "key-b")]
    async with reader(runtime, [CompressionCodec(256), *wrong]) as ex:
        with pytest.raises(PayloadCodecError, match=r"key id 'key-a'.*does not have"):
            await ex.describe("nokey")
    # under the right id but the wrong key material: named as such
    async with reader(runtime, [EncryptionCodec(KEY_B, "key-a")]) as ex:
        with pytest.raises(PayloadCodecError, match="does not decrypt"):
            await ex.describe("nokey")


async def test_payloads_written_under_an_old_key_are_read_after_rotation(
    restartable: Runtime,
) -> None:
    runtime = restartable
    marker = _marker()
    async with runtime.open(codec=codec_a(), **FLOWS) as ex:
        await ex.execute(codec_flow, WorkflowOptions(id="rot", input=marker))
        # the workflow now waits for its signal, its history written under key A
    async with runtime.open(codec=codec_b_with_a(), **FLOWS) as ex:
        await ex.signal("rot", Signal("secret", f"after-rotation:{marker}"))
        result = await ex.get_handle("rot").result(timeout=WAIT)
        state = await ex.describe("rot")
    assert result["echoed"] == f"{marker}|activity-result"
    assert result["signal"] == f"after-rotation:{marker}"
    assert state.input == marker


async def test_a_dropped_old_key_is_named(
    restartable: Runtime, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    runtime = restartable
    async with runtime.open(codec=codec_a(), **FLOWS) as ex:
        await ex.execute(codec_flow, WorkflowOptions(id="drop", input=_marker()))
    # Key B alone (A dropped) cannot read what A wrote. On streaming the reader is
    # the worker (a client reads what the worker re-encodes under the current key).
    only_b = [CompressionCodec(256), EncryptionCodec(KEY_B, "key-b")]
    if runtime.name == "streaming":
        await _worker_stalls_without(runtime, only_b, tmp_path, request)
        return
    # the embedded executor refuses to start (it would resume the run); others say so
    # when the run is read
    with pytest.raises(PayloadCodecError, match="key-a"):
        async with runtime.open(codec=only_b, **FLOWS) as ex:
            await ex.describe("drop")
    if runtime.name == "temporal":
        await _temporal_worker_retries_without(runtime, only_b)


async def _worker_stalls_without(
    runtime: Runtime, worker_codec: list[Any], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A streaming worker without the key holds the workflow's commands, loses none.

    It cannot read the run, so it neither applies the signal nor dead-letters it:
    the command stays uncommitted until a worker with the key takes it.
    """
    async with runtime.open(codec=worker_codec, client_codec=codec_a(), **FLOWS) as ex:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(ex.signal("drop", Signal("secret", "late")), 3.0)
    async with runtime.open(codec=codec_b_with_a(), **FLOWS) as ex:
        result = await ex.get_handle("drop").result(timeout=WAIT)
    assert result["signal"] == "late"
    bootstrap = request.getfixturevalue("kafka_bootstrap")
    prefix = "cf-" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:16]
    letters, topics = await kafka_topics_bytes(bootstrap, f"{prefix}.dead-letter")
    assert topics and letters == b"", "a command was dead-lettered"


def echo_big(value: dict[str, Any]) -> dict[str, Any]:
    return {**value, "seen": True}


async def big_flow(ctx: WorkflowContext, value: dict[str, Any]) -> dict[str, Any]:
    return await ctx.execute_activity(echo_big, value)


async def test_large_payloads_travel_by_reference(runtime: Runtime, tmp_path: Path) -> None:
    # incompressible and over the streaming runtime's 256 KiB limit
    big = {"blob": base64.b64encode(os.urandom(600 * 1024)).decode()}
    blobs = LocalBlobStore(tmp_path / "blobs")
    codec = [EncryptionCodec(KEY_A, "key-a"), ClaimCheckCodec(blobs, threshold=64 * 1024)]
    flows = {"workflows": [big_flow], "activities": [echo_big]}
    async with runtime.open(codec=codec, **flows) as ex:
        handle = await ex.execute(big_flow, WorkflowOptions(id="big", input=big))
        assert await handle.result(timeout=WAIT) == {**big, "seen": True}
        state = await ex.describe("big")
    assert state.input == big
    assert blob_files(tmp_path / "blobs"), "nothing went to the blob store"


async def _temporal_worker_retries_without(runtime: Runtime, worker_codec: list[Any]) -> None:
    """A Temporal worker without the key fails the workflow task (retried), not the workflow."""
    async with runtime.open(codec=worker_codec, **FLOWS) as ex:
        await ex.signal("drop", Signal("secret", "late"))
        with pytest.raises(PayloadCodecError):
            await ex.describe("drop")
        assert await ex.get_handle("drop").status() is WorkflowStatus.RUNNING
    async with runtime.open(codec=codec_b_with_a(), **FLOWS) as ex:
        result = await ex.get_handle("drop").result(timeout=30)
    assert result["signal"] == "late"
