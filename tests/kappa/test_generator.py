from __future__ import annotations

import hashlib
from collections import Counter

import pytest

from kappa.errors import ConfigError
from kappa.generator import (
    BAD_KINDS,
    EPOCH_MS,
    KINDS,
    GeneratedRecord,
    GeneratorConfig,
    expected_reason,
    generate,
)
from schemas.registry import FileRegistry
from schemas.serde import DecodeError, Decoder

N = 20_000
ALLOWED_LATENESS_MS = 60_000


@pytest.fixture(scope="module")
def records() -> list[GeneratedRecord]:
    return list(generate(GeneratorConfig(events=N, users=300, items=200, seed=42)))


@pytest.fixture(scope="module")
def decoder() -> Decoder:
    return Decoder(FileRegistry())


def _digest(config: GeneratorConfig) -> str:
    h = hashlib.sha256()
    for r in generate(config):
        h.update(r.key + b"|" + r.value + b"|" + str(r.timestamp_ms).encode() + r.kind.encode())
    return h.hexdigest()


def test_reproducible_and_seed_sensitive() -> None:
    config = GeneratorConfig(events=3000, seed=5, schema_version=2)
    assert _digest(config) == _digest(config)
    assert _digest(config) != _digest(GeneratorConfig(events=3000, seed=6, schema_version=2))


def test_exact_count_and_ordered_timestamps(records: list[GeneratedRecord]) -> None:
    assert len(records) == N
    assert records[0].timestamp_ms >= EPOCH_MS
    assert all(a.timestamp_ms <= b.timestamp_ms for a, b in zip(records, records[1:], strict=False))
    assert len(list(generate(GeneratorConfig(events=0)))) == 0
    assert len(list(generate(GeneratorConfig(events=1, dup_rate=0.5)))) == 1


def test_start_and_rate() -> None:
    recs = list(generate(GeneratorConfig(events=2000, start_ms=1000, events_per_sim_second=100)))
    assert recs[0].timestamp_ms >= 1000
    span_s = (recs[-1].timestamp_ms - recs[0].timestamp_ms) / 1000
    assert 15 < span_s < 25  # ~2000 events at 100/s


def test_shares_roughly_as_configured(records: list[GeneratedRecord]) -> None:
    kinds = Counter(r.kind for r in records)
    assert set(kinds) == set(KINDS)  # every kind appears
    bad = sum(kinds[k] for k in BAD_KINDS)
    assert 0.015 < bad / N < 0.025
    assert 0.007 < kinds["late"] / N < 0.013
    assert 0.007 < kinds["duplicate"] / N < 0.013


def test_expected_reasons() -> None:
    assert expected_reason("good") is None
    assert expected_reason("truncated_avro") == "undecodable"
    assert expected_reason("unknown_schema_id") == "unknown_schema"
    assert expected_reason("far_future_ts") == "future_timestamp"
    with pytest.raises(ConfigError):
        expected_reason("nope")


def test_good_events_are_valid_and_realistic(records: list[GeneratedRecord], decoder: Decoder) -> None:
    events = [decoder.decode(r.value)[0] | {"_r": r} for r in records if r.kind == "good"]
    types = Counter(e["event_type"] for e in events)
    assert 0.60 < types["page_view"] / len(events) < 0.70
    assert 0.09 < types["purchase"] / len(events) < 0.15
    assert len({e["event_id"] for e in events}) == len(events)
    for e in events:
        r = e["_r"]
        assert r.key == e["user_id"].encode()
        assert 0 <= r.timestamp_ms - e["ts"] <= 30_000
        if e["event_type"] in ("purchase", "refund"):
            assert e["amount"] > 0 and round(e["amount"], 2) == e["amount"]
            assert e["currency"] in {"USD", "EUR", "GBP"}
        else:
            assert e["amount"] is None and e["currency"] is None
        assert len(r.value) < 65536
    items = Counter(e["item_id"] for e in events).most_common()
    assert items[0][1] > 10 * items[len(items) // 2][1]  # skewed popularity
    by_user: dict[str, list[dict]] = {}
    for e in sorted(events, key=lambda e: e["ts"]):
        by_user.setdefault(e["user_id"], []).append(e)
    for evs in by_user.values():
        for a, b in zip(evs, evs[1:], strict=False):
            if b["ts"] - a["ts"] > 30 * 60_000 + 30_000:
                assert a["session_id"] != b["session_id"]


def test_each_bad_kind_is_what_it_claims(records: list[GeneratedRecord], decoder: Decoder) -> None:
    for r in records:
        if r.kind in ("good", "duplicate"):
            continue
        if r.kind == "random_bytes":
            assert r.value[0] != 0
        if r.kind in ("random_bytes", "truncated_avro", "unknown_schema_id"):
            with pytest.raises(DecodeError) as info:
                decoder.decode(r.value)
            assert info.value.reason == expected_reason(r.kind)
            if r.kind == "unknown_schema_id":
                assert info.value.schema_id == 999
            continue
        event, _ = decoder.decode(r.value)
        ids = [event[f] for f in ("event_id", "user_id", "item_id", "session_id")]
        if r.kind == "missing_id":
            assert ids.count("") == 1
            continue
        assert all(ids)
        paid = event["event_type"] in ("purchase", "refund")
        if r.kind == "purchase_without_amount":
            assert paid and event["amount"] is None
        elif r.kind == "negative_amount":
            assert paid and event["amount"] < 0
        elif r.kind == "bad_currency":
            cur = event["currency"]
            assert paid and not (len(cur) == 3 and cur.isalpha() and cur.isupper())
        elif r.kind == "unknown_event_type":
            assert event["event_type"] not in {"page_view", "add_to_cart", "purchase", "refund"}
        elif r.kind == "far_future_ts":
            assert event["ts"] > r.timestamp_ms + 3_600_000
        elif r.kind == "oversize":
            assert len(r.value) > 65536
        elif r.kind == "late":
            assert r.timestamp_ms - event["ts"] > ALLOWED_LATENESS_MS
            assert paid == (event["amount"] is not None)
        if r.kind != "oversize":
            assert len(r.value) <= 65536


def test_duplicates_resend_an_earlier_good_record(records: list[GeneratedRecord], decoder: Decoder) -> None:
    seen: dict[bytes, GeneratedRecord] = {}
    for r in records:
        if r.kind == "good":
            seen[r.value] = r
        elif r.kind == "duplicate":
            original = seen[r.value]
            assert original.key == r.key
            assert 0 <= r.timestamp_ms - original.timestamp_ms <= 21_000
            event, _ = decoder.decode(r.value)
            assert r.timestamp_ms - event["ts"] <= ALLOWED_LATENESS_MS  # not late


def test_schema_version_2_writes_channel(decoder: Decoder) -> None:
    recs = [r for r in generate(GeneratorConfig(events=500, schema_version=2)) if r.kind == "good"]
    channels = {decoder.decode(r.value)[0]["channel"] for r in recs}
    assert channels <= {"web", "ios", "android"} and len(channels) > 1
    assert all(decoder.decode(r.value)[1] == 2 for r in recs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"events": -1},
        {"events": 1, "users": 0},
        {"events": 1, "bad_rate": 0.6, "late_rate": 0.5},
        {"events": 1, "schema_version": 3},
        {"events": 1, "max_out_of_order_s": 60},
        {"events": 1, "events_per_sim_second": 0},
    ],
)
def test_invalid_config(kwargs: dict) -> None:
    with pytest.raises(ConfigError):
        GeneratorConfig(**kwargs)
