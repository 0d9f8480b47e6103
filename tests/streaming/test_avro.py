"""Avro on the wire: every schema in ``schemas/`` against two Avro implementations.

Records are written by the engine's codecs (fastavro) and read back by them
and by the reference ``avro`` package, and the other way round; the framing's
fingerprint is checked against a CRC-64-AVRO computed here from the spec
(``test_fingerprints.py`` checks the canonical form against the Avro
project's own test vectors). Evolution is checked twice: the
reference compatibility checker must agree, and messages written by an
evolved (or an older) schema must really decode. Bytes that are not a
message must raise ``WireError`` with a reason.
"""

from __future__ import annotations

import copy
import io
import json
import math
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import avro.io
import avro.schema
import pytest
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.streaming._machine import Command, CommandKind, Reply, Task
from app.streaming._messages import (
    decode_command,
    decode_dead_letter,
    decode_history,
    decode_history_records,
    decode_reply,
    decode_task,
    encode_command,
    encode_dead_letter,
    encode_history,
    encode_history_records,
    encode_reply,
    encode_task,
    history_types,
    retried_ids,
)
from app.streaming._wire import (
    MAGIC,
    PREVIOUS_DIR,
    SCHEMA_NAMES,
    Codec,
    WireError,
    build_codec,
    canonical_form,
    codec,
    fingerprint,
    frame,
    load_previous,
    load_raw,
    schemas_dir,
)
from app.workflow._types import EventType, FailureInfo, HistoryEvent

Schema = dict[str, Any]
NAMESPACE = "streamflow.v1"
MOMENT = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
FAILURE_DEPTH = 3
"""Failure records nest their cause this deep in the 'full' samples."""


# -- reading the schemas ------------------------------------------------------------
def fullname(name: str, namespace: str) -> str:
    return name if "." in name else f"{namespace}.{name}"


def named_types(
    schema: Any, namespace: str = NAMESPACE, out: dict[str, Schema] | None = None
) -> dict[str, Schema]:
    """Every named record of ``schema`` by its full name (to resolve references)."""
    out = {} if out is None else out
    if isinstance(schema, list):
        for branch in schema:
            named_types(branch, namespace, out)
    elif isinstance(schema, dict) and schema.get("type") == "record":
        namespace = schema.get("namespace", namespace)
        out[fullname(schema["name"], namespace)] = schema
        for field in schema["fields"]:
            named_types(field["type"], namespace, out)
    elif isinstance(schema, dict) and schema.get("type") == "array":
        named_types(schema["items"], namespace, out)
    return out


PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def resolve(schema: Any, names: dict[str, Schema]) -> Any:
    if isinstance(schema, str) and schema not in PRIMITIVES:
        return names[fullname(schema, NAMESPACE)]
    return schema


# -- deterministic samples ----------------------------------------------------------
def sample(schema: Any, names: dict[str, Schema], full: bool, label: str, depth: int = 0) -> Any:
    """A value of ``schema``: every optional field set (``full``) or left null."""
    schema = resolve(schema, names)
    if isinstance(schema, list):
        if not full and "null" in schema:
            return None
        branches = [b for b in schema if b != "null"]
        nested = any(isinstance(resolve(b, names), dict) for b in branches)
        if nested and depth >= FAILURE_DEPTH:
            return None
        return sample(branches[0], names, full, label, depth + 1 if nested else depth)
    if isinstance(schema, dict):
        if schema.get("logicalType") == "timestamp-micros":
            return MOMENT
        if schema["type"] == "record":
            return {
                f["name"]: sample(f["type"], names, full, f"{label}.{f['name']}", depth)
                for f in schema["fields"]
            }
        if schema["type"] == "array":  # two items, or one with its optional fields null
            items = schema["items"]
            return [sample(items, names, full, f"{label}[{i}]", depth) for i in range(1 + full)]
        return sample(schema["type"], names, full, label, depth)
    values: dict[str, Any] = {
        "null": None,
        "boolean": True,
        "int": -(2**31),
        "long": 2**63 - 1,
        "double": -1.25e-300,
        "string": f"{label} ✓ é 𝄞",
        "bytes": b"\x00\xff" + label.encode(),
    }
    return values[schema]


def samples(name: str) -> list[dict[str, Any]]:
    raw = load_raw(name)
    names = named_types(raw)
    return [sample(raw, names, True, name), sample(raw, names, False, name)]


