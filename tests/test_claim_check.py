"""Large payloads by reference: the claim-check codec on a local directory and on S3 (moto)."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.workflow import (
    ClaimCheckCodec,
    CodecChain,
    CompressionCodec,
    EncryptionCodec,
    InvalidArgumentError,
    LocalBlobStore,
    PayloadCodecError,
    S3BlobStore,
)
from app.workflow._payloads import Payloads, marker_of
from tests import servers

KEY = base64.b64encode(bytes(32)).decode()


def blob_files(directory: Path) -> list[Path]:
    return [f for f in directory.rglob("*") if f.is_file()]


def chain(store: Any, threshold: int = 1024) -> Payloads:
    codecs = [CompressionCodec(256), EncryptionCodec(KEY, "k1"), ClaimCheckCodec(store, threshold)]
    return Payloads(CodecChain(codecs))


async def test_large_payloads_go_to_the_directory_encrypted(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    p = chain(store)
    big = {"secret": "PLAIN-big", "noise": base64.b64encode(os.urandom(100_000)).decode()}
    encoded = await p.encode_value(big)
    marker = marker_of(encoded)
    assert marker is not None
    assert [s["codec"] for s in marker["steps"]] == ["aes-256-gcm", "claim-check"]
    assert len(json.dumps(encoded)) < 500  # only the reference travels
    files = blob_files(tmp_path)
    assert len(files) == 1 and b"PLAIN-big" not in files[0].read_bytes()
    assert await p.decode_value(encoded) == big
    assert await p.encode_value({"small": 1}) != {"small": 1}  # encrypted, kept inline
    assert "claim-check" not in json.dumps(await p.encode_value({"small": 1}))


async def test_a_missing_or_forged_blob_is_named(tmp_path: Path) -> None:
    p = chain(LocalBlobStore(tmp_path), threshold=16)
    encoded = await p.encode_value("x" * 100)
    for f in blob_files(tmp_path):
        f.unlink()
    with pytest.raises(PayloadCodecError, match="not in the blob store"):
        await p.decode_value(encoded)
    marker = marker_of(encoded)
    assert marker is not None
    marker["steps"][-1]["ref"] = "../../etc/passwd"
    with pytest.raises(PayloadCodecError, match="invalid blob key"):
        await p.decode_value(encoded)


def test_bad_options_fail_at_the_call(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="must be a BlobStore"):
        ClaimCheckCodec(object())  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="threshold"):
        ClaimCheckCodec(LocalBlobStore(tmp_path), threshold=0)
    with pytest.raises(InvalidArgumentError, match="bucket"):
        S3BlobStore(object(), "")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def moto_port() -> Iterator[int]:
    with servers.running(servers.moto(servers.scratch_dir("moto-claim-check"))) as server:
        servers.create_bucket(server.port, "payloads")
        yield server.port


async def test_s3_blob_store_on_moto(moto_port: int) -> None:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{moto_port}",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    )
    store = S3BlobStore(client, "payloads", prefix="t/")
    p = chain(store)
    big = {"noise": base64.b64encode(os.urandom(50_000)).decode()}
    encoded = await p.encode_value(big)
    assert await p.decode_value(encoded) == big
    listed = client.list_objects_v2(Bucket="payloads", Prefix="t/")
    assert listed["KeyCount"] == 1
    assert await store.get("0" * 64) is None
