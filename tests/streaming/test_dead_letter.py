"""Bad commands on the commands topic end in the dead-letter topic, and the worker goes on.

A real worker runs on the session's Tansu broker. Hypothesis draws bad
messages (random bytes, truncated commands, records of other schemas,
unknown kinds, empty ids, keys that are not the workflow id, wrong content
types, invalid JSON, signals to unknown workflows, starts of unknown types)
and produces each straight to the commands topic, while real workflows are
started through a :class:`KafkaExecutor` in between. Each bad message must
come back on the dead-letter topic, found by its source partition and offset,
with a reason that names the problem, its key and its original bytes. A last
test reads the dead-letter topic from the beginning and checks the whole set,
the valid workflows' results, and that the worker still runs workflows.

Delivery is at-least-once, so a bad message may be dead-lettered twice:
the checks compare sets of sources.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from app.streaming import KafkaExecutor, StreamingSettings, StreamingWorker
from app.streaming._machine import CommandKind, Reply
from app.streaming._messages import (
    JSON,
    MAX_PAYLOAD,
    decode_dead_letter,
    encode_history,
    encode_reply,
)
from app.streaming._wire import MAGIC, codec, fingerprint_of, load_raw
from app.streaming.admin import ensure_topics
from app.streaming.settings import test_settings
from app.workflow import WorkflowError, WorkflowOptions
from app.workflow._types import EventType, HistoryEvent
from tests.conformance import workflows as suite
from tests.servers import die_with_parent

pytestmark = pytest.mark.asyncio(loop_scope="module")

DEADLINE = 15.0
"""Seconds to wait for one message's dead letter (a hop takes tens of ms)."""
START_DEADLINE = 60.0
"""Seconds for a worker process to start and own its partitions (~5 s measured)."""
MAX_MESSAGE = 8 * 1024 * 1024
"""Our producer's request limit: the broker took 60 MiB records when measured."""
REGISTERED = {wf.__name__ for wf in suite.workflows}


# -- building commands -----------------------------------------------------------------
def command_record(**fields: Any) -> dict[str, Any]:
    """A command record: every field of ``schemas/command.avsc`` at its default, then ``fields``."""
    record = {f["name"]: f.get("default") for f in load_raw("command")["fields"]}
    record.update(
        command_id=uuid.uuid4().hex,
        kind=CommandKind.START,
        issued_at=datetime.now(UTC),
        name="sequential",
        payload=b"1",
        content_type=JSON,
    )
    record.update(fields)
    return record


def command(**fields: Any) -> bytes:
    return codec("command").encode(command_record(**fields))


@dataclass(frozen=True)
class Bad:
    """A bad message to produce: its key, value and what the reason must say."""

    category: str
    key: bytes | None
    value: bytes
    reason: str
    """A regular expression the dead letter's reason must match."""

    def __repr__(self) -> str:  # hypothesis prints failing examples; keep huge values short
        value = self.value if len(self.value) <= 80 else self.value[:80] + b"..."
        return f"Bad({self.category!r}, key={self.key!r}, value={value!r}, reason={self.reason!r})"


Builder = Callable[[str], Bad]
"""Makes a bad message for a fresh workflow id (so 'unknown workflow' stays true)."""

TEXT = st.text(st.characters(codec="utf-8"), min_size=1, max_size=30)
NOT_AVRO = "not an Avro single-object message|unknown schema fingerprint"


def _random_bytes(data: bytes) -> Builder:
    reason = (
        "unknown schema fingerprint"
        if len(data) >= 10 and data[:2] == MAGIC
        else "not an Avro single-object message"
    )
    return lambda wid: Bad("random bytes", wid.encode(), data, reason)


def _random_body(body: bytes) -> Builder:
    # our framing and fingerprint, then garbage: decodes to nothing or to nonsense
    reason = "corrupt command body|trailing bytes|unknown command kind|is empty|message key"
    return lambda wid: Bad(
        "random body", wid.encode(), MAGIC + fingerprint_of("command") + body, reason
    )


def _truncated(cut: float) -> Builder:
    def build(wid: str) -> Bad:
        whole = command(workflow_id=wid, payload=b'{"n": 1}')
        at = int(cut * len(whole))
        reason = "corrupt command body" if at >= 10 else "not an Avro single-object message"
        return Bad("truncated", wid.encode(), whole[:at], reason)

    return build


