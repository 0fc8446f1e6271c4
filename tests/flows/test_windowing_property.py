"""Hypothesis: streaming validation + windowing equals the brute-force reference,
for random events under random partition interleavings, batch sizes and shard counts."""

from __future__ import annotations

import pickle
import random
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.features import FeatureConfig, FeatureShard, route
from flows.records import FeatureRow, HistoryBatch, RawBatch, RawRecord
from flows.validate import PartitionValidator, ValidationConfig
from flows.views import DEFAULT_VIEWS
from tests.reference import Rec, reference_online, reference_validate, reference_windows

LATENESS = 60_000
BASE = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def decode(value: bytes) -> tuple[dict[str, Any], int]:
    return orjson.loads(value), 1


event_st = st.fixed_dictionaries({
    "partition": st.integers(0, 2),
    "user": st.sampled_from(["u1", "u2", "u3", "u4"]),
    "item": st.sampled_from(["i1", "i2", "i3"]),
    "type": st.sampled_from(["page_view", "page_view", "add_to_cart", "purchase", "refund"]),
    "amount": st.sampled_from([0.1, 0.2, 1.0, 3.3, 10.0, 99.99]),
    "step_ms": st.one_of(st.integers(0, 90_000), st.integers(0, 2_400_000)),
    "delay_ms": st.integers(0, 75_000),
    "dup": st.booleans(),
})


def build_partitions(specs: list[dict[str, Any]]) -> dict[int, list[RawRecord]]:
    clocks = {0: BASE, 1: BASE, 2: BASE}
    parts: dict[int, list[RawRecord]] = {0: [], 1: [], 2: []}
    last_event: dict[int, bytes] = {}
    for n, s in enumerate(specs):
        p = s["partition"]
        clocks[p] += s["step_ms"]
        if s["dup"] and p in last_event:
            value = last_event[p]
        else:
            ev = {"event_id": f"e{n}", "user_id": s["user"], "item_id": s["item"],
                  "event_type": s["type"], "session_id": "s",
                  "amount": s["amount"] if s["type"] in ("purchase", "refund") else None,
                  "currency": "USD", "ts": clocks[p] - s["delay_ms"], "attributes": {}}
            value = orjson.dumps(ev)
            last_event[p] = value
        parts[p].append(RawRecord("t", p, len(parts[p]), clocks[p], s["user"].encode(), value))
    return parts


def expand(batches: list[HistoryBatch]) -> list[FeatureRow]:
    return [FeatureRow(view=b.view, entity=e, window_start_ms=s, window_end_ms=w, features=f,
                       final=True, seq=0) for b in batches for e, s, w, f in b.rows()]


def run_stream(parts: dict[int, list[RawRecord]], rnd: random.Random, shards: int,
               across_processes: bool = False) -> tuple[list[FeatureRow], list[FeatureRow]]:
    """``across_processes``: every shard batch is pickled as Bytewax sends it to another
    process (``flows.wire`` keeps only the fields the views read)."""
    cfg = ValidationConfig(allowed_lateness_ms=LATENESS)
    validators = {p: PartitionValidator(cfg, decode) for p in parts}
    shard_objs = {str(s): FeatureShard(DEFAULT_VIEWS, FeatureConfig(allowed_lateness_ms=LATENESS))
                  for s in range(shards)}
    cursors = {p: 0 for p in parts}
    history: list[FeatureRow] = []
    online: list[FeatureRow] = []
    while any(cursors[p] < len(parts[p]) for p in parts):
        p = rnd.choice([q for q in parts if cursors[q] < len(parts[q])])
        n = rnd.randint(1, 7)
        recs = parts[p][cursors[p]:cursors[p] + n]
        cursors[p] += len(recs)
        vb = validators[p].validate(RawBatch("t", p, len(parts), recs, 0))
        for key, sb in route(vb, DEFAULT_VIEWS, shards):
            if across_processes:
                sb = pickle.loads(pickle.dumps(sb))  # noqa: S301 - our own batch
            out = shard_objs[key].apply(sb)
            if out:
                history += expand(out.history)
                online += out.online
    for shard in shard_objs.values():
        out = shard.close_all()
        if out:
            history += expand(out.history)
            online += out.online
    return history, online


