"""Avro on the wire: the schemas in ``schemas/*.avsc``, single-object encoded.

Every message is ``C3 01`` + the 8-byte CRC-64-AVRO fingerprint of its
writer schema (little-endian) + the Avro body (the Avro single-object
encoding). A reader resolves the writer schema by fingerprint, so a message
written with an older or newer compatible schema still decodes, and bytes
that are not one of our messages are rejected with a reason instead of
decoding to garbage.

The fingerprint is taken over the specification's Parsing Canonical Form (a
logical type such as ``{"type": "long", "logicalType": "timestamp-micros"}``
becomes ``"long"``), as Java's ``SchemaNormalization``, fastavro and avsc
compute it, so a writer in another language frames messages we read.
``docs/wire.md`` is the whole contract.

Release 0.1.0 wrote a different fingerprint for every schema with a logical
type (the ``avro`` package's canonical form keeps ``{"type":"long"}``).
Readers accept those values as aliases of the same schema until
:data:`LEGACY_FINGERPRINTS_UNTIL`, so messages already in the topics, and
writers not yet upgraded, still decode.
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
from fastavro.schema import (
    SchemaParseException,
    UnknownType,
    parse_schema,
    to_parsing_canonical_form,
)
from fastavro.schema import fingerprint as _fastavro_fingerprint

MAGIC = b"\xc3\x01"
SCHEMA_NAMES = (
    "command",
    "history_event",
    "history_batch",
    "activity_task",
    "reply",
    "dead_letter",
)
ENV_SCHEMAS = "STREAMFLOW_SCHEMAS"
PREVIOUS_DIR = "previous"  # earlier schema versions, still read
_NAMESPACE = "streamflow.v1"
FINGERPRINT_ALGORITHM = "CRC-64-AVRO"
LEGACY_FINGERPRINTS_UNTIL = "0.2.0"
"""The first release whose readers no longer accept the 0.1.0 fingerprints."""


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


def canonical_form(raw: Any) -> str:
    """The Parsing Canonical Form of a schema, as the Avro specification defines it.

    Raises:
        WireError: ``raw`` is not a valid Avro schema (the reason says why).
    """
    try:
        form: str = to_parsing_canonical_form(raw)
    except (SchemaParseException, UnknownType, ValueError, TypeError, KeyError) as exc:
        raise WireError(f"not a valid Avro schema: {type(exc).__name__}: {exc}") from exc
    return form


def fingerprint(raw: Any) -> bytes:
    """The CRC-64-AVRO of ``raw``'s Parsing Canonical Form, little-endian (as framed)."""
    # fastavro renders the 64-bit value as the hex of its little-endian bytes
    return bytes.fromhex(_fastavro_fingerprint(canonical_form(raw), FINGERPRINT_ALGORITHM))


def legacy_fingerprint(raw: Mapping[str, Any]) -> bytes:
    """The fingerprint release 0.1.0 framed ``raw`` with; read until 0.2.0.

    It came from the ``avro`` package's canonical form, which renders a
    logical type as ``{"type":"long"}`` where the specification says
    ``"long"``; for a schema without logical types it equals :func:`fingerprint`.
    """
    parsed = avro.schema.parse(json.dumps(raw))
    return bytes(parsed.fingerprint(FINGERPRINT_ALGORITHM))


class Codec:
    """Encodes and decodes one message type; accepts any known writer schema."""

    def __init__(self, name: str, raw: Mapping[str, Any]) -> None:
        self.name = name
        self.schema = parse_schema(dict(raw))
        self.fingerprint = fingerprint(raw)
        # each accepted 0.1.0 fingerprint -> the fingerprint it stands for
        self.legacy_fingerprints: dict[bytes, bytes] = {}
        self._writers: dict[bytes, Any] = {}
        self._register(raw, self.schema)

    def add_writer(self, raw: Mapping[str, Any]) -> None:
        """Also accept messages written with ``raw`` (an older or newer version)."""
        self._register(raw, parse_schema(dict(raw)))

    def _register(self, raw: Mapping[str, Any], schema: Any) -> None:
        current = fingerprint(raw)
        self._writers[current] = schema
        legacy = legacy_fingerprint(raw)
        if legacy != current and legacy not in self._writers:
            self._writers[legacy] = schema
            self.legacy_fingerprints[legacy] = current

    def wrote(self, data: bytes) -> bool:
        """Whether ``data`` is framed with a fingerprint of this codec's schemas."""
        return data[:2] == MAGIC and data[2:10] in self._writers

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
                f"(written with a schema this reader does not know; the current {self.name} "
                f"schema's is {self.fingerprint.hex()}: the CRC-64-AVRO of its Parsing "
                "Canonical Form, little-endian, see docs/wire.md)"
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
