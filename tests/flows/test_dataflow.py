"""The dataflow wiring under Bytewax's own test runner (no services)."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from bytewax.testing import TestingSink, TestingSource, run_main

from flows.dataflow import STATEFUL_STEPS, FlowConfig, FlowSinks, build_flow
from flows.features import FeatureConfig
from flows.profiler import ProfileConfig
from flows.records import FeatureRow, Quarantined, RawBatch, RawRecord
from flows.validate import ValidationConfig
from flows.views import DEFAULT_VIEWS
from schemas.registry import FileRegistry
from schemas.serde import Decoder, encode

REG = FileRegistry()
T0 = 1_767_225_600_000


def make_flow(batches: list[RawBatch], live: bool = False) -> tuple[Any, dict[str, list[Any]]]:
    out: dict[str, list[Any]] = {"iceberg": [], "redis": [], "dlq": []}
    config = FlowConfig(name="t", topic="t", views=DEFAULT_VIEWS,
                        validation=ValidationConfig(live=live),
                        features=FeatureConfig(live=live, report_progress=True), shards=3,
                        profiles=ProfileConfig(shards=3))
    sinks = FlowSinks(iceberg=TestingSink(out["iceberg"]), redis=TestingSink(out["redis"]),
                      dlq=TestingSink(out["dlq"]))
    return build_flow(config, TestingSource(batches), sinks, lambda: Decoder(REG).decode), out


def good(i: int, user: str, ts: int) -> bytes:
    return encode({"event_id": f"e{i}", "user_id": user, "event_type": "purchase",
                   "item_id": f"i{i % 3}", "amount": 2.5, "currency": "USD", "ts": ts,
                   "session_id": "s", "attributes": {}}, REG.get(1))


def test_stateful_step_ids_are_pinned() -> None:
    """Renaming these orphans recovery state: change them only with a migration."""
    flow, _ = make_flow([])
    ids = {step.step_id.split(".", 1)[1] for step in flow.substeps}
    assert STATEFUL_STEPS == ("kafka_in", "validate", "features", "profiles", "iceberg_out",
                              "dlq_out")
    for step in STATEFUL_STEPS:
        assert step in ids
    assert {"iceberg_out", "redis_out", "dlq_out"} <= ids


def test_bounded_flow_routes_everything_and_closes_all_windows() -> None:
    recs0 = [RawRecord("t", 0, i, T0 + i * 1000, b"u1", good(i, "u1", T0 + i * 1000))
             for i in range(5)]
    recs0.append(RawRecord("t", 0, 5, T0 + 6000, b"u1", b"junk"))
    recs1 = [RawRecord("t", 1, i, T0 + i * 1000, b"u2", good(100 + i, "u2", T0 + i * 1000))
             for i in range(3)]
    batches = [RawBatch("t", 0, 2, recs0[:3], 0), RawBatch("t", 1, 2, recs1, 0),
               RawBatch("t", 0, 2, recs0[3:], 0)]
    flow, out = make_flow(batches)
    run_main(flow)

    tables: dict[str, int] = {}
    for name, item in out["iceberg"]:
        assert isinstance(item.rows, pa.Table)
        tables[name] = tables.get(name, 0) + item.rows.num_rows
    assert tables["log"] == 9 and tables["events"] == 8 and tables["quarantine"] == 1
    assert tables["features_user_activity_1m"] == 2
    assert tables["features_user_session"] == 2
    assert tables["features_item_popularity_5m"] == 3
    profiles = pa.concat_tables([item.rows for name, item in out["iceberg"] if name == "profiles"])
    quality = profiles.filter(pa.compute.equal(profiles["field"], "_quality")).to_pylist()
    assert sum(r["consumed"] for r in quality) == 9 and sum(r["valid"] for r in quality) == 8
    assert {r["scope"] for r in profiles.to_pylist()} == {"events", *(v.name for v in DEFAULT_VIEWS)}
    dlq: list[Quarantined] = [q for key, batch in out["dlq"] for q in batch
                              if key == str(q.record.partition)]
    assert [q.reason for q in dlq] == ["undecodable"]
    online: list[FeatureRow] = [r for batch in out["redis"] for r in batch]
    assert all(r.final for r in online)
    assert {(r.view, r.entity) for r in online} >= {("user_activity_1m", "u1"),
                                                    ("user_activity_1m", "u2")}
    u1 = next(r for r in online if r.view == "user_session" and r.entity == "u1")
    assert u1.feature_map() == {"session_event_count": 5, "session_duration_s": 4.0,
                           "session_purchase_amount": 12.5}