# -- hypothesis strategies from a schema ----------------------------------------------
TEXT = st.text(st.characters(codec="utf-8"), max_size=20)
STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "null": st.none(),
    "boolean": st.booleans(),
    "int": st.integers(-(2**31), 2**31 - 1),
    "long": st.integers(-(2**63), 2**63 - 1),
    "double": st.floats(allow_nan=False),
    "string": TEXT,
    "bytes": st.binary(max_size=40),
}
TIMESTAMPS = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)


def strategy(schema: Any, names: dict[str, Schema], depth: int = 0) -> st.SearchStrategy[Any]:
    schema = resolve(schema, names)
    if isinstance(schema, list):
        if depth >= FAILURE_DEPTH:
            return st.none()
        return st.one_of(*(strategy(b, names, depth + 1) for b in schema))
    if isinstance(schema, dict):
        if schema.get("logicalType") == "timestamp-micros":
            return TIMESTAMPS
        if schema["type"] == "record":
            return st.fixed_dictionaries(
                {f["name"]: strategy(f["type"], names, depth) for f in schema["fields"]}
            )
        if schema["type"] == "array":
            return st.lists(strategy(schema["items"], names, depth), max_size=3)
        return strategy(schema["type"], names, depth)
    return STRATEGIES[schema]


def records(name: str) -> st.SearchStrategy[dict[str, Any]]:
    raw = load_raw(name)
    return strategy(raw, named_types(raw))


# -- the reference implementation -----------------------------------------------------
def ref_schema(raw: Schema) -> avro.schema.Schema:
    return avro.schema.parse(json.dumps(raw))


def ref_read(writer: Schema, message: bytes, reader: Schema | None = None) -> Any:
    """Decode the body of a single-object message with the ``avro`` package."""
    assert message[:2] == MAGIC
    body = io.BytesIO(message[10:])
    datum = avro.io.DatumReader(ref_schema(writer), ref_schema(reader or writer)).read(
        avro.io.BinaryDecoder(body)
    )
    assert body.tell() == len(message) - 10, "the avro package left bytes unread"
    return datum


def ref_body(raw: Schema, record: dict[str, Any]) -> bytes:
    """The Avro body of ``record`` written by the ``avro`` package."""
    body = io.BytesIO()
    avro.io.DatumWriter(ref_schema(raw)).write(record, avro.io.BinaryEncoder(body))
    return body.getvalue()


CRC64_EMPTY = 0xC15D213AA4D7A795


def _crc64_table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (CRC64_EMPTY & -(fp & 1))
        table.append(fp)
    return table


CRC64_TABLE = _crc64_table()


def crc64_avro(data: bytes) -> int:
    """CRC-64-AVRO as the Avro specification defines it."""
    fp = CRC64_EMPTY
    for byte in data:
        fp = (fp >> 8) ^ CRC64_TABLE[(fp ^ byte) & 0xFF]
    return fp


def fresh(name: str, raw: Schema | None = None) -> Codec:
    """A private codec: ``add_writer`` must not leak into the engine's shared codecs."""
    return Codec(name, raw if raw is not None else load_raw(name))


# -- coverage ------------------------------------------------------------------------
def test_every_schema_file_is_covered() -> None:
    on_disk = sorted(p.stem for p in schemas_dir().glob("*.avsc"))
    assert on_disk == sorted(SCHEMA_NAMES)


def test_samples_nest_failure_causes() -> None:
    full = samples("command")[0]
    depth, failure = 0, full["failure"]
    while failure is not None:
        depth, failure = depth + 1, failure["cause"]
    assert depth == FAILURE_DEPTH
    assert all(v is not None for k, v in full.items()), "a full sample leaves a field null"


# -- round trips ---------------------------------------------------------------------
@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_round_trip_through_engine_codec(name: str) -> None:
    for record in samples(name):
        message = codec(name).encode(record)
        assert message[:2] == MAGIC
        assert codec(name).decode(message) == record


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_avro_package_reads_what_fastavro_writes(name: str) -> None:
    raw = load_raw(name)
    for record in samples(name):
        assert ref_read(raw, codec(name).encode(record)) == record


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_engine_codec_reads_what_avro_package_writes(name: str) -> None:
    raw = load_raw(name)
    for record in samples(name):
        # framed with the engine's fingerprint: the framing has its own tests below
        message = frame(codec(name).fingerprint, ref_body(raw, record))
        assert message == codec(name).encode(record), "the two writers disagree byte for byte"
        assert codec(name).decode(message) == record


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_random_records_round_trip_both_implementations(name: str) -> None:
    raw = load_raw(name)

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(records(name))
    def check(record: dict[str, Any]) -> None:
        message = codec(name).encode(record)
        assert codec(name).decode(message) == record
        assert ref_read(raw, message) == record
        assert codec(name).decode(frame(codec(name).fingerprint, ref_body(raw, record))) == record

    check()