def _other_schema(which: str) -> Builder:
    def build(wid: str) -> Bad:
        if which == "reply":
            value = encode_reply("c", "client", wid, Reply(ok=True, payload=[1]))
        else:
            event = HistoryEvent(
                id=1, type=EventType.WORKFLOW_STARTED, timestamp=datetime.now(UTC), input=3
            )
            value = encode_history(wid, "run", "sequential", event)
        return Bad(f"{which} record", wid.encode(), value, "unknown schema fingerprint")

    return build


def _unknown_kind(kind: str) -> Builder:
    return lambda wid: Bad(
        "unknown kind", wid.encode(), command(workflow_id=wid, kind=kind), "unknown command kind"
    )


def _empty_id(kind: str) -> Builder:
    return lambda wid: Bad(
        "empty workflow id", b"", command(workflow_id="", kind=kind), "workflow_id is empty"
    )


def _empty_command_id(_: None) -> Builder:
    return lambda wid: Bad(
        "empty command id",
        wid.encode(),
        command(workflow_id=wid, command_id=""),
        "command_id is empty",
    )


def _wrong_key(key: bytes) -> Builder:
    return lambda wid: Bad(
        "key is not the workflow id",
        key,
        command(workflow_id=wid),
        "message key .* is not the workflow id",
    )


def _wrong_content_type(content_type: str) -> Builder:
    return lambda wid: Bad(
        "wrong content type",
        wid.encode(),
        command(workflow_id=wid, content_type=content_type, payload=b"[1]"),
        "content type .*only 'application/json' is understood",
    )


def _invalid_json(payload: bytes) -> Builder:
    return lambda wid: Bad(
        "invalid JSON",
        wid.encode(),
        command(workflow_id=wid, kind=CommandKind.SIGNAL, name="s", payload=payload),
        "payload is not valid JSON",
    )


def _missing_name(kind: str) -> Builder:
    return lambda wid: Bad(
        "missing name",
        wid.encode(),
        command(workflow_id=wid, kind=kind, name=None),
        f"a {kind} command needs its .* in 'name'",
    )


def _engine_command_without_step(kind: str) -> Builder:
    return lambda wid: Bad(
        "engine command without step",
        wid.encode(),
        command(workflow_id=wid, kind=kind, run_id=None, step=None),
        f"a {kind} command needs 'step' and 'run_id'",
    )


def _bad_timeout(timeout: float) -> Builder:
    return lambda wid: Bad(
        "bad timeout",
        wid.encode(),
        command(workflow_id=wid, timeout_seconds=timeout),
        "timeout_seconds must be > 0",
    )


def _unknown_workflow(kind: str) -> Builder:
    return lambda wid: Bad(
        f"{kind} to an unknown workflow",
        wid.encode(),
        command(
            workflow_id=wid,
            kind=kind,
            name="approve" if kind == "signal" else None,
            payload=b'{"ok": true}' if kind == "signal" else None,
        ),
        f"{kind} names an unknown workflow {re.escape(repr(wid))}",
    )


def _unknown_type(name: str) -> Builder:
    return lambda wid: Bad(
        "start of an unknown type",
        wid.encode(),
        command(workflow_id=wid, name=name),
        f"start names an unknown workflow type {re.escape(repr(name))}",
    )


def _not_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return True
    return False


BAD_MESSAGES: st.SearchStrategy[Builder] = st.one_of(
    st.binary(max_size=200).map(_random_bytes),
    st.binary(max_size=200).map(_random_body),
    st.floats(0, 0.999).map(_truncated),
    st.sampled_from(["reply", "history event"]).map(_other_schema),
    TEXT.filter(lambda k: k not in CommandKind.ALL).map(_unknown_kind),
    st.sampled_from([CommandKind.START, CommandKind.SIGNAL, CommandKind.CANCEL]).map(_empty_id),
    st.none().map(_empty_command_id),
    st.binary(min_size=1, max_size=40).map(_wrong_key),
    TEXT.filter(lambda t: t != JSON).map(_wrong_content_type),
    st.binary(min_size=1, max_size=60).filter(_not_json).map(_invalid_json),
    st.sampled_from([CommandKind.START, CommandKind.SIGNAL, CommandKind.QUERY]).map(_missing_name),
    st.sampled_from([CommandKind.ACTIVITY_RESULT, CommandKind.TIMER_FIRED]).map(
        _engine_command_without_step
    ),
    st.sampled_from([0.0, -1.0, float("nan"), -float("inf")]).map(_bad_timeout),
    st.sampled_from([CommandKind.SIGNAL, CommandKind.CANCEL]).map(_unknown_workflow),
    TEXT.filter(lambda n: n not in REGISTERED).map(_unknown_type),
)
"""One of each kind of bad message the worker must dead-letter."""

