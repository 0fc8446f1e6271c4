from __future__ import annotations

import struct
from typing import Any

import pytest

from schemas.registry import FileRegistry, RegisteredSchema
from schemas.serde import DecodeError, Decoder, _Plan, encode, frame, unframe


def _event(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": "7d5c8ad1-3f1b-4a52-9d35-6d0b2b1c1f00",
        "user_id": "u0000001",
        "event_type": "purchase",
        "item_id": "i0000042",
        "amount": 19.99,
        "currency": "EUR",
        "ts": 1_767_225_600_123,
        "session_id": "s-1",
        "attributes": {"device": "mobile"},
    }
    event.update(overrides)
    return event


@pytest.fixture(scope="module")
def registry() -> FileRegistry:
    return FileRegistry()


@pytest.fixture(scope="module")
def v1(registry: FileRegistry) -> RegisteredSchema:
    return registry.get(1)


@pytest.fixture(scope="module")
def v2(registry: FileRegistry) -> RegisteredSchema:
    return registry.get(2)


def test_frame_layout(v1: RegisteredSchema) -> None:
    value = encode(_event(), v1)
    assert value[0] == 0
    assert struct.unpack(">I", value[1:5])[0] == 1
    assert unframe(value) == (1, value[5:])
    assert frame(7, b"abc") == b"\x00\x00\x00\x00\x07abc"


def test_roundtrip_same_schema_keeps_ts_as_int(registry: FileRegistry, v1: RegisteredSchema) -> None:
    record, schema_id = Decoder(registry, v1).decode(encode(_event(), v1))
    assert schema_id == 1
    assert record == _event()
    assert isinstance(record["ts"], int)


def test_v1_data_reads_with_v2_reader(registry: FileRegistry, v1: RegisteredSchema) -> None:
    decoder = Decoder(registry)  # reader defaults to the latest version
    assert decoder.reader.version == 2
    record, schema_id = decoder.decode(encode(_event(), v1))
    assert schema_id == 1
    assert record == {**_event(), "channel": "web"}
    record["attributes"]["x"] = "y"  # mutable defaults/values are not shared between records
    assert decoder.decode(encode(_event(attributes={}), v1))[0]["attributes"] == {}


def test_v2_data_reads_with_v2_reader(registry: FileRegistry, v2: RegisteredSchema) -> None:
    record, schema_id = Decoder(registry).decode(encode(_event(channel="ios"), v2))
    assert (schema_id, record["channel"]) == (2, "ios")


def test_patch_plan_matches_fastavro_resolution(
    registry: FileRegistry, v1: RegisteredSchema, v2: RegisteredSchema
) -> None:
    value = encode(_event(amount=None, currency=None, event_type="page_view"), v1)
    patched = Decoder(registry, v2)
    resolving = Decoder(registry, v2)
    resolving._plans[1] = _Plan(writer=v1.fast, resolver=v2.fast)
    assert patched.decode(value) == resolving.decode(value)


def test_v2_data_reads_with_v1_reader(
    registry: FileRegistry, v1: RegisteredSchema, v2: RegisteredSchema
) -> None:
    record, _ = Decoder(registry, v1).decode(encode(_event(channel="ios"), v2))
    assert "channel" not in record
    assert record == _event()


@pytest.mark.parametrize(
    ("value", "reason", "schema_id"),
    [
        (b"", "undecodable", None),
        (b"\x00\x00\x00", "undecodable", None),
        (b"\x01\x00\x00\x00\x01abc", "undecodable", None),
        (b"\x00\x00\x00\x03\xe7\x02", "unknown_schema", 999),
        (b"\x00\x00\x00\x00\x01\x02", "undecodable", 1),
    ],
)
def test_bad_frames(registry: FileRegistry, value: bytes, reason: str, schema_id: int | None) -> None:
    with pytest.raises(DecodeError) as info:
        Decoder(registry).decode(value)
    assert (info.value.reason, info.value.schema_id) == (reason, schema_id)


def test_truncated_and_trailing_bytes_are_undecodable(registry: FileRegistry, v1: RegisteredSchema) -> None:
    value = encode(_event(), v1)
    decoder = Decoder(registry)
    for cut in range(5, len(value)):
        with pytest.raises(DecodeError) as info:
            decoder.decode(value[:cut])
        assert info.value.reason == "undecodable"
    with pytest.raises(DecodeError, match="trailing") as info:
        decoder.decode(value + b"\x00")
    assert info.value.reason == "undecodable"


def test_unknown_schema_with_valid_body(registry: FileRegistry, v1: RegisteredSchema) -> None:
    value = frame(999, encode(_event(), v1)[5:])
    with pytest.raises(DecodeError) as info:
        Decoder(registry).decode(value)
    assert (info.value.reason, info.value.schema_id) == ("unknown_schema", 999)