# -- fingerprints --------------------------------------------------------------------
def test_crc64_matches_the_spec_test_vector() -> None:
    # the Avro spec's reference value for the canonical form of "null"
    assert crc64_avro(b'"null"') == 7195948357588979594


def spec_fingerprint(raw: Schema) -> bytes:
    """CRC-64-AVRO (computed here) of the Parsing Canonical Form, little-endian bytes."""
    return crc64_avro(canonical_form(raw).encode()).to_bytes(8, "little")


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_fingerprint_is_the_spec_crc64_little_endian(name: str) -> None:
    assert fingerprint(load_raw(name)) == spec_fingerprint(load_raw(name))


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_framing_carries_the_spec_fingerprint(name: str) -> None:
    raw = load_raw(name)
    message = codec(name).encode(samples(name)[1])
    assert message[2:10] == spec_fingerprint(raw)
    # a message framed by another single-object writer decodes
    spec_framed = frame(spec_fingerprint(raw), ref_body(raw, samples(name)[1]))
    assert codec(name).decode(spec_framed) == samples(name)[1]


def test_fingerprints_differ_between_schemas() -> None:
    fingerprints = {codec(name).fingerprint for name in SCHEMA_NAMES}
    assert len(fingerprints) == len(SCHEMA_NAMES)


# -- evolution -----------------------------------------------------------------------
def evolved(raw: Schema) -> Schema:
    """``raw`` plus two fields a newer writer might add: both with defaults."""
    new = copy.deepcopy(raw)
    new["fields"] += [
        {"name": "added_note", "type": ["null", "string"], "default": None},
        {"name": "added_level", "type": "int", "default": 7},
    ]
    return new


def compatible(reader: Schema, writer: Schema) -> bool:
    result = ReaderWriterCompatibilityChecker().get_compatibility(
        ref_schema(reader), ref_schema(writer)
    )
    return result.compatibility is SchemaCompatibilityType.compatible


def required_field(raw: Schema, avro_type: str) -> str:
    return next(f["name"] for f in raw["fields"] if f["type"] == avro_type and "default" not in f)


# schemas whose record has a required string of its own (a batch's are in its items)
WITH_REQUIRED_STRING = [
    n
    for n in SCHEMA_NAMES
    if any(f["type"] == "string" and "default" not in f for f in load_raw(n)["fields"])
]


def without_field(raw: Schema, field: str) -> Schema:
    new = copy.deepcopy(raw)
    new["fields"] = [f for f in new["fields"] if f["name"] != field]
    return new


def as_read_from(name: str, older: Schema, record: dict[str, Any]) -> dict[str, Any]:
    """``record`` written with ``older`` and read with the current schema of ``name``.

    Fields that ``older`` lacks read as their defaults.
    """
    kept = {f["name"] for f in older["fields"]}
    return {
        f["name"]: record[f["name"]] if f["name"] in kept else f.get("default")
        for f in load_raw(name)["fields"]
    }


def with_type(raw: Schema, field: str, avro_type: Any) -> Schema:
    new = copy.deepcopy(raw)
    for f in new["fields"]:
        if f["name"] == field:
            f["type"] = avro_type
    return new


def test_the_compatibility_checker_exists() -> None:
    # the evolution tests lean on it; a renamed API must fail here, not skip
    assert callable(ReaderWriterCompatibilityChecker().get_compatibility)


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_adding_an_optional_field_is_compatible_both_ways(name: str) -> None:
    old, new = load_raw(name), evolved(load_raw(name))
    assert compatible(reader=new, writer=old)
    assert compatible(reader=old, writer=new)


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_old_reader_decodes_messages_of_the_evolved_writer(name: str) -> None:
    old, new = load_raw(name), evolved(load_raw(name))
    record = samples(name)[0]
    message = fresh(name, new).encode({**record, "added_note": "from v2", "added_level": 3})
    reader = fresh(name)
    with pytest.raises(WireError, match="unknown schema fingerprint"):
        reader.decode(message)
    reader.add_writer(new)
    assert reader.decode(message) == record
    assert ref_read(new, message, reader=old) == record


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_evolved_reader_fills_defaults_for_old_messages(name: str) -> None:
    old, new = load_raw(name), evolved(load_raw(name))
    record = samples(name)[0]
    message = codec(name).encode(record)
    reader = fresh(name, new)
    reader.add_writer(old)
    expected = {**record, "added_note": None, "added_level": 7}
    assert reader.decode(message) == expected
    assert ref_read(old, message, reader=new) == expected


