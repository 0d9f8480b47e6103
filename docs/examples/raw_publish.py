"""Start or signal a workflow by publishing a raw Avro command to Kafka.

The wire format is open (``docs/wire.md``): this script uses only
confluent-kafka, fastavro and ``schemas/command.avsc``, none of the engine's code. Each message
is the Avro single-object encoding of a ``Command``: the bytes ``C3 01``,
the 8-byte little-endian CRC-64-AVRO fingerprint of the schema's Parsing
Canonical Form, then the Avro binary body. It goes to
``<app_id>.g<generation>.commands`` keyed by the workflow id, so that the
partition owning the workflow receives it.

Start the demo order workflow, then approve it::

    python docs/examples/raw_publish.py --broker localhost:9092 start \\
        --workflow-id order-1 --type order_workflow \\
        --input '{"order_id": "order-1", "customer": "ada", "items": ["book"], "amount": 12.5}'
    python docs/examples/raw_publish.py --broker localhost:9092 signal \\
        --workflow-id order-1 --name approval --payload '{"approved_by": "bob"}'

Prints one JSON line per published command (command id, topic, partition,
offset); exits 1 with the reason when the broker does not acknowledge it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastavro
from confluent_kafka import KafkaError, Message, Producer
from fastavro.schema import fingerprint as crc64_fingerprint
from fastavro.schema import to_parsing_canonical_form

MAGIC = b"\xc3\x01"
CONTENT_TYPE = "application/json"
DEFAULT_SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


class PublishError(RuntimeError):
    """The broker did not acknowledge the command; the text says why."""


def load_command_schema(schemas: Path) -> tuple[Any, bytes]:
    """The parsed ``Command`` schema (for fastavro) and its wire fingerprint."""
    path = schemas / "command.avsc"
    try:
        text = path.read_text()
    except OSError as exc:
        raise SystemExit(f"cannot read the command schema {path}: {exc}") from None
    raw = json.loads(text)
    # CRC-64-AVRO of the specification's Parsing Canonical Form; fastavro gives the
    # hex of its little-endian bytes, the order the single-object encoding uses.
    fingerprint = bytes.fromhex(crc64_fingerprint(to_parsing_canonical_form(raw), "CRC-64-AVRO"))
    return fastavro.parse_schema(raw), fingerprint


def command_record(
    kind: str,
    workflow_id: str,
    name: str,
    payload: Any,
    *,
    sender_id: str | None = None,
    timeout_seconds: float | None = None,
) -> dict[str, Any]:
    """Every field of a ``Command`` for a start or a signal."""
    return {
        "command_id": str(uuid.uuid4()),
        "kind": kind,
        "workflow_id": workflow_id,
        "issued_at": datetime.now(UTC),  # timestamp-micros
        "name": name,
        "payload": None if payload is None else json.dumps(payload).encode(),
        "content_type": CONTENT_TYPE,
        "sender_id": sender_id,
        "reply_to": None,  # no reply wanted: this client does not read the replies topic
        "timeout_seconds": timeout_seconds,
        "run_id": None,
        "step": None,
        "attempt": None,
        "duration": None,
        "failure": None,
        "route": None,
    }


def encode(schema: Any, fingerprint: bytes, record: dict[str, Any]) -> bytes:
    """The single-object encoding of ``record``."""
    out = io.BytesIO()
    out.write(MAGIC)
    out.write(fingerprint)
    fastavro.schemaless_writer(out, schema, record)
    return out.getvalue()


def publish(
    broker: str,
    topic: str,
    key: str,
    value: bytes,
    timeout: float,
    config: dict[str, str] | None = None,
) -> Message:
    """Produce one message and wait for the broker's acknowledgement.

    ``config``: more librdkafka properties, e.g. TLS and SASL (``-X`` options).
    """
    producer = Producer(
        {
            **(config or {}),
            "bootstrap.servers": broker,
            # Java's and aiokafka's default for keyed messages, so the command lands on
            # the partition every other client picks for this workflow id (librdkafka's
            # own default, consistent_random, hashes with CRC32 instead).
            "partitioner": "murmur2_random",
            "acks": "all",
            "enable.idempotence": True,
            "message.timeout.ms": int(timeout * 1000),
        }
    )
    delivered: list[Message] = []
    failed: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            failed.append(err)
        else:
            delivered.append(msg)

    producer.produce(topic, key=key.encode(), value=value, on_delivery=on_delivery)
    # message.timeout.ms bounds delivery; the margin lets the failure callback run.
    producer.flush(timeout + 5.0)
    if failed:
        raise PublishError(f"broker {broker} rejected the command on {topic}: {failed[0].str()}")
    if not delivered:
        raise PublishError(f"broker {broker} did not acknowledge the command on {topic} in time")
    return delivered[0]


def _json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text!r}") from None


def _property(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def connection_config(properties: list[tuple[str, str]]) -> dict[str, str]:
    """The ``-X`` properties, with the SASL password taken from the environment."""
    config = dict(properties)
    password = os.environ.get("STREAMFLOW_SASL_PASSWORD")
    if config.get("security.protocol", "").upper().startswith("SASL") and password:
        config.setdefault("sasl.password", password)
    return config


def build_parser() -> argparse.ArgumentParser:
    """The command line: common connection options, then ``start`` or ``signal``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", required=True, metavar="HOST:PORT", help="bootstrap server")
    parser.add_argument(
        "--app-id", default="streamflow", help="topic prefix (default: %(default)s)"
    )
    parser.add_argument("--generation", type=int, default=1, help="topic generation (default: 1)")
    parser.add_argument(
        "--schemas", type=Path, default=DEFAULT_SCHEMAS, help="directory of the .avsc files"
    )
    parser.add_argument(
        "--timeout", type=float, default=15.0, help="seconds to wait for the broker's ack"
    )
    parser.add_argument(
        "-X",
        dest="config",
        action="append",
        default=[],
        type=_property,
        metavar="KEY=VALUE",
        help="a librdkafka property, e.g. -X security.protocol=SASL_SSL "
        "-X sasl.mechanism=SCRAM-SHA-512 -X sasl.username=U -X ssl.ca.location=ca.pem "
        "(sasl.password: from $STREAMFLOW_SASL_PASSWORD, never a flag)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    start = commands.add_parser("start", help="start a workflow")
    start.add_argument("--workflow-id", required=True)
    start.add_argument("--type", required=True, help="the workflow type (its registered name)")
    start.add_argument("--input", type=_json_arg, default=None, help="workflow input as JSON")
    start.add_argument("--workflow-timeout", type=float, default=None, help="seconds")

    signal = commands.add_parser("signal", help="send a signal to a running workflow")
    signal.add_argument("--workflow-id", required=True)
    signal.add_argument("--name", required=True, help="the signal name")
    signal.add_argument("--payload", type=_json_arg, default=None, help="signal payload as JSON")
    signal.add_argument("--sender-id", default="raw_publish", help="who sends the signal")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Publish the command the arguments describe; 0 once the broker acknowledged it."""
    args = build_parser().parse_args(argv)
    schema, fingerprint = load_command_schema(args.schemas)
    if args.command == "start":
        record = command_record(
            "start", args.workflow_id, args.type, args.input, timeout_seconds=args.workflow_timeout
        )
    else:
        record = command_record(
            "signal", args.workflow_id, args.name, args.payload, sender_id=args.sender_id
        )
    topic = f"{args.app_id}.g{args.generation}.commands"
    try:
        msg = publish(
            args.broker,
            topic,
            args.workflow_id,
            encode(schema, fingerprint, record),
            args.timeout,
            connection_config(args.config),
        )
    except PublishError as exc:
        print(f"raw_publish: {exc}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "command_id": record["command_id"],
                "kind": record["kind"],
                "topic": msg.topic(),
                "partition": msg.partition(),
                "offset": msg.offset(),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