ONE_OF_EACH: list[Builder] = [
    _random_bytes(b"\x00garbage"),
    _random_bytes(MAGIC + b"\x01" * 20),
    _random_body(b"\xff" * 12),
    _truncated(0.5),
    _truncated(0.05),
    _other_schema("reply"),
    _other_schema("history event"),
    _unknown_kind("explode"),
    _empty_id(CommandKind.SIGNAL),
    _empty_command_id(None),
    _wrong_key(b"someone-else"),
    _wrong_content_type("text/plain"),
    _invalid_json(b"{not json"),
    _missing_name(CommandKind.START),
    _engine_command_without_step(CommandKind.ACTIVITY_RESULT),
    _bad_timeout(0.0),
    _unknown_workflow(CommandKind.SIGNAL),
    _unknown_workflow(CommandKind.CANCEL),
    _unknown_type("no_such_workflow"),
]


# -- the engine under test -------------------------------------------------------------
@dataclass
class Letter:
    """One record of the dead-letter topic."""

    key: bytes | None
    reason: str
    source: tuple[int, int]
    original: bytes | None
    header_reason: bytes | None


def letter(message: Any) -> Letter:
    record = decode_dead_letter(message.value)
    headers = dict(message.headers or ())
    return Letter(
        key=message.key,
        reason=record["reason"],
        source=(record["source_partition"], record["source_offset"]),
        original=record["original"],
        header_reason=headers.get("reason"),
    )


def dlq_consumer(settings: StreamingSettings) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_auto_commit=False,
        fetch_max_wait_ms=10,
        max_partition_fetch_bytes=MAX_MESSAGE,
    )


class DeadLetters:
    """Tails the dead-letter topic from its beginning; letters by source (partition, offset)."""

    def __init__(self, settings: StreamingSettings) -> None:
        self.settings = settings
        self.by_source: dict[tuple[int, int], list[Letter]] = {}
        self._consumer = dlq_consumer(settings)
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        topic = self.settings.topology.dead_letter
        tps = [TopicPartition(topic, p) for p in range(self.settings.partitions)]
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        self._task = asyncio.create_task(self._tail(), name="dead-letter-tail")

    async def _tail(self) -> None:
        async for message in self._consumer:
            found = letter(message)
            async with self._changed:
                self.by_source.setdefault(found.source, []).append(found)
                self._changed.notify_all()

    async def wait_for(self, source: tuple[int, int], timeout: float = DEADLINE) -> list[Letter]:
        async with self._changed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: source in self.by_source), timeout
                )
            return self.by_source.get(source, [])

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()


@dataclass
class Sent:
    """A bad message as produced: where it went."""

    bad: Bad
    source: tuple[int, int]


@dataclass(repr=False)
class Engine:
    """A worker, a client, a raw producer and a tail of the dead-letter topic."""

    settings: StreamingSettings
    executor: KafkaExecutor
    producer: AIOKafkaProducer
    dead_letters: DeadLetters
    sent: list[Sent] = field(default_factory=list)
    started: list[tuple[Any, Any]] = field(default_factory=list)
    """(handle, expected result) of the valid workflows started in between."""

    def __repr__(self) -> str:  # hypothesis prints it with every failing example
        return f"Engine({self.settings.topology.commands!r}, {len(self.sent)} sent)"

    async def produce(self, bad: Bad, partition: int | None = None) -> Sent:
        meta = await asyncio.wait_for(
            self.producer.send_and_wait(
                self.settings.topology.commands, bad.value, key=bad.key, partition=partition
            ),
            DEADLINE,
        )
        sent = Sent(bad, (meta.partition, meta.offset))
        self.sent.append(sent)
        return sent

    async def start_valid(self, n: int) -> None:
        """Start a real workflow; its result is checked at the end."""
        wid = f"valid-{uuid.uuid4().hex[:12]}"
        if n % 2:
            handle = await self.executor.execute(suite.sequential, WorkflowOptions(wid, n))
            self.started.append((handle, [2 * n, 4 * n, 8 * n]))
        else:
            handle = await self.executor.execute(suite.fan_out, WorkflowOptions(wid, n % 5))
            self.started.append((handle, [2 * i for i in range(n % 5)]))


