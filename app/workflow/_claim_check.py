"""Large payloads by reference: a codec that keeps big payloads in a blob store.

The payload's bytes go to the blob store under a content-derived key and only
the key travels (in the codec step's metadata). Put it last in a chain
(compress, encrypt, then claim-check) so the blob store holds ciphertext.
Blobs are never deleted by the engine: expire them with the store's own
lifecycle rules, after the retention of the runs that point at them.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ._codec import Encoded, PayloadCodecError
from ._errors import InvalidArgumentError

_KEY = re.compile(r"^[0-9a-f]{64}$")


@runtime_checkable
class BlobStore(Protocol):
    """Where a :class:`ClaimCheckCodec` keeps payloads; keys are hex SHA-256 digests.

    ``put`` must be durable when it returns (the reference is persisted next);
    writing a key twice writes the same bytes. ``get`` returns None for an
    unknown key.
    """

    async def put(self, key: str, data: bytes) -> None: ...

    async def get(self, key: str) -> bytes | None: ...


class LocalBlobStore:
    """Blobs as files in a local directory (shared storage for several processes)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def _path(self, key: str) -> Path:
        if not _KEY.match(key):  # a key read from a payload must not walk the filesystem
            raise PayloadCodecError(f"invalid blob key {key!r}", codec=ClaimCheckCodec.name)
        return self.directory / key[:2] / key

    def _put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        if path.exists():
            return  # content-addressed: the same key holds the same bytes
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        with tmp.open("wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        tmp.replace(path)  # atomic: a reader never sees half a blob

    def _get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._put, key, data)

    async def get(self, key: str) -> bytes | None:
        return await asyncio.to_thread(self._get, key)


class S3Client(Protocol):
    """The two calls of a boto3 S3 client that :class:`S3BlobStore` uses."""

    def put_object(self, *, Bucket: str, Key: str, Body: bytes) -> Any: ...

    def get_object(self, *, Bucket: str, Key: str) -> Any: ...


class S3BlobStore:
    """Blobs in an S3-compatible bucket, through a boto3-style client (run in a thread)."""

    def __init__(self, client: S3Client, bucket: str, prefix: str = "streamflow/") -> None:
        if not isinstance(bucket, str) or not bucket:
            raise InvalidArgumentError(
                f"S3BlobStore.bucket must be a non-empty string, got {bucket!r}"
            )
        self.client = client
        self.bucket = bucket
        self.prefix = prefix

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(
            self.client.put_object, Bucket=self.bucket, Key=self.prefix + key, Body=data
        )

    def _get(self, key: str) -> bytes | None:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)
        except Exception as exc:
            # botocore's NoSuchKey is generated per client: recognise it by its code
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if code in ("NoSuchKey", "404"):
                return None
            raise
        body: bytes = response["Body"].read()
        return body

    async def get(self, key: str) -> bytes | None:
        return await asyncio.to_thread(self._get, key)


class ClaimCheckCodec:
    """Moves payloads of at least ``threshold`` bytes to ``store``; only their key travels."""

    name = "claim-check"

    def __init__(self, store: BlobStore, threshold: int = 64 * 1024) -> None:
        if not isinstance(store, BlobStore):
            raise InvalidArgumentError(
                f"ClaimCheckCodec.store must be a BlobStore (put/get), got {type(store).__name__}"
            )
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
            raise InvalidArgumentError(
                f"ClaimCheckCodec.threshold must be an int >= 1 (bytes), got {threshold!r}"
            )
        self.store = store
        self.threshold = threshold

    async def encode(self, data: bytes) -> Encoded | None:
        if len(data) < self.threshold:
            return None
        key = hashlib.sha256(data).hexdigest()
        await self.store.put(key, data)
        return Encoded(b"", {"ref": key, "size": str(len(data))})

    async def decode(self, data: bytes, meta: Mapping[str, str]) -> bytes:
        key = meta.get("ref", "")
        blob = await self.store.get(key)
        if blob is None:
            raise PayloadCodecError(
                f"payload {key!r} is not in the blob store {self.store!r}: it was deleted, or "
                "this process uses another store",
                codec=self.name,
            )
        if hashlib.sha256(blob).hexdigest() != key:
            raise PayloadCodecError(
                f"blob {key!r} is corrupt (its digest differs)", codec=self.name
            )
        return blob