def copy_schemas(into: Path) -> Path:
    into.mkdir()
    for name in SCHEMA_NAMES:
        (into / f"{name}.avsc").write_text(json.dumps(load_raw(name)))
    return into


def test_a_codec_reads_the_versions_kept_in_previous(tmp_path: Path) -> None:
    directory = copy_schemas(tmp_path / "schemas")
    older = without_field(load_raw("command"), "route")  # as a writer before `route` was
    record = {k: v for k, v in samples("command")[0].items() if k != "route"}
    message = fresh("command", older).encode(record)
    with pytest.raises(WireError, match="unknown schema fingerprint"):
        build_codec("command", directory).decode(message)
    (directory / PREVIOUS_DIR).mkdir()
    (directory / PREVIOUS_DIR / "command.1.avsc").write_text(json.dumps(older))
    assert load_previous("command", directory) == [older]
    assert build_codec("command", directory).decode(message) == {**record, "route": None}


def test_a_kept_version_must_be_numbered(tmp_path: Path) -> None:
    directory = copy_schemas(tmp_path / "schemas")
    (directory / PREVIOUS_DIR).mkdir()
    (directory / PREVIOUS_DIR / "command.old.avsc").write_text(json.dumps(load_raw("command")))
    with pytest.raises(WireError, match=r"command\.old\.avsc.*command\.<number>\.avsc"):
        build_codec("command", directory)


def test_every_kept_version_and_the_current_schema_read_each_other() -> None:
    assert (schemas_dir() / PREVIOUS_DIR / "README.md").is_file()
    for name in SCHEMA_NAMES:
        current = load_raw(name)
        for older in load_previous(name):
            assert compatible(reader=current, writer=older), name
            assert compatible(reader=older, writer=current), name
            written = fresh(name, older).encode(samples(name)[0])
            assert codec(name).decode(written) == as_read_from(name, older, samples(name)[0])


@pytest.mark.parametrize("name", WITH_REQUIRED_STRING)
def test_removing_a_required_field_is_incompatible(name: str) -> None:
    old = load_raw(name)
    field = required_field(old, "string")
    removed = without_field(old, field)
    # a reader that needs the field cannot read a writer that no longer sends it
    assert not compatible(reader=old, writer=removed)
    reader = fresh(name)
    reader.add_writer(removed)
    record = {k: v for k, v in samples(name)[0].items() if k != field}
    message = fresh(name, removed).encode(record)
    with pytest.raises(WireError, match=f"corrupt {name} body"):
        reader.decode(message)


@pytest.mark.parametrize("name", WITH_REQUIRED_STRING)
def test_changing_a_field_type_is_incompatible(name: str) -> None:
    old = load_raw(name)
    field = required_field(old, "string")
    changed = with_type(old, field, "long")
    assert not compatible(reader=old, writer=changed)
    assert not compatible(reader=changed, writer=old)


def test_removing_an_optional_field_stays_compatible() -> None:
    old = load_raw("command")
    removed = without_field(old, "route")
    assert compatible(reader=old, writer=removed)
    assert compatible(reader=removed, writer=old)


# -- bad bytes -----------------------------------------------------------------------
def other_fingerprint(fingerprint: bytes) -> bytes:
    return next(c.fingerprint for c in map(codec, SCHEMA_NAMES) if c.fingerprint != fingerprint)