@contextlib.asynccontextmanager
async def clients(settings: StreamingSettings) -> AsyncIterator[Engine]:
    """The test's side of an engine: a raw producer, the dead-letter tail and a client."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        acks="all",
        linger_ms=0,
        max_request_size=MAX_MESSAGE,
    )
    dead_letters = DeadLetters(settings)
    try:
        await producer.start()
        await dead_letters.start()
        async with KafkaExecutor(settings=settings, workflows=suite.workflows) as executor:
            yield Engine(settings, executor, producer, dead_letters)
    finally:
        await dead_letters.stop()
        await producer.stop()


def new_settings(bootstrap: str, **overrides: Any) -> StreamingSettings:
    return test_settings(bootstrap, app_id=f"dlq-{uuid.uuid4().hex[:12]}", **overrides)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine(kafka_bootstrap: str) -> AsyncIterator[Engine]:
    """A worker in the test's event loop, and the clients."""
    settings = new_settings(kafka_bootstrap)
    await ensure_topics(settings)
    worker = StreamingWorker(settings, suite.workflows, suite.activities)
    await worker.start()
    try:
        async with clients(settings) as ready:
            yield ready
    finally:
        await worker.stop()


def check_letters(sent: Sent, letters: list[Letter]) -> None:
    bad = sent.bad
    assert letters, f"{bad!r} at {sent.source} was not dead-lettered"
    for found in letters:
        assert re.search(bad.reason, found.reason), (
            f"the reason {found.reason!r} for {bad!r} does not say {bad.reason!r}"
        )
        assert found.original == bad.value, f"the original bytes of {bad!r} were not kept"
        assert found.key == bad.key, f"{bad!r} was dead-lettered under key {found.key!r}"
        assert found.header_reason == found.reason.encode()[:1000]


# -- the fuzz --------------------------------------------------------------------------
# Shrinking is off: every attempt of a failing case waits out DEADLINE on the broker,
# and the failing message is printed whole anyway. The worker's consumer thread draws
# from the global `random` while Hypothesis generates, which Hypothesis takes for a
# strategy using `random`: the strategies here do not.
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
@settings(
    max_examples=80,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow],
)
@given(build=BAD_MESSAGES, valid=st.one_of(st.none(), st.none(), st.integers(0, 9)))
async def test_bad_commands_are_dead_lettered(
    engine: Engine, build: Builder, valid: int | None
) -> None:
    if valid is not None:
        await engine.start_valid(valid)
    sent = await engine.produce(build(f"fuzz-{uuid.uuid4().hex[:12]}"))
    check_letters(sent, await engine.dead_letters.wait_for(sent.source))


async def test_dead_letter_topic_holds_every_bad_command_and_the_worker_lives(
    engine: Engine,
) -> None:
    # one of each kind too, so this test means something when run alone
    for build in ONE_OF_EACH:
        await engine.produce(build(f"each-{uuid.uuid4().hex[:12]}"))
        await engine.start_valid(len(engine.started))
    expected = {sent.source: sent for sent in engine.sent}

    # the whole topic, from the beginning, with a fresh consumer
    letters = await read_dead_letters(engine.settings, set(expected), DEADLINE * 2)
    found = {letter.source for letter in letters}
    missing = [expected[s].bad for s in sorted(set(expected) - found)]
    assert not missing, f"{len(missing)} bad messages were not dead-lettered: {missing}"
    unexpected = [letter for letter in letters if letter.source not in expected]
    assert not unexpected, f"valid commands were dead-lettered: {unexpected}"
    for source, sent in expected.items():
        check_letters(sent, [letter for letter in letters if letter.source == source])

    # every valid workflow started in between ran to its correct result
    for handle, result in engine.started:
        assert await handle.result(timeout=DEADLINE * 2) == result, handle

    # and the worker still runs new ones
    wid = f"last-{uuid.uuid4().hex[:12]}"
    handle = await engine.executor.execute(suite.sequential, WorkflowOptions(wid, 5))
    assert await handle.result(timeout=DEADLINE) == [10, 20, 40]


