"""Batches sent to another process: the fields views read, packed once, results unchanged."""

from __future__ import annotations

import pickle
import sys
from typing import Any

import pyarrow as pa
import pytest

import flows.records
from flows.features import FeatureConfig, FeatureShard, route
from flows.records import ShardBatch, TableRows, ValidatedBatch
from flows.views import DEFAULT_VIEWS, FeatureView
from flows.wire import event_fields, pack, unpack
from sinks.tables import empty_table

BASE = 1_767_225_600_000


def event(n: int, user: str, item: str, kind: str, amount: float | None) -> dict[str, Any]:
    return {"event_id": f"e{n}", "user_id": user, "event_type": kind, "item_id": item,
            "amount": amount, "currency": "USD", "ts": BASE + n * 7_000,
            "session_id": "s", "attributes": {"k": "v"}, "channel": "web", "topic": "t",
            "partition": 0, "offset": n, "ingest_ts": BASE + n * 7_000 + 5}


def batch(events: list[dict[str, Any]]) -> ValidatedBatch:
    return ValidatedBatch(topic="t", partition=0, partitions=1, events=events, quarantined=[],
                          clock_ms=max(e["ingest_ts"] for e in events), consumed=len(events))


def sample_events(n: int = 400) -> list[dict[str, Any]]:
    kinds = ["page_view", "add_to_cart", "purchase", "refund"]
    return [event(i, f"u{i % 37}", f"i{i % 11}", kinds[i % 4],
                  float(i % 9) if kinds[i % 4] in ("purchase", "refund") else None)
            for i in range(n)]


def test_views_read_entity_time_filter_and_feature_fields() -> None:
    assert event_fields(DEFAULT_VIEWS) == ("amount", "event_type", "ingest_ts", "item_id", "ts",
                                           "user_id")


def test_another_process_gets_the_fields_views_read_with_interned_ids() -> None:
    for _, sent in route(batch(sample_events(50)), DEFAULT_VIEWS, 2):
        got = pickle.loads(pickle.dumps(sent))
        assert isinstance(got, ShardBatch)
        assert (got.partition, got.partitions, got.clock_ms, got.shard, got.shards) == (
            sent.partition, sent.partitions, sent.clock_ms, sent.shard, sent.shards)
        for name, events in sent.events.items():
            assert got.events[name] == [{f: e[f] for f in sent.fields} for e in events]
            assert all(g[name] is sys.intern(g[name]) for g in got.events[name])


def test_a_batch_is_packed_once_however_often_it_is_pickled(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = flows.records.pack

    def counting(events: Any, fields: tuple[str, ...]) -> bytes:
        calls.append(1)
        return real(events, fields)

    monkeypatch.setattr(flows.records, "pack", counting)
    _, sent = route(batch(sample_events(20)), DEFAULT_VIEWS, 1)[0]
    assert pickle.dumps(sent) == pickle.dumps(sent)  # timely: length first, then the bytes
    assert len(calls) == 1


def test_without_fields_whole_events_travel() -> None:
    events = sample_events(5)
    sent = ShardBatch(partition=0, partitions=1, events={"user_id": events}, clock_ms=1)
    assert pickle.loads(pickle.dumps(sent)).events == {"user_id": events}


def run_shard(batches: list[ShardBatch], views: tuple[FeatureView, ...]) -> tuple[Any, Any]:
    shard = FeatureShard(views, FeatureConfig(allowed_lateness_ms=60_000))
    outputs = [shard.apply(b) for b in batches]
    outputs.append(shard.close_all())
    history = sorted((h.view, *row[:3], tuple(sorted(row[3].items())))
                     for o in outputs if o is not None for h in o.history for row in h.rows())
    online = sorted((r.view, r.entity, r.window_end_ms, r.seq, tuple(sorted(r.feature_map().items())))
                    for o in outputs if o is not None for r in o.online)
    return history, online


def test_shard_results_are_the_same_from_another_process() -> None:
    events = sample_events()
    chunks = [batch(events[i:i + 25]) for i in range(0, len(events), 25)]
    local = [sb for vb in chunks for key, sb in route(vb, DEFAULT_VIEWS, 2) if key == "1"]
    remote = [pickle.loads(pickle.dumps(sb)) for sb in local]
    expected = run_shard(local, DEFAULT_VIEWS)
    assert expected[0], "the sample closes windows"
    assert run_shard(remote, DEFAULT_VIEWS) == expected


def test_table_rows_travel_as_arrow_with_field_metadata() -> None:
    table = empty_table("events")
    sent = TableRows(table, shard="2", closed_until=9)
    got = pickle.loads(pickle.dumps(sent))
    assert got.rows.schema.equals(table.schema, check_metadata=True)
    assert (got.shard, got.closed_until) == ("2", 9)
    rows = TableRows(pa.table({"a": [1, None, 3], "b": ["x", "y", None]}))
    assert pickle.dumps(rows) == pickle.dumps(rows)
    assert pickle.loads(pickle.dumps(rows)).rows.equals(rows.rows)


def test_a_single_field_travels_as_well() -> None:
    events = {"user_id": [{"user_id": "u1", "ts": 1}, {"user_id": "u2", "ts": 2}]}
    assert unpack(pack(events, ("user_id",))) == {"user_id": [{"user_id": "u1"},
                                                              {"user_id": "u2"}]}