BadBytes = Callable[[bytes], bytes | None]
BAD: dict[str, tuple[BadBytes, str]] = {
    "none": (lambda m: None, "empty message"),
    "empty": (lambda m: b"", "not an Avro single-object message"),
    "short": (lambda m: m[:9], "not an Avro single-object message"),
    "wrong magic": (lambda m: b"\xc3\x02" + m[2:], "not an Avro single-object message"),
    "plain JSON": (lambda m: b'{"kind": "start"}', "not an Avro single-object message"),
    "unknown fingerprint": (
        lambda m: m[:2] + bytes(8) + m[10:],
        "unknown schema fingerprint 0000000000000000",
    ),
    "fingerprint of another schema": (
        lambda m: m[:2] + other_fingerprint(m[2:10]) + m[10:],
        "unknown schema fingerprint",
    ),
    "fingerprint one bit off": (
        lambda m: m[:2] + bytes([m[2] ^ 1]) + m[3:],
        "unknown schema fingerprint",
    ),
    "truncated body": (lambda m: m[:-3], "corrupt"),
    "header only": (lambda m: m[:10], "corrupt"),
    "trailing bytes": (lambda m: m + b"\x00\x01", "2 trailing bytes"),
    "string length past the end": (lambda m: m[:10] + b"\x7f" + m[11:], "corrupt"),
    "negative string length": (lambda m: m[:10] + b"\x01" + m[11:], "corrupt"),
}


@pytest.mark.parametrize("name", SCHEMA_NAMES)
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_bytes_raise_wire_error_with_a_reason(name: str, case: str) -> None:
    mangle, reason = BAD[case]
    good = codec(name).encode(samples(name)[0])
    with pytest.raises(WireError, match=reason) as caught:
        codec(name).decode(mangle(good))
    assert name in str(caught.value), "the error does not say what was expected"


@pytest.mark.parametrize(
    "name",
    [n for n in SCHEMA_NAMES if any(isinstance(f["type"], list) for f in load_raw(n)["fields"])],
)
def test_union_branch_out_of_range_is_rejected(name: str) -> None:
    raw = load_raw(name)
    record = samples(name)[1]
    message = codec(name).encode(record)
    # where the first union-typed field starts: the length of the fields before it
    first = next(i for i, f in enumerate(raw["fields"]) if isinstance(f["type"], list))
    head = {**raw, "fields": raw["fields"][:first]}
    start = len(fresh(name, head).encode({f["name"]: record[f["name"]] for f in head["fields"]}))
    assert message[start] == 0, "the sample's first union should be null (branch 0)"
    with pytest.raises(WireError, match="corrupt"):
        codec(name).decode(message[:start] + b"\x0a" + message[start + 1 :])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_never_decode_silently(data: bytes) -> None:
    for name in SCHEMA_NAMES:
        with pytest.raises(WireError):
            codec(name).decode(data)


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_random_damage_to_a_body_is_reported_or_decodes_to_a_record(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(SCHEMA_NAMES))
    message = bytearray(codec(name).encode(samples(name)[0]))
    at = data.draw(st.integers(10, len(message) - 1))
    message[at] = data.draw(st.integers(0, 255))
    try:
        record = codec(name).decode(bytes(message))
    except WireError as exc:
        assert str(exc), "a WireError without a reason"
    else:
        # a flipped byte inside a string or number still decodes: a complete record
        assert set(record) == {f["name"] for f in load_raw(name)["fields"]}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"command_id": 5}, "must be string on field command_id"),
        ({"payload": "text"}, "field payload"),
        ({"command_id": None}, "command_id"),
    ],
)
def test_encoding_a_record_that_does_not_match_raises_wire_error(
    change: dict[str, Any], reason: str
) -> None:
    record = {**samples("reply")[0], **change}
    with pytest.raises(WireError, match=f"cannot encode reply: .*{reason}"):
        codec("reply").encode(record)


def test_unknown_schema_name_lists_the_known_ones() -> None:
    with pytest.raises(WireError, match="known: command"):
        codec("nope")


# -- the engine's records ------------------------------------------------------------
def nested_failure() -> FailureInfo:
    root = FailureInfo(type="builtins.OSError", message="disk full", stack="line 3")
    middle = FailureInfo(
        type="builtins.ValueError", message="bad input", non_retryable=True, cause=root
    )
    return FailureInfo(
        type="app.workflow.ActivityError",
        message="activity 'charge' failed",
        activity_name="charge",
        attempts=3,
        timeout=2.5,
        stack="Traceback ...",
        cause=middle,
    )


