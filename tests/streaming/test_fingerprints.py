"""Schema fingerprints: the specification's, the Avro project's test vectors, the 0.1.0 aliases.

``data/avro-schema-tests.txt`` is ``share/test/data/schema-tests.txt`` of
apache/avro (Apache-2.0): schemas with their Parsing Canonical Form and the
CRC-64-AVRO fingerprint Java computes. Every vector goes through the engine's
``canonical_form`` and ``fingerprint``. The fingerprints release 0.1.0 wrote
(from the ``avro`` package's canonical form, which keeps ``{"type":"long"}``
for a logical type) must still be read, for the current schemas and for the
versions kept in ``schemas/previous/``, down to a worker applying commands
framed that way.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from app.streaming import KafkaExecutor, StreamingWorker
from app.streaming._messages import JSON, decode_command, decode_history
from app.streaming._wire import (
    LEGACY_FINGERPRINTS_UNTIL,
    PREVIOUS_DIR,
    SCHEMA_NAMES,
    Codec,
    WireError,
    build_codec,
    canonical_form,
    codec,
    fingerprint,
    frame,
    legacy_fingerprint,
    load_previous,
    load_raw,
)
from app.streaming.admin import ensure_topics
from app.streaming.settings import test_settings
from app.workflow import Signal
from tests.conformance import workflows as suite
from tests.streaming.test_avro import Schema, as_read_from, copy_schemas, samples, without_field

VECTORS = Path(__file__).parent / "data" / "avro-schema-tests.txt"
VECTOR_COUNT = 34  # // 000 to // 033
DEADLINE = 30.0

# The CRC-64-AVRO of each schema's Parsing Canonical Form (little-endian hex), as
# Java's SchemaNormalization, fastavro and avsc compute it. A schema change moves
# these: keep the old version in schemas/previous/ first, then update the table.
CURRENT = {
    "command": "2d82658cc7a29c94",
    "history_event": "5df984773ca4b261",
    "history_batch": "614c171a66aac1e2",
    "activity_task": "44ca8cc5e7088bf2",
    "reply": "b0c3bf58c4206980",
    "dead_letter": "4bcf9ce17d5a3d95",
}
# What release 0.1.0 framed them with; `reply` has no logical type, so no alias.
# history_event (change_id, then the child workflow fields) and command (parent,
# child_run_id) have changed since: 0.1.0 wrote the version kept as
# previous/<name>.1.avsc, whose values are in KEPT; LEGACY_OF_CURRENT has the alias
# the same computation gives the current version.
LEGACY = {
    "command": "8bff0fd3f9ca9c9c",
    "history_event": "f81f2b5ee2460bc1",
    "activity_task": "30ee3f5ea70be197",
    "dead_letter": "ae85399c859124b7",
}
# (fingerprint, 0.1.0 alias) of each version kept in schemas/previous/.
KEPT = {
    "command": [
        ("2cf37faf1242693b", "8bff0fd3f9ca9c9c"),
        ("a966729d92a14a36", "5b98d1bf53a36cf3"),
    ],
    "history_event": [
        ("0a4013083edbcb9a", "f81f2b5ee2460bc1"),
        ("9e04b456723fcb9b", "adf20ef5649c1dc3"),
        ("ac816a35b9457a53", "ee920bf46828cd9d"),
    ],
    "activity_task": [("ba4aad980d4bb6fc", "30ee3f5ea70be197")],
}
# The 0.1.0-style fingerprint of each current schema, where it differs from LEGACY
# (the schema changed after 0.1.0; LEGACY is then the alias of its kept version 1).
LEGACY_OF_CURRENT = LEGACY | {
    "command": "a3ca529264ac9bf8",
    "activity_task": "27943ffc10b0db1a",
    "history_event": "86ac2286c369499c",
}


def written_by_0_1_0(name: str) -> Schema:
    """The schema 0.1.0 wrote ``name`` with: its oldest kept version, or the current one."""
    kept = load_previous(name)
    return kept[0] if kept else load_raw(name)


# -- the Avro project's vectors ------------------------------------------------------
@dataclass(frozen=True)
class Vector:
    number: str
    input: str
    canonical: str
    fingerprint: int | None  # signed 64-bit, as Java prints a long


def read_vectors(path: Path = VECTORS) -> list[Vector]:
    """The ``// NNN`` entries: ``<<INPUT`` (one line or a block to ``INPUT``), ``<<canonical``,
    ``<<fingerprint`` (absent where an earlier entry has the same canonical form)."""
    lines = path.read_text().splitlines()
    vectors: list[Vector] = []
    fields: dict[str, str] = {}

    def flush() -> None:
        if fields:
            fp = fields.get("fingerprint")
            vectors.append(
                Vector(
                    fields["number"],
                    fields["input"],
                    fields["canonical"],
                    None if fp is None else int(fp),
                )
            )
            fields.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("// ") and line[3:].isdigit():
            flush()
            fields["number"] = line[3:]
        elif line.startswith("<<INPUT"):
            rest = line[len("<<INPUT") :].strip()
            if not rest:  # a block, up to a line reading INPUT
                end = lines.index("INPUT", i + 1)
                rest, i = "\n".join(lines[i + 1 : end]), end
            fields["input"] = rest
        elif line.startswith("<<canonical "):
            fields["canonical"] = line[len("<<canonical ") :]
        elif line.startswith("<<fingerprint "):
            fields["fingerprint"] = line[len("<<fingerprint ") :]
        i += 1
    flush()
    return vectors


def java_long_to_wire(value: int) -> bytes:
    """A fingerprint as Java prints it (a signed long) to its 8 little-endian wire bytes."""
    return (value % 2**64).to_bytes(8, "little")


# Vector 026 gives field f1 the default "true" (a string) where the type is boolean.
# The specification wants a JSON boolean, and fastavro refuses the schema (Java's
# parser does not check defaults). A default is not part of the canonical form, so
# the vector is also checked with the default written as the spec wants it.
INVALID_DEFAULT = {"026": ('"default":"true"', '"default":true')}


def test_the_vectors_file_names_its_origin() -> None:
    header = VECTORS.read_text().splitlines()[0]
    assert "apache/avro" in header and "schema-tests.txt" in header and "Apache-2.0" in header


def test_every_vector_is_read() -> None:
    vectors = read_vectors()
    assert [v.number for v in vectors] == [f"{n:03d}" for n in range(VECTOR_COUNT)]
    assert all(v.input and v.canonical for v in vectors)


@pytest.mark.parametrize("vector", read_vectors(), ids=lambda v: v.number)
def test_avro_project_vector(vector: Vector) -> None:
    java = {v.canonical: v.fingerprint for v in read_vectors() if v.fingerprint is not None}
    expected = vector.fingerprint if vector.fingerprint is not None else java[vector.canonical]
    text = vector.input
    if vector.number in INVALID_DEFAULT:
        with pytest.raises(WireError, match=r"not a valid Avro schema.*[Dd]efault"):
            canonical_form(json.loads(text))
        wrong, right = INVALID_DEFAULT[vector.number]
        assert wrong in text.replace(" ", "")
        text = text.replace(" ", "").replace(wrong, right)
    schema: Any = json.loads(text)
    assert canonical_form(schema) == vector.canonical
    assert fingerprint(schema) == java_long_to_wire(expected)


# -- the engine's schemas ------------------------------------------------------------
@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_current_fingerprints(name: str) -> None:
    assert codec(name).fingerprint.hex() == CURRENT[name]
    assert canonical_form(load_raw(name)).count("logicalType") == 0


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_legacy_fingerprints_are_accepted_aliases(name: str) -> None:
    assert legacy_fingerprint(load_raw(name)).hex() == LEGACY_OF_CURRENT.get(name, CURRENT[name])
    assert legacy_fingerprint(written_by_0_1_0(name)).hex() == LEGACY.get(name, CURRENT[name])
    expected = (
        {bytes.fromhex(LEGACY_OF_CURRENT[name]): codec(name).fingerprint} if name in LEGACY else {}
    )
    for older in load_previous(name):
        if legacy_fingerprint(older) != fingerprint(older):
            expected[legacy_fingerprint(older)] = fingerprint(older)
    assert codec(name).legacy_fingerprints == expected


@pytest.mark.parametrize("name", sorted(LEGACY))
def test_a_message_framed_with_the_legacy_fingerprint_decodes(name: str) -> None:
    writer = written_by_0_1_0(name)
    for record in samples(name):
        body = Codec(name, writer).encode(record)[10:]
        old = frame(bytes.fromhex(LEGACY[name]), body)
        assert codec(name).decode(old) == as_read_from(name, writer, record)


def test_legacy_command_and_history_event_decode_to_the_engine_values() -> None:
    json_type = {"content_type": "application/json"}
    record = samples("command")[1] | json_type | {"kind": "signal", "name": "go", "payload": b"7"}
    v1 = Codec("command", written_by_0_1_0("command"))
    old = frame(bytes.fromhex(LEGACY["command"]), v1.encode(record)[10:])
    cmd = decode_command(old, record["workflow_id"].encode())
    assert (cmd.kind, cmd.name, cmd.payload) == ("signal", "go", 7)

    event = samples("history_event")[1] | json_type | {"type": "workflow_completed"}
    event["payload"] = b"[1]"
    v1 = Codec("history_event", written_by_0_1_0("history_event"))
    old = frame(bytes.fromhex(LEGACY["history_event"]), v1.encode(event)[10:])
    assert decode_history(old)[3].result == [1]


def test_an_unknown_fingerprint_names_the_expected_one() -> None:
    message = frame(bytes(8), codec("command").encode(samples("command")[1])[10:])
    with pytest.raises(WireError, match=f"unknown schema fingerprint .*{CURRENT['command']}"):
        codec("command").decode(message)


def test_previous_versions_resolve_by_both_fingerprints(tmp_path: Path) -> None:
    directory = copy_schemas(tmp_path / "schemas")
    (directory / PREVIOUS_DIR).mkdir()
    older = without_field(load_raw("command"), "route")
    (directory / PREVIOUS_DIR / "command.1.avsc").write_text(json.dumps(older))
    record = {k: v for k, v in samples("command")[0].items() if k != "route"}
    body = Codec("command", older).encode(record)[10:]
    reader = build_codec("command", directory)
    assert fingerprint(older) != legacy_fingerprint(older) != reader.fingerprint
    for fp in (fingerprint(older), legacy_fingerprint(older)):
        assert reader.decode(frame(fp, body)) == {**record, "route": None}
    assert reader.legacy_fingerprints[legacy_fingerprint(older)] == fingerprint(older)


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_kept_versions_in_the_repository_resolve_by_both_fingerprints(name: str) -> None:
    kept = [(fingerprint(o).hex(), legacy_fingerprint(o).hex()) for o in load_previous(name)]
    assert kept == KEPT.get(name, [])
    for older in load_previous(name):
        record = samples(name)[0]
        body = Codec(name, older).encode(record)[10:]
        for fp in (fingerprint(older), legacy_fingerprint(older)):
            assert codec(name).decode(frame(fp, body)) == as_read_from(name, older, record)


async def test_a_worker_applies_commands_framed_with_the_legacy_fingerprint(
    kafka_bootstrap: str,
) -> None:
    settings = test_settings(kafka_bootstrap, app_id=f"legacy-{uuid.uuid4().hex[:12]}")
    await ensure_topics(settings)
    wid = f"legacy-{uuid.uuid4().hex[:8]}"

    def legacy(**fields: Any) -> bytes:
        """A command as a 0.1.0 writer framed it."""
        v1 = written_by_0_1_0("command")
        record = {f["name"]: f.get("default") for f in v1["fields"]}
        record |= {
            "command_id": uuid.uuid4().hex,
            "workflow_id": wid,
            "issued_at": datetime.now(UTC),
            "content_type": JSON,
            **fields,
        }
        return frame(bytes.fromhex(LEGACY["command"]), Codec("command", v1).encode(record)[10:])

    worker = StreamingWorker(settings, suite.workflows, suite.activities)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", linger_ms=0)
    await worker.start()
    try:
        await producer.start()
        for value in (
            legacy(kind="start", name="signals_in_order", payload=b"2"),
            legacy(kind="signal", name="go"),
            legacy(kind="signal", name="item", payload=b'"old"'),
        ):
            await asyncio.wait_for(
                producer.send_and_wait(settings.topology.commands, value, key=wid.encode()),
                DEADLINE,
            )
        async with KafkaExecutor(settings=settings) as ex:
            # on the same partition after the legacy ones: not_found if they were dropped
            await ex.signal(wid, Signal("item", "new"))
            assert await ex.get_handle(wid).result(timeout=DEADLINE) == ["old", "new"]
    finally:
        await producer.stop()
        await worker.stop()


def _release(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(".")[:3] if part.isdigit())


def test_legacy_fingerprints_are_dropped_in_their_announced_release() -> None:
    installed = version("streamflow-engine")
    assert _release(installed) < _release(LEGACY_FINGERPRINTS_UNTIL), (
        f"release {installed} reached {LEGACY_FINGERPRINTS_UNTIL}: remove the 0.1.0 "
        "fingerprint aliases (legacy_fingerprint in app/streaming/_wire.py, docs/wire.md)"
    )
