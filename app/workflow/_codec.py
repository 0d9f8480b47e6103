"""Payload codecs: bytes -> bytes transforms applied to user payloads at the I/O boundary.

The converter (``_converter.py``) turns values into JSON data; a codec then
turns that data's bytes into other bytes (compressed, encrypted) before they
leave the process, and back when they are read. The deterministic core never
sees encoded data: runtimes encode when they persist or publish and decode
when they read (``_payloads.py``).

An encoded payload is itself a JSON value, so every store, schema and topic
carries it unchanged::

    {"$encoded": {"v": 1, "steps": [{"codec": "zlib"},
                                    {"codec": "aes-256-gcm", "key_id": "k2"}],
                  "data": "<base64>"}}

A string field (an error message) is encoded as the text ``$encoded:`` followed
by the same object's JSON. A reader without the codec recognises both and says
what it would need instead of failing on bad data.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

from ._errors import InvalidArgumentError, WorkflowError

MARKER = "$encoded"
TEXT_PREFIX = MARKER + ":"
_VERSION = 1


class PayloadCodecError(WorkflowError):
    """An encoded payload cannot be decoded: no codec, an unknown key id, a wrong key.

    Attributes:
        codec: the codec name the payload needs (e.g. ``aes-256-gcm``).
        key_id: the key id it was written under, when it has one.
    """

    def __init__(self, message: str, *, codec: str = "", key_id: str | None = None) -> None:
        super().__init__(message)
        self.codec = codec
        self.key_id = key_id


@dataclass(frozen=True)
class Encoded:
    """What one codec made of some bytes, and what it needs to undo it (``meta``)."""

    data: bytes
    meta: Mapping[str, str] = field(default_factory=dict)


@runtime_checkable
class PayloadCodec(Protocol):
    """Transforms payload bytes on their way out of the process and back.

    ``encode`` returns ``None`` to leave the bytes as they are (a payload too
    small to compress); ``decode`` receives the ``meta`` that ``encode``
    returned. ``name`` is recorded with each payload and picks the codec that
    decodes it, so it must stay stable.
    """

    name: str

    async def encode(self, data: bytes) -> Encoded | None: ...

    async def decode(self, data: bytes, meta: Mapping[str, str]) -> bytes: ...


class CompressionCodec:
    """zlib-compresses payloads of at least ``threshold`` bytes that shrink by a quarter or more.

    ``threshold=None`` compresses nothing but still decompresses what others
    compressed (a reader's chain).
    """

    name = "zlib"

    def __init__(self, threshold: int | None = 1024, level: int = 6) -> None:
        if threshold is not None and (
            isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0
        ):
            raise InvalidArgumentError(
                f"CompressionCodec.threshold must be an int >= 0 (bytes), got {threshold!r}"
            )
        if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 9:
            raise InvalidArgumentError(f"CompressionCodec.level must be 1..9, got {level!r}")
        self.threshold = threshold
        self.level = level

    async def encode(self, data: bytes) -> Encoded | None:
        if self.threshold is None or len(data) < self.threshold:
            return None
        packed = zlib.compress(data, self.level)
        # A payload is carried as base64 (4/3 of its bytes): compress only what then
        # still comes out smaller than it went in.
        return Encoded(packed) if len(packed) * 4 < len(data) * 3 else None

    async def decode(self, data: bytes, meta: Mapping[str, str]) -> bytes:
        try:
            return zlib.decompress(data)
        except zlib.error as exc:
            raise PayloadCodecError(f"zlib payload is corrupt: {exc}", codec=self.name) from None


def _key_bytes(key: bytes | str, what: str) -> bytes:
    raw: bytes
    if isinstance(key, str):
        try:
            raw = base64.b64decode(key, validate=True)
        except binascii.Error:
            raise InvalidArgumentError(f"{what} is not valid base64") from None
    elif isinstance(key, bytes):
        raw = key
    else:
        raise InvalidArgumentError(f"{what} must be bytes or base64 text, got {type(key).__name__}")
    if len(raw) != 32:
        raise InvalidArgumentError(
            f"{what} must be 32 bytes (AES-256; new_key() makes one), got {len(raw)} bytes"
        )
    return raw


class EncryptionCodec:
    """AES-GCM encryption under a current key; older keys, by id, still decrypt.

    Each payload records the id of the key that encrypted it, so rotating is:
    make a new key current and keep the previous ones in ``old_keys`` until
    nothing written under them is still read. ``key`` is raw bytes or base64.
    """

    name = "aes-256-gcm"

    def __init__(
        self, key: bytes | str, key_id: str, old_keys: Mapping[str, bytes | str] | None = None
    ) -> None:
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError:  # pragma: no cover - the crypto extra is missing
            raise InvalidArgumentError(
                "EncryptionCodec needs the 'cryptography' package: "
                "pip install 'streamflow-engine[crypto]'"
            ) from None
        if not isinstance(key_id, str) or not key_id:
            raise InvalidArgumentError(
                f"EncryptionCodec.key_id must be a non-empty string, got {key_id!r}"
            )
        keys = {key_id: _key_bytes(key, f"key {key_id!r}")}
        for old_id, old in (old_keys or {}).items():
            if not isinstance(old_id, str) or not old_id:
                raise InvalidArgumentError(f"old key ids must be non-empty strings, got {old_id!r}")
            if old_id == key_id:
                raise InvalidArgumentError(f"key id {key_id!r} is both current and old")
            keys[old_id] = _key_bytes(old, f"old key {old_id!r}")
        self.key_id = key_id
        self._ciphers = {kid: AESGCM(raw) for kid, raw in keys.items()}

    @property
    def key_ids(self) -> list[str]:
        """The ids of every key this codec can decrypt with, current first."""
        return list(self._ciphers)

    def _aad(self, key_id: str) -> bytes:
        # binds the ciphertext to its key id: a payload relabelled with another id fails
        return f"streamflow/{self.name}/{key_id}".encode()

    async def encode(self, data: bytes) -> Encoded:
        nonce = os.urandom(12)
        sealed = self._ciphers[self.key_id].encrypt(nonce, data, self._aad(self.key_id))
        return Encoded(nonce + sealed, {"key_id": self.key_id})

    async def decode(self, data: bytes, meta: Mapping[str, str]) -> bytes:
        from cryptography.exceptions import InvalidTag

        key_id = meta.get("key_id", "")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise PayloadCodecError(
                f"payload was encrypted with key id {key_id!r}, which this codec does not "
                f"have (it has {', '.join(map(repr, self.key_ids))}): add that key to the "
                "old keys",
                codec=self.name,
                key_id=key_id,
            )
        try:
            return cipher.decrypt(data[:12], data[12:], self._aad(key_id))
        except InvalidTag:
            raise PayloadCodecError(
                f"payload encrypted with key id {key_id!r} does not decrypt with the key "
                "configured under that id: wrong key material, or the payload was altered",
                codec=self.name,
                key_id=key_id,
            ) from None


class CodecChain:
    """Codecs applied in order on encode (e.g. compress, then encrypt), reversed on decode."""

    def __init__(self, codecs: Sequence[PayloadCodec]) -> None:
        codecs = list(codecs)
        for codec in codecs:
            if not isinstance(codec, PayloadCodec):
                raise InvalidArgumentError(f"{codec!r} is not a PayloadCodec")
        names = [c.name for c in codecs]
        if len(set(names)) != len(names):
            raise InvalidArgumentError(f"codec names must differ, got {names}")
        self.codecs = codecs
        self._by_name = {c.name: c for c in codecs}

    async def encode_bytes(self, data: bytes) -> tuple[bytes, list[dict[str, str]]]:
        """The bytes after every codec, and the steps that applied (empty: unchanged)."""
        steps: list[dict[str, str]] = []
        for codec in self.codecs:
            out = await codec.encode(data)
            if out is not None:
                data = out.data
                steps.append({**out.meta, "codec": codec.name})
        return data, steps

    async def decode_bytes(self, data: bytes, steps: Sequence[Mapping[str, str]]) -> bytes:
        for step in reversed(steps):
            name = step.get("codec", "")
            codec = self._by_name.get(name)
            if codec is None:
                raise PayloadCodecError(
                    f"payload needs codec {name!r}{_key_text(step)}, which is not configured "
                    f"(configured: {', '.join(self._by_name) or 'none'})",
                    codec=name,
                    key_id=step.get("key_id"),
                )
            data = await codec.decode(data, step)
        return data


def _key_text(step: Mapping[str, str]) -> str:
    return f" with key id {step['key_id']!r}" if "key_id" in step else ""


def as_chain(codec: PayloadCodec | Sequence[PayloadCodec] | None, what: str) -> CodecChain | None:
    """Validate a runtime's ``codec=`` option: one codec, several (applied in order), or None."""
    if codec is None or isinstance(codec, CodecChain):
        return codec
    if isinstance(codec, PayloadCodec):
        return CodecChain([codec])
    if isinstance(codec, (list, tuple)):
        return CodecChain(codec)
    raise InvalidArgumentError(
        f"{what} must be a PayloadCodec, a list of them or None, got {type(codec).__name__}"
    )


def load_codec(
    key_file: str | os.PathLike[str] | None, *, compress_threshold: int | None = 1024
) -> CodecChain | None:
    """The standard chain: compression (above ``compress_threshold``), then encryption.

    ``key_file`` is JSON ``{"current": "k2", "keys": {"k1": "<base64>", "k2": "<base64>"}}``;
    the current key encrypts, every key decrypts. Without a threshold nothing is
    compressed, but compressed payloads are still read. Returns None when neither
    is configured.
    """
    if key_file is None and compress_threshold is None:
        return None
    codecs: list[PayloadCodec] = [CompressionCodec(compress_threshold)]
    if key_file is not None:
        codecs.append(read_key_file(key_file))
    return CodecChain(codecs)


def read_key_file(path: str | os.PathLike[str]) -> EncryptionCodec:
    """An :class:`EncryptionCodec` from a key file (see :func:`load_codec`)."""
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as exc:
        raise InvalidArgumentError(f"cannot read key file {str(path)!r}: {exc.strerror}") from None
    except ValueError as exc:
        raise InvalidArgumentError(f"key file {str(path)!r} is not JSON: {exc}") from None
    keys = doc.get("keys") if isinstance(doc, dict) else None
    current = doc.get("current") if isinstance(doc, dict) else None
    if not isinstance(keys, dict) or not keys or not isinstance(current, str):
        raise InvalidArgumentError(
            f'key file {str(path)!r} must be {{"current": "<id>", "keys": '
            '{"<id>": "<base64 key>", ...}}'
        )
    if current not in keys:
        raise InvalidArgumentError(
            f"key file {str(path)!r}: current key {current!r} is not among its keys "
            f"({', '.join(map(repr, keys))})"
        )
    old = {kid: value for kid, value in keys.items() if kid != current}
    return EncryptionCodec(keys[current], current, old)


def new_key() -> str:
    """A fresh random 256-bit key, base64 (for a key file)."""
    return base64.b64encode(os.urandom(32)).decode()


__all__ = [
    "CodecChain",
    "CompressionCodec",
    "Encoded",
    "EncryptionCodec",
    "MARKER",
    "PayloadCodec",
    "PayloadCodecError",
    "TEXT_PREFIX",
    "as_chain",
    "load_codec",
    "new_key",
    "read_key_file",
]