def test_command_round_trip_with_every_field() -> None:
    cmd = Command(
        command_id="c-1",
        kind=CommandKind.ACTIVITY_RESULT,
        workflow_id="order-7",
        issued_at=MOMENT,
        name="charge",
        payload={"total": 12.5, "lines": ["a", "é"], "none": None},
        sender_id="billing",
        reply_to="client-1",
        timeout_seconds=30.0,
        run_id="run-1",
        step=4,
        attempt=2,
        duration=0.125,
        failure=nested_failure(),
        route=3,
    )
    assert decode_command(encode_command(cmd), b"order-7") == cmd


def test_command_round_trip_with_only_required_fields() -> None:
    cmd = Command(command_id="c-2", kind=CommandKind.CANCEL, workflow_id="w", issued_at=MOMENT)
    assert decode_command(encode_command(cmd)) == cmd


EVENTS = [
    HistoryEvent(id=1, type=EventType.WORKFLOW_STARTED, timestamp=MOMENT, input=[1, 2]),
    HistoryEvent(
        id=5,
        type=EventType.ACTIVITY_FAILED,
        timestamp=MOMENT,
        activity_name="charge",
        error="ValueError: bad input",
        duration=0.5,
        step=2,
        attempt=3,
        failure=nested_failure(),
    ),
    HistoryEvent(
        id=6,
        type=EventType.ACTIVITY_COMPLETED,
        timestamp=MOMENT,
        result={"ok": True},
        activity_name="charge",
        step=2,
        attempt=4,
        duration=0.01,
    ),
    HistoryEvent(
        id=7,
        type=EventType.SIGNAL_RECEIVED,
        timestamp=MOMENT,
        signal_name="approve",
        signal_payload={"by": "ana"},
        sender_id="ui",
    ),
    HistoryEvent(id=8, type=EventType.TIMER_FIRED, timestamp=MOMENT, step=3, duration=60.0),
    HistoryEvent(id=9, type=EventType.WORKFLOW_COMPLETED, timestamp=MOMENT, result="done"),
    HistoryEvent(
        id=10,
        type=EventType.WORKFLOW_FAILED,
        timestamp=MOMENT,
        error="boom",
        failure=nested_failure(),
    ),
    HistoryEvent(
        id=11,
        type=EventType.CHILD_WORKFLOW_STARTED,
        timestamp=MOMENT,
        child_workflow_id="order-7-ship",
        child_workflow_type="ship",
        input={"to": "Lisbon"},
        step=4,
        attempt=1,
    ),
    HistoryEvent(
        id=12,
        type=EventType.CHILD_WORKFLOW_COMPLETED,
        timestamp=MOMENT,
        child_workflow_id="order-7-ship",
        result="shipped",
        step=4,
        attempt=1,
    ),
    HistoryEvent(
        id=13,
        type=EventType.CHILD_WORKFLOW_SIGNALED,
        timestamp=MOMENT,
        child_workflow_id="order-7-ship",
        signal_name="hurry",
        signal_payload=True,
        step=5,
    ),
    HistoryEvent(
        id=1,
        type=EventType.WORKFLOW_STARTED,
        timestamp=MOMENT,
        input=3,
        parent_workflow_id="order-6",
        parent_run_id="run-0",
        step=2,
        attempt=1,
    ),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: f"{e.type.value}-{e.id}")
def test_history_event_round_trip(event: HistoryEvent) -> None:
    message = encode_history("order-7", "run-1", "checkout", event)
    assert decode_history(message) == ("order-7", "run-1", "checkout", event)


def test_a_batch_carries_each_event_as_a_history_event_message() -> None:
    events = sorted(EVENTS, key=lambda e: e.id)
    [(value, _)] = encode_history_records("order-7", "run-1", "checkout", events, 1 << 20)
    batch = codec("history_batch").decode(value)
    assert batch["types"] == [e.type.value for e in events]
    assert batch["events"] == [encode_history("order-7", "run-1", "checkout", e) for e in events]


def test_a_batch_reader_decodes_only_the_types_it_wants() -> None:
    events = sorted(EVENTS, key=lambda e: e.id)
    [(value, _)] = encode_history_records("order-7", "run-1", "checkout", events, 1 << 20)
    wanted = {"workflow_started", "activity_failed"}
    assert [e for *_, e in decode_history_records(value, wanted)] == [
        e for e in events if e.type.value in wanted
    ]
    assert decode_history_records(encode_history("w", "r", "t", EVENTS[0]), {"x"}) == []
    # a batch whose types do not match its events is refused, not misread
    broken = codec("history_batch").encode({"types": ["workflow_started"], "events": []})
    with pytest.raises(WireError, match="1 types for 0 events"):
        decode_history_records(broken)
    # an item must be a HistoryEvent message (not, say, another batch)
    nested = codec("history_batch").encode({"types": ["x"], "events": [value]})
    with pytest.raises(WireError, match="unknown schema fingerprint"):
        decode_history_records(nested)