async def read_dead_letters(
    settings: StreamingSettings, wanted: set[tuple[int, int]], timeout: float
) -> list[Letter]:
    """Every letter up to the topic's end, once ``wanted`` sources are all there."""
    consumer = dlq_consumer(settings)
    await consumer.start()
    try:
        topic = settings.topology.dead_letter
        tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        letters: list[Letter] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        ends: dict[TopicPartition, int] | None = None
        while loop.time() < deadline:
            batch = await consumer.getmany(timeout_ms=100)
            letters += [letter(m) for messages in batch.values() for m in messages]
            if ends is None and wanted <= {found.source for found in letters}:
                ends = await consumer.end_offsets(tps)
            if ends is not None and all(await positions_reached(consumer, ends)):
                break
        return letters
    finally:
        await consumer.stop()


async def positions_reached(
    consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]
) -> list[bool]:
    return [await consumer.position(tp) >= end for tp, end in ends.items()]


# -- known gaps --------------------------------------------------------------------------
@contextlib.contextmanager
def worker_process(settings: StreamingSettings, logdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m app worker`` for ``settings``, ended by its PID on exit."""
    log = logdir / "worker.log"
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app", "worker", "--app", suite.__name__],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parents[2],
            env={**os.environ, **settings.to_env()},
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=DEADLINE)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fragile_engine(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Engine]:
    """A worker process of its own for the inputs that break one: it is killed at the end."""
    settings = new_settings(kafka_bootstrap, request_timeout=5.0)
    await ensure_topics(settings)
    with worker_process(settings, tmp_path_factory.mktemp("fragile-worker")):
        async with clients(settings) as ready:
            # a dead letter is the sign that the worker consumes its partitions
            sentinel = await ready.produce(Bad("sentinel", b"ready", b"ready", NOT_AVRO))
            letters = await ready.dead_letters.wait_for(sentinel.source, START_DEADLINE)
            assert letters, f"the worker process did not start within {START_DEADLINE:g}s"
            yield ready


async def dead_lettered_before(
    engine: Engine, sent: Sent, timeout: float = DEADLINE
) -> list[Letter]:
    """The letters of ``sent``, once a later bad message on its partition came back.

    A partition is consumed in order, so when a sentinel produced after
    ``sent`` to the same partition is dead-lettered, ``sent`` has been handled.
    """
    sentinel = await engine.produce(
        Bad("sentinel", b"sentinel", b"sentinel", NOT_AVRO), partition=sent.source[0]
    )
    assert await engine.dead_letters.wait_for(sentinel.source, timeout), (
        "the worker stopped consuming its commands"
    )
    return engine.dead_letters.by_source.get(sent.source, [])


async def test_command_without_a_key_is_dead_lettered(fragile_engine: Engine) -> None:
    wid = f"keyless-{uuid.uuid4().hex[:12]}"
    sent = await fragile_engine.produce(
        Bad("no key", None, command(workflow_id=wid, payload=b"1"), "key"), partition=0
    )
    check_letters(sent, await dead_lettered_before(fragile_engine, sent))


async def test_command_over_max_payload_is_dead_lettered(fragile_engine: Engine) -> None:
    wid = f"huge-{uuid.uuid4().hex[:12]}"
    payload = json.dumps("x" * MAX_PAYLOAD).encode()
    value = command(workflow_id=wid, payload=payload)
    assert len(payload) > MAX_PAYLOAD and len(value) < MAX_MESSAGE
    sent = await fragile_engine.produce(
        Bad("over the limit", wid.encode(), value, f"over the limit of {MAX_PAYLOAD} bytes")
    )
    check_letters(sent, await dead_lettered_before(fragile_engine, sent))


async def test_input_under_max_payload_does_not_stop_the_worker(
    fragile_engine: Engine,
) -> None:
    ex = fragile_engine.executor
    big = "x" * (MAX_PAYLOAD - 100)
    assert len(json.dumps(big)) < MAX_PAYLOAD
    # whether it runs or is refused is the engine's choice; answering is not
    with contextlib.suppress(WorkflowError):
        handle = await ex.execute(suite.sequential, WorkflowOptions(f"big-{uuid.uuid4().hex}", big))
        with contextlib.suppress(WorkflowError, TimeoutError):
            await handle.result(timeout=DEADLINE)
    wid = f"after-big-{uuid.uuid4().hex[:12]}"
    try:
        handle = await ex.execute(suite.sequential, WorkflowOptions(wid, 2))
        result = await handle.result(timeout=DEADLINE)
    except WorkflowError as exc:
        raise AssertionError(f"the worker stopped answering: {exc}") from exc
    assert result == [4, 8, 16]
