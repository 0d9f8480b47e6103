"""The payload codecs themselves: compression, AES-GCM, chains, markers, key files, settings."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

import pytest

from app.streaming.settings import StreamingSettings
from app.workflow import (
    CodecChain,
    CompressionCodec,
    DefaultExecutor,
    EncryptionCodec,
    InvalidArgumentError,
    PayloadCodecError,
    WorkflowContext,
    WorkflowOptions,
    load_codec,
    new_key,
)
from app.workflow._payloads import Payloads, describe_marker, is_encoded, marker_of
from providers.sqlite import SQLiteStore

KEY = base64.b64encode(bytes(32)).decode()


def chain(*codecs: Any) -> Payloads:
    return Payloads(CodecChain(list(codecs)))


async def test_small_payloads_are_left_as_they_are_and_large_ones_shrink() -> None:
    p = chain(CompressionCodec(1024))
    assert await p.encode_value({"small": "x" * 100}) == {"small": "x" * 100}
    large = {"rows": [{"id": i, "name": "widget", "ok": True} for i in range(5000)]}
    plain = len(json.dumps(large, separators=(",", ":")))
    encoded = await p.encode_value(large)
    assert is_encoded(encoded)
    size = len(json.dumps(encoded))
    assert size < plain / 10, (size, plain)
    assert await p.decode_value(encoded) == large


async def test_incompressible_payloads_are_not_compressed() -> None:
    p = chain(CompressionCodec(16))
    noise = base64.b64encode(os.urandom(3000)).decode()  # base64 of noise: 6 bits a byte
    assert await p.encode_value(noise) == noise


async def test_encryption_round_trips_and_hides_the_text() -> None:
    p = chain(CompressionCodec(64), EncryptionCodec(KEY, "k1"))
    for value in ["secret", {"a": ["secret"] * 100}, 42, [1, "two"]]:
        encoded = await p.encode_value(value)
        assert "secret" not in json.dumps(encoded)
        assert marker_of(encoded) is not None
        assert await p.decode_value(encoded) == value
    text = await p.encode_text("ValueError: secret")
    assert text is not None and "secret" not in text and text.startswith("$encoded:")
    assert await p.decode_text(text) == "ValueError: secret"
    # a fresh nonce each time: equal values do not give equal ciphertexts
    assert await p.encode_value("same") != await p.encode_value("same")
    assert await p.encode_value(None) is None


async def test_the_marker_says_how_a_payload_is_encoded() -> None:
    big = "x" * 5000
    encoded = await chain(CompressionCodec(64), EncryptionCodec(KEY, "k7")).encode_value(big)
    marker = marker_of(encoded)
    assert marker is not None
    assert [s["codec"] for s in marker["steps"]] == ["zlib", "aes-256-gcm"]
    assert describe_marker(marker) == "encrypted (zlib; aes-256-gcm, key id 'k7')"
    lenient = Payloads(None, lenient=True)
    assert await lenient.decode_value(encoded) == "<encrypted (zlib; aes-256-gcm, key id 'k7')>"
    with pytest.raises(PayloadCodecError, match="no codec is configured") as err:
        await Payloads(None).decode_value(encoded)
    assert err.value.key_id == "k7"


async def test_a_relabelled_key_id_does_not_decrypt() -> None:
    other = base64.b64encode(bytes(range(32))).decode()
    writer = chain(EncryptionCodec(KEY, "k1"))
    reader = chain(EncryptionCodec(other, "k2", {"k1": KEY}))
    encoded = await writer.encode_value("v")
    assert await reader.decode_value(encoded) == "v"  # an old key decrypts
    marker = marker_of(encoded)
    assert marker is not None
    marker["steps"][0]["key_id"] = "k2"  # the key id is authenticated with the data
    with pytest.raises(PayloadCodecError, match="does not decrypt"):
        await reader.decode_value(encoded)


@pytest.mark.parametrize(
    ("key", "key_id", "old", "message"),
    [
        (b"short", "k", None, "must be 32 bytes"),
        ("not base64!", "k", None, "not valid base64"),
        (KEY, "", None, "key_id must be a non-empty string"),
        (KEY, "k", {"k": KEY}, "both current and old"),
        (KEY, "k", {"o": b"123"}, "old key 'o' must be 32 bytes"),
    ],
)
def test_bad_keys_fail_at_the_call(key: Any, key_id: str, old: Any, message: str) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        EncryptionCodec(key, key_id, old)


def test_bad_options_fail_at_the_call() -> None:
    with pytest.raises(InvalidArgumentError, match="threshold"):
        CompressionCodec(-1)
    with pytest.raises(InvalidArgumentError, match="codec must be a PayloadCodec"):
        DefaultExecutor(codec="aes")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="names must differ"):
        CodecChain([CompressionCodec(), CompressionCodec()])


def write_keys(path: Path, doc: Any) -> str:
    path.write_text(json.dumps(doc))
    return str(path)


def test_key_files(tmp_path: Path) -> None:
    good = write_keys(
        tmp_path / "k.json", {"current": "b", "keys": {"a": new_key(), "b": new_key()}}
    )
    codec = load_codec(good)
    assert codec is not None
    assert [c.name for c in codec.codecs] == ["zlib", "aes-256-gcm"]
    enc = codec.codecs[1]
    assert isinstance(enc, EncryptionCodec) and enc.key_ids == ["b", "a"]
    assert load_codec(None, compress_threshold=None) is None
    bad = write_keys(tmp_path / "bad.json", {"current": "c", "keys": {"a": new_key()}})
    with pytest.raises(InvalidArgumentError, match="current key 'c' is not among its keys"):
        load_codec(bad)
    with pytest.raises(InvalidArgumentError, match="cannot read key file"):
        load_codec(tmp_path / "missing.json")
    (tmp_path / "junk.json").write_text("{")
    with pytest.raises(InvalidArgumentError, match="is not JSON"):
        load_codec(tmp_path / "junk.json")


def test_streaming_settings_check_the_key_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = write_keys(tmp_path / "bad.json", {"keys": {}})
    monkeypatch.setenv("STREAMFLOW_CODEC_KEY_FILE", bad)
    with pytest.raises(InvalidArgumentError, match=r"codec_key_file: .*must be"):
        StreamingSettings.from_env()
    good = write_keys(tmp_path / "k.json", {"current": "a", "keys": {"a": new_key()}})
    monkeypatch.setenv("STREAMFLOW_CODEC_KEY_FILE", good)
    monkeypatch.setenv("STREAMFLOW_COMPRESS_THRESHOLD", "2048")
    settings = StreamingSettings.from_env()
    assert settings.codec_key_file == good and settings.compress_threshold == 2048


async def echo(value: Any) -> Any:
    return value


async def big_flow(ctx: WorkflowContext, value: Any) -> Any:
    return await ctx.execute_activity(echo, value)


async def test_a_large_payload_is_stored_compressed(tmp_path: Path) -> None:
    large = {"rows": [{"id": i, "name": "widget", "ok": True} for i in range(5000)]}
    plain = len(json.dumps(large, separators=(",", ":")))
    store = SQLiteStore(tmp_path / "wf.db")
    codec = [CompressionCodec(1024), EncryptionCodec(KEY, "k1")]
    async with DefaultExecutor(store, workflows=[big_flow], activities=[echo], codec=codec) as ex:
        handle = await ex.execute(big_flow, WorkflowOptions(id="big", input=large))
        assert await handle.result(timeout=10) == large
        small = await ex.execute(big_flow, WorkflowOptions(id="small", input="tiny"))
        assert await small.result(timeout=10) == "tiny"
    raw = await store.load("big")  # the store itself: what is on disk
    assert raw is not None
    stored = len(json.dumps(raw.input))
    assert stored < plain / 10, (stored, plain)
    assert [s["codec"] for s in (marker_of(raw.input) or {})["steps"]] == ["zlib", "aes-256-gcm"]
    tiny = await store.load("small")
    assert tiny is not None
    # small payloads are encrypted but not compressed
    assert [s["codec"] for s in (marker_of(tiny.input) or {})["steps"]] == ["aes-256-gcm"]
    await store.close()