def redis_guard(rows: list[FeatureRow]) -> dict[tuple[str, str], FeatureRow]:
    """What the write-if-newer Lua script keeps: larger window_end, then larger seq."""
    store: dict[tuple[str, str], FeatureRow] = {}
    for r in rows:
        cur = store.get((r.view, r.entity))
        if cur is None or (r.window_end_ms, r.seq) > (cur.window_end_ms, cur.seq):
            store[(r.view, r.entity)] = r
    return store


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=st.lists(event_st, min_size=1, max_size=60), seed=st.integers(0, 10_000),
       shards=st.integers(1, 3), across_processes=st.booleans())
def test_streaming_equals_reference(specs: list[dict[str, Any]], seed: int, shards: int,
                                    across_processes: bool) -> None:
    parts = build_partitions(specs)
    history, online = run_stream(parts, random.Random(seed), shards, across_processes)

    recs = [Rec(r.partition, r.offset, r.timestamp_ms, len(r.value or b"") + len(r.key or b""),
                orjson.loads(r.value)) for rs in parts.values() for r in rs]
    counted, _ = reference_validate(recs, lateness_ms=LATENESS)

    store = redis_guard(online)
    for view in DEFAULT_VIEWS:
        expected = reference_windows(view, counted)
        got = [(r.entity, r.window_start_ms, r.window_end_ms) for r in history if r.view == view.name]
        assert len(got) == len(set(got)), f"{view.name}: a window was emitted twice"
        got_map = {(r.entity, r.window_start_ms, r.window_end_ms): r.feature_map()
                   for r in history if r.view == view.name}
        assert got_map == expected, view.name
        exp_online = reference_online(view, counted)
        got_online = {e: (r.window_start_ms, r.window_end_ms, r.feature_map())
                      for (v, e), r in store.items() if v == view.name}
        assert got_online == exp_online, view.name
        assert all(r.final for (v, _), r in store.items() if v == view.name)


def random_specs(rnd: random.Random, n: int) -> list[dict[str, Any]]:
    return [{
        "partition": rnd.randint(0, 2), "user": rnd.choice(["u1", "u2", "u3", "u4", "u5"]),
        "item": rnd.choice(["i1", "i2", "i3"]),
        "type": rnd.choice(["page_view", "page_view", "add_to_cart", "purchase", "refund"]),
        "amount": rnd.choice([0.1, 0.2, 1.0, 3.3, 10.0, 99.99]),
        "step_ms": rnd.choice([rnd.randint(0, 30_000), rnd.randint(0, 2_400_000)]),
        "delay_ms": rnd.randint(0, 75_000), "dup": rnd.random() < 0.05,
    } for _ in range(n)]


def test_large_random_streams_equal_reference() -> None:
    """Longer streams than hypothesis explores: many windows close mid-stream."""
    for seed in range(6):
        rnd = random.Random(seed)
        specs = random_specs(rnd, 1500)
        parts = build_partitions(specs)
        history, online = run_stream(parts, rnd, shards=1 + seed % 3)
        recs = [Rec(r.partition, r.offset, r.timestamp_ms, 0, orjson.loads(r.value))
                for rs in parts.values() for r in rs]
        counted, reasons = reference_validate(recs, lateness_ms=LATENESS)
        assert "late" in reasons.values() and "duplicate" in reasons.values()
        store = redis_guard(online)
        for view in DEFAULT_VIEWS:
            got = [(r.entity, r.window_start_ms, r.window_end_ms)
                   for r in history if r.view == view.name]
            assert len(got) == len(set(got)), f"{view.name}: a window was emitted twice"
            assert {(r.entity, r.window_start_ms, r.window_end_ms): r.feature_map()
                    for r in history if r.view == view.name} == reference_windows(view, counted)
            assert {e: (r.window_start_ms, r.window_end_ms, r.feature_map())
                    for (v, e), r in store.items() if v == view.name} == reference_online(
                        view, counted)
