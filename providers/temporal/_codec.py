"""The engine's payload codec on Temporal: an adapter onto temporalio's own ``PayloadCodec``.

Temporal already runs a codec over every payload it sends (workflow and
activity inputs and results, signal and query arguments, failure details) when
a ``DataConverter`` has ``payload_codec``; and its failure converter with
``encode_common_attributes`` moves failure messages and stack traces into an
encoded payload. So the engine does not encode anything itself here: it
builds that converter around its codec chain. Each Temporal payload is
serialized whole and encoded, like temporalio's encryption sample, so its
metadata (the encoding) is protected too; a payload no codec step applied to
is left as it is.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

from temporalio.api.common.v1 import Payload
from temporalio.api.failure.v1 import Failure
from temporalio.client import Client
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    PayloadCodec,
)

from app.workflow._codec import CodecChain, PayloadCodecError
from app.workflow._payloads import describe_marker

ENCODING = b"binary/streamflow-encoded"
_STEPS = "streamflow-steps"


class TemporalPayloadCodec(PayloadCodec):
    """Runs an engine :class:`~app.workflow.CodecChain` as a temporalio ``PayloadCodec``.

    Without a chain it encodes nothing, and an encoded payload raises
    :class:`PayloadCodecError` saying what it needs (Temporal's own error
    would only name an unknown encoding).
    """

    def __init__(self, chain: CodecChain | None) -> None:
        self.chain = chain

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        if self.chain is None:
            return list(payloads)
        out = []
        for payload in payloads:
            data, steps = await self.chain.encode_bytes(payload.SerializeToString())
            if not steps:
                out.append(payload)
                continue
            meta = {"encoding": ENCODING, _STEPS: json.dumps(steps).encode()}
            out.append(Payload(metadata=meta, data=data))
        return out

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        out = []
        for payload in payloads:
            if payload.metadata.get("encoding") != ENCODING:
                out.append(payload)
                continue
            steps = json.loads(payload.metadata[_STEPS])
            if self.chain is None:
                marker = {"steps": steps}
                raise PayloadCodecError(
                    f"Temporal payload is {describe_marker(marker)} and no codec is "
                    "configured: pass codec= to TemporalExecutor",
                    codec=str(steps[-1].get("codec", "")) if steps else "",
                    key_id=steps[-1].get("key_id") if steps else None,
                )
            out.append(Payload.FromString(await self.chain.decode_bytes(payload.data, steps)))
        return out


def data_converter(
    chain: CodecChain | None, base: DataConverter = DataConverter.default
) -> DataConverter:
    """``base`` with ``chain`` as its codec and failure texts encoded.

    Without a chain, only the codec that recognises encoded payloads is added.
    """
    if chain is None:
        return dataclasses.replace(base, payload_codec=TemporalPayloadCodec(None))
    return dataclasses.replace(
        base,
        payload_codec=TemporalPayloadCodec(chain),
        failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
    )


def with_codec(client: Client, chain: CodecChain | None) -> Client:
    """``client`` on the same connection, with ``chain``'s converter.

    A client that already has a payload codec of its own is kept as it is
    when no chain is given.
    """
    current = client.data_converter
    if chain is None and current.payload_codec is not None:
        return client
    config = client.config()
    config["data_converter"] = data_converter(chain, current)
    return Client(**config)


async def plain_failure(converter: DataConverter, failure: Failure) -> Failure:
    """A copy of ``failure`` whose message and stack are decoded (see encoded attributes).

    The history mapper reads messages from the failure protos themselves; with
    encoded attributes the proto's own message is only ``Encoded failure``.
    """
    if not failure.HasField("encoded_attributes"):
        return failure
    copy = Failure()
    copy.CopyFrom(failure)
    try:
        (attrs,) = await converter.decode([failure.encoded_attributes])
    except PayloadCodecError:
        raise
    except Exception:  # not ours: leave the proto's text
        return copy
    if isinstance(attrs, dict):
        copy.message = str(attrs.get("message", copy.message))
        copy.stack_trace = str(attrs.get("stack_trace", copy.stack_trace))
    return copy
