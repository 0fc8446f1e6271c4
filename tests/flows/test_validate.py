"""Each validation rule, its reason code, and the order in which rules apply."""

from __future__ import annotations

import pickle
import uuid
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flows.records import RawBatch, RawRecord
from flows.validate import (
    REASONS,
    PartitionValidator,
    ValidationConfig,
    check_fields,
    dedup_key,
)
from schemas.registry import FileRegistry
from schemas.serde import Decoder, encode, frame

REG = FileRegistry()
V1 = REG.get(1)
T0 = 1_767_225_600_000


def event(**over: Any) -> dict[str, Any]:
    base = {"event_id": "e1", "user_id": "u1", "event_type": "purchase", "item_id": "i1",
            "amount": 9.5, "currency": "EUR", "ts": T0, "session_id": "s1", "attributes": {}}
    base.update(over)
    return base


def rec(value: bytes, ts: int = T0, offset: int = 0, key: bytes = b"u1") -> RawRecord:
    return RawRecord("t", 0, offset, ts, key, value)


def validate(*records: RawRecord, config: ValidationConfig | None = None,
             live: bool = False) -> tuple[list[dict[str, Any]], list[str]]:
    v = PartitionValidator(config or ValidationConfig(live=live), Decoder(REG).decode)
    out = v.validate(RawBatch("t", 0, 1, list(records), 0))
    return out.events, [q.reason for q in out.quarantined]


def test_valid_event_passes_with_coordinates() -> None:
    events, bad = validate(rec(encode(event(), V1), offset=7))
    assert bad == []
    assert events[0]["offset"] == 7 and events[0]["ingest_ts"] == T0
    assert events[0]["channel"] == "web"  # v1 data read with the v2 reader


@pytest.mark.parametrize(("value", "reason"), [
    (b"\x01garbage", "undecodable"),
    (b"", "undecodable"),
    (frame(999, b"\x00"), "unknown_schema"),
    (encode(event(), V1)[:-3], "undecodable"),
])
def test_decode_failures(value: bytes, reason: str) -> None:
    assert validate(rec(value))[1] == [reason]


@pytest.mark.parametrize(("over", "reason"), [
    ({"event_id": ""}, "missing_field"),
    ({"user_id": ""}, "missing_field"),
    ({"item_id": ""}, "missing_field"),
    ({"session_id": ""}, "missing_field"),
    ({"amount": None}, "invalid_value"),
    ({"event_type": "refund", "amount": None}, "invalid_value"),
    ({"amount": -1.0}, "invalid_value"),
    ({"currency": "eur"}, "invalid_value"),
    ({"currency": "EURO"}, "invalid_value"),
    ({"event_type": "click"}, "invalid_value"),
    ({"ts": T0 + 300_001}, "future_timestamp"),
    ({"ts": T0 - 60_001}, "late"),
])
def test_field_rules(over: dict[str, Any], reason: str) -> None:
    assert validate(rec(encode(event(**over), V1)))[1] == [reason]


def test_boundaries_are_inclusive() -> None:
    ok = [rec(encode(event(event_id="a", ts=T0 + 300_000), V1)),
          rec(encode(event(event_id="b", ts=T0 - 60_000), V1), offset=1),
          rec(encode(event(event_id="c", event_type="page_view", amount=None, currency=None), V1),
              offset=2)]
    events, bad = validate(*ok)
    assert bad == [] and len(events) == 3


def test_oversize_wins_over_everything() -> None:
    cfg = ValidationConfig(max_record_bytes=100)
    assert validate(rec(b"\x01" + b"x" * 200), config=cfg)[1] == ["oversize"]


def test_rule_order_first_reason_wins() -> None:
    both = event(user_id="", amount=-1.0, ts=T0 + 10**9)
    assert validate(rec(encode(both, V1)))[1] == ["missing_field"]
    assert validate(rec(encode(event(amount=-1.0, ts=T0 + 10**9), V1)))[1] == ["invalid_value"]


def test_duplicate_first_by_offset_kept_within_horizon() -> None:
    first = rec(encode(event(), V1), offset=0)
    again = rec(encode(event(), V1), T0 + 5_000, offset=1)
    far = rec(encode(event(ts=T0 + 600_001), V1), T0 + 600_001, offset=2)
    events, bad = validate(first, again, far)
    assert [e["offset"] for e in events] == [0, 2]
    assert bad == ["duplicate"]