def test_history_records_round_trip_in_order_with_their_headers() -> None:
    events = sorted(EVENTS, key=lambda e: e.id)
    failed = {e.id for e in events if e.type is EventType.ACTIVITY_FAILED}
    [(value, headers)] = encode_history_records(
        "order-7", "run-1", "checkout", events, 1 << 20, failed
    )
    assert codec("history_batch").wrote(value)
    decoded = decode_history_records(value)
    assert decoded == [("order-7", "run-1", "checkout", e) for e in events]
    assert history_types(headers) == [e.type.value for e in events]
    assert retried_ids(headers) == failed != set()


def test_one_event_is_a_history_event_record_and_zero_bytes_means_one_per_event() -> None:
    [(value, headers)] = encode_history_records("w", "r", "t", EVENTS[:1], 1 << 20)
    assert value == encode_history("w", "r", "t", EVENTS[0])  # readable by older readers
    assert headers == [("type", EVENTS[0].type.value.encode())]
    assert retried_ids(headers) == set()
    each = encode_history_records("w", "r", "t", EVENTS, 0, {EVENTS[1].id})
    assert [decode_history_records(value)[0][3] for value, _ in each] == EVENTS
    assert [history_types(h) for _, h in each] == [[e.type.value] for e in EVENTS]
    # a single event retried carries `retry: 1`: every event of its record is
    assert [retried_ids(h) for _, h in each][1] is None
    assert history_types([]) is None  # a record written before the header


def test_a_batch_stops_at_its_byte_budget() -> None:
    big = "x" * 3000
    events = [
        HistoryEvent(id=i, type=EventType.ACTIVITY_COMPLETED, timestamp=MOMENT, result=big)
        for i in range(1, 11)
    ]
    each = len(encode_history("w", "r", "t", events[0]))
    records = encode_history_records("w", "r", "t", events, 3 * each + 10)
    assert [len(history_types(h) or []) for _, h in records] == [3, 3, 3, 1]
    read = [e for value, _ in records for _, _, _, e in decode_history_records(value)]
    assert read == events
    # an event over the budget on its own still goes, alone
    alone = encode_history_records("w", "r", "t", events[:3], 100)
    assert [len(decode_history_records(value)) for value, _ in alone] == [1, 1, 1]
    assert encode_history_records("w", "r", "t", [], 100) == []


def test_activity_task_round_trip() -> None:
    for timeout in (None, 1.5):
        task = Task("order-7/2/1", "order-7", "run-1", "charge", 2, 1, {"amount": 3}, timeout)
        assert decode_task(encode_task(task, MOMENT)) == task


def test_reply_round_trip() -> None:
    for reply in (
        Reply(ok=True, run_id="run-1", payload=[1, {"a": None}]),
        Reply(ok=False, error_type="not_found", error="no such workflow"),
    ):
        assert decode_reply(encode_reply("c-1", "client-1", "w", reply)) == (
            "c-1",
            "client-1",
            reply,
        )


def test_dead_letter_round_trip() -> None:
    for original in (b"\x00\xffbad", None):
        record = decode_dead_letter(encode_dead_letter("why", "t.commands", 3, 2**40, original))
        assert record["reason"] == "why"
        assert (record["source_topic"], record["source_partition"]) == ("t.commands", 3)
        assert (record["source_offset"], record["original"]) == (2**40, original)
        assert abs((datetime.now(UTC) - record["failed_at"]).total_seconds()) < 60


def test_doubles_keep_every_bit() -> None:
    for value in (math.inf, -math.inf, 5e-324, 1.7976931348623157e308, -0.0):
        record = {**samples("reply")[1], "payload": None}
        task = {**samples("activity_task")[1], "timeout_seconds": value}
        assert codec("reply").decode(codec("reply").encode(record)) == record
        decoded = codec("activity_task").decode(codec("activity_task").encode(task))
        assert math.copysign(1, decoded["timeout_seconds"]) == math.copysign(1, value)
        assert decoded["timeout_seconds"] == value
