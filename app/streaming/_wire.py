"""Avro on the wire: the schemas in ``schemas/*.avsc``, single-object encoded.

Every message is ``C3 01`` + the 8-byte CRC-64-AVRO fingerprint of its
writer schema (little-endian) + the Avro body (the Avro single-object
encoding). A reader resolves the writer schema by fingerprint, so a message
written with an older or newer compatible schema still decodes, and bytes
that are not one of our messages are rejected with a reason instead of
decoding to garbage.
"""

from __future__ import annotations

import io
import json
import os
import struct
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import avro.schema
import fastavro
from fastavro.schema import parse_schema

MAGIC = b"\xc3\x01"
SCHEMA_NAMES = ("command", "history_event", "activity_task", "reply", "dead_letter")
ENV_SCHEMAS = "STREAMFLOW_SCHEMAS"
PREVIOUS_DIR = "previous"  # earlier schema versions, still read
_NAMESPACE = "streamflow.v1"


class WireError(ValueError):
    """Bytes that are not a valid message of the expected schema; says why."""


def schemas_dir() -> Path:
    """Where the ``.avsc`` files are: ``$STREAMFLOW_SCHEMAS`` or the repo's ``schemas/``."""
    configured = os.environ.get(ENV_SCHEMAS)
    return Path(configured) if configured else Path(__file__).resolve().parents[2] / "schemas"


def load_raw(name: str, directory: Path | None = None) -> dict[str, Any]:
    """The JSON of ``schemas/<name>.avsc``."""
    path = (directory or schemas_dir()) / f"{name}.avsc"
    try:
        raw: dict[str, Any] = json.loads(path.read_text())
    except OSError as exc:
        raise WireError(f"cannot read Avro schema {path}: {exc}") from exc
    return raw


def _fingerprint(raw: Mapping[str, Any]) -> bytes:
    # The reference implementation's Parsing Canonical Form (it drops logicalType, as
    # Java's does) so that fingerprints match other languages' writers; it returns the
    # CRC-64-AVRO value little-endian, as the single-object encoding puts it on the wire.
    parsed = avro.schema.parse(json.dumps(raw))
    return bytes(parsed.fingerprint("CRC-64-AVRO"))


class Codec:
    """Encodes and decodes one message type; accepts any known writer schema."""

    def __init__(self, name: str, raw: Mapping[str, Any]) -> None:
        self.name = name
        self.schema = parse_schema(dict(raw))
        self.fingerprint = _fingerprint(raw)
        self._writers: dict[bytes, Any] = {self.fingerprint: self.schema}

    def add_writer(self, raw: Mapping[str, Any]) -> None:
        """Also accept messages written with ``raw`` (an older or newer version)."""
        schema = parse_schema(dict(raw))
        self._writers[_fingerprint(raw)] = schema

    def encode(self, record: Mapping[str, Any]) -> bytes:
        out = io.BytesIO()
        out.write(MAGIC)
        out.write(self.fingerprint)
        try:
            fastavro.schemaless_writer(out, self.schema, dict(record))
        except (ValueError, TypeError) as exc:
            raise WireError(f"cannot encode {self.name}: {exc}") from exc
        return out.getvalue()

    def decode(self, data: bytes | None) -> dict[str, Any]:
        if data is None:
            raise WireError(f"empty message where a {self.name} was expected")
        if len(data) < 10 or data[:2] != MAGIC:
            raise WireError(
                f"not an Avro single-object message (expected a {self.name} starting "
                f"with C3 01 and a schema fingerprint, got {data[:10]!r})"
            )
        writer = self._writers.get(data[2:10])
        if writer is None:
            raise WireError(
                f"unknown schema fingerprint {data[2:10].hex()} for a {self.name} "
                "(written with a schema this reader does not know)"
            )
        buf = io.BytesIO(data[10:])
        try:
            record = fastavro.schemaless_reader(buf, writer, self.schema)
        except Exception as exc:  # fastavro raises many kinds on corrupt bodies
            raise WireError(f"corrupt {self.name} body: {type(exc).__name__}: {exc}") from exc
        if not isinstance(record, dict):
            raise WireError(f"a {self.name} must decode to a record, got {type(record).__name__}")
        if buf.tell() != len(data) - 10:
            raise WireError(f"{len(data) - 10 - buf.tell()} trailing bytes after a {self.name}")
        return record


def load_previous(name: str, directory: Path | None = None) -> list[dict[str, Any]]:
    """Earlier versions of ``name``'s schema, oldest first: ``previous/<name>.<n>.avsc``.

    When a schema changes, its last version is kept there, so that readers
    still decode what writers on the older schema publish (a rolling upgrade,
    a publisher in another language, messages still in a topic).
    """
    folder = (directory or schemas_dir()) / PREVIOUS_DIR
    versions: list[tuple[int, Path]] = []
    for path in folder.glob(f"{name}.*.avsc"):
        number = path.name[len(name) + 1 : -len(".avsc")]
        if not number.isdigit():
            raise WireError(f"{path}: an earlier schema version must be named {name}.<number>.avsc")
        versions.append((int(number), path))
    raws = []
    for _, path in sorted(versions):
        try:
            raws.append(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            raise WireError(f"cannot read Avro schema {path}: {exc}") from exc
    return raws


def build_codec(name: str, directory: Path | None = None) -> Codec:
    """A codec of ``<directory>/<name>.avsc`` that also reads its earlier versions."""
    if name not in SCHEMA_NAMES:
        raise WireError(f"no schema named {name!r} (known: {', '.join(SCHEMA_NAMES)})")
    built = Codec(name, load_raw(name, directory))
    for raw in load_previous(name, directory):
        built.add_writer(raw)
    return built


@cache
def codec(name: str) -> Codec:
    """The codec of ``schemas/<name>.avsc`` (and of its versions in ``schemas/previous/``)."""
    return build_codec(name)


def fingerprint_of(name: str) -> bytes:
    """The 8-byte fingerprint that prefixes every ``name`` message."""
    return codec(name).fingerprint


def frame(fp: bytes, body: bytes) -> bytes:
    """A single-object message from a fingerprint and an Avro body (for other writers)."""
    return MAGIC + fp + body


def unpack_fingerprint(data: bytes) -> int:
    """The fingerprint of a message as an integer (for logs)."""
    return int(struct.unpack("<Q", data[2:10])[0])