def test_late_uses_the_partition_ingest_clock() -> None:
    newer = rec(encode(event(event_id="a", ts=T0 + 100_000), V1), T0 + 100_000, offset=0)
    # record timestamp went backwards, but the partition already reached T0+100s
    older = rec(encode(event(event_id="b", ts=T0 + 30_000), V1), T0 + 30_000, offset=1)
    assert validate(newer, older)[1] == ["late"]


def test_idle_clock_moves_only_in_live_mode() -> None:
    for live, expect in ((False, []), (True, ["late"])):
        v = PartitionValidator(ValidationConfig(live=live), Decoder(REG).decode)
        v.validate(RawBatch("t", 0, 1, [], T0 + 3_600_000, idle=True))
        out = v.validate(RawBatch("t", 0, 1, [rec(encode(event(), V1))], T0 + 3_600_000))
        assert [q.reason for q in out.quarantined] == expect


def test_state_survives_snapshot() -> None:
    cfg = ValidationConfig()
    v = PartitionValidator(cfg, Decoder(REG).decode)
    v.validate(RawBatch("t", 0, 1, [rec(encode(event(), V1))], 0))
    restored = PartitionValidator(cfg, Decoder(REG).decode, v.snapshot())
    out = restored.validate(RawBatch("t", 0, 1, [rec(encode(event(), V1), offset=1)], 0))
    assert [q.reason for q in out.quarantined] == ["duplicate"]


def test_check_fields_accepts_null_currency_and_reasons_are_known() -> None:
    assert check_fields(event(currency=None)) is None
    assert set(REASONS) == {"oversize", "undecodable", "unknown_schema", "missing_field",
                            "invalid_value", "future_timestamp", "late", "duplicate"}


UUID = "0f8fad5b-d9cb-469f-a165-70867728950e"


def test_uuid_ids_dedupe_and_other_spellings_stay_distinct() -> None:
    first = rec(encode(event(event_id=UUID), V1), offset=0)
    again = rec(encode(event(event_id=UUID), V1), offset=1)
    upper = rec(encode(event(event_id=UUID.upper()), V1), offset=2)
    bare = rec(encode(event(event_id=UUID.replace("-", "")), V1), offset=3)
    events, bad = validate(first, again, upper, bare)
    assert [e["offset"] for e in events] == [0, 2, 3]
    assert bad == ["duplicate"]
    assert events[0]["event_id"] == UUID  # the event keeps its id as decoded


def test_snapshot_with_str_keys_still_dedupes() -> None:
    """A snapshot from before ids were keyed by dedup_key (plain str keys)."""
    cfg = ValidationConfig()
    old = pickle.dumps((T0, None, {UUID: T0, "e1": T0}, T0))
    restored = PartitionValidator(cfg, Decoder(REG).decode, old)
    out = restored.validate(RawBatch("t", 0, 1, [
        rec(encode(event(event_id=UUID), V1), offset=5),
        rec(encode(event(event_id="e1"), V1), offset=6)], 0))
    assert [q.reason for q in out.quarantined] == ["duplicate", "duplicate"]


@given(st.uuids(), st.text(min_size=1, max_size=40))
def test_dedup_key_is_one_to_one(u: uuid.UUID, other: str) -> None:
    canonical = str(u)
    assert dedup_key(canonical) == u.int
    assert dedup_key(other) == (uuid.UUID(other).int if other == canonical_form(other) else other)
    if other != canonical:
        assert dedup_key(other) != dedup_key(canonical)


def canonical_form(text: str) -> str | None:
    """``text`` if it is a lower-case canonical UUID string, else None."""
    try:
        return str(uuid.UUID(text)) if str(uuid.UUID(text)) == text else None
    except ValueError:
        return None


@pytest.mark.parametrize("spelling", [
    "0000_000-0000-4000-8000-000000000000",  # int() would accept the underscore
    " 0000000-0000-4000-8000-000000000000",  # ... and surrounding whitespace
    "00000000-0000-4000-8000-00000000000A",  # upper-case hex
    "00000000-0000-4000-8000-٠٠٠٠٠٠٠٠٠٠٠٠",  # Arabic-Indic digits int() reads as 0
    "00000000000040008000000000000000",
])
def test_non_canonical_spellings_keep_their_str(spelling: str) -> None:
    assert dedup_key(spelling) == spelling
    assert dedup_key(spelling) != dedup_key("00000000-0000-4000-8000-000000000000")
