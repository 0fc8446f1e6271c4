"""Exactly-once Iceberg commits: a restarted committer skips what its table already holds."""

from __future__ import annotations

from dataclasses import replace

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flows.records import END_OF_INPUT, RawRecord, TableRows
from flows.views import USER_ACTIVITY_1M, USER_SESSION
from kappa.settings import Settings
from sinks import tables
from sinks.iceberg import IcebergConfig, IcebergSink, open_catalog
from sinks.ledger import COVERAGE_PROPERTY, Coverage, read_coverage

T0 = 1_767_225_600_000


@pytest.fixture
def config(settings: Settings) -> IcebergConfig:
    return replace(IcebergConfig.from_settings(settings), commit_on_snapshot=True)


def log_rows(offsets: range, partition: int = 0) -> TableRows:
    return TableRows(tables.log_rows([RawRecord("t", partition, o, T0 + o, b"k", b"v")
                                      for o in offsets]))


def activity(entities: list[str], minute: int, shard: str, until: int) -> TableRows:
    start = T0 + minute * 60_000
    rows = tables.feature_columns(
        USER_ACTIVITY_1M, entities, [start] * len(entities), [start + 60_000] * len(entities),
        {"event_count": [1] * len(entities), "purchase_count": [0] * len(entities),
         "purchase_amount_sum": [0.0] * len(entities), "distinct_items": [1] * len(entities)})
    return TableRows(rows, shard=shard, closed_until=until)


def run_part(sink: IcebergSink, table: str, items: list[TableRows], *, crash: bool = False) -> None:
    part = sink.build_part("iceberg_out", table, None)
    part.write_batch(items)
    if crash:
        return  # killed before the epoch ended: nothing committed
    part.snapshot()
    part.close()


@given(st.dictionaries(st.integers(0, 64), st.integers(0, 10**12)),
       st.dictionaries(st.sampled_from("0123"), st.integers(-(10**6), 2**62)))
def test_coverage_round_trips_and_merges(offsets: dict[int, int], closed: dict[str, int]) -> None:
    cov = Coverage(offsets=offsets, closed=closed)
    assert Coverage.from_property(cov.to_property()) == cov
    merged = Coverage(offsets={p: o - 1 for p, o in offsets.items()})
    merged.merge(cov)
    assert merged == cov


def test_replayed_offsets_are_committed_once(config: IcebergConfig) -> None:
    sink = IcebergSink(config, ["log"])
    run_part(sink, "log", [log_rows(range(0, 50)), log_rows(range(0, 20), partition=1)])
    run_part(sink, "log", [log_rows(range(30, 80))], crash=True)  # lost before commit
    run_part(sink, "log", [log_rows(range(30, 80)), log_rows(range(10, 30), partition=1)])
    table = open_catalog(config.catalog_uri, config.warehouse).load_table("kappa.log")
    got = table.scan().to_arrow().select(["partition", "offset"]).to_pylist()
    expected = [(0, o) for o in range(80)] + [(1, o) for o in range(30)]
    assert sorted((r["partition"], r["offset"]) for r in got) == expected
    assert read_coverage(table).offsets == {0: 79, 1: 29}
    assert COVERAGE_PROPERTY in table.current_snapshot().summary.additional_properties


def test_replayed_windows_are_committed_once(config: IcebergConfig) -> None:
    name = USER_ACTIVITY_1M.table
    sink = IcebergSink(config, [name])
    minute_end = T0 + 60_000
    run_part(sink, name, [activity(["a", "b"], 0, "0", minute_end), activity(["c"], 0, "1", minute_end)])
    # replay after a crash: shard 0 closes minute 0 again together with minute 1
    replay = activity(["a", "b", "d"], 0, "0", minute_end + 60_000)
    minute1 = activity(["a"], 1, "0", minute_end + 60_000)
    run_part(sink, name, [replay, minute1, activity(["e"], 1, "1", END_OF_INPUT)])
    table = open_catalog(config.catalog_uri, config.warehouse).load_table(f"kappa.{name}")
    rows = table.scan().to_arrow().to_pylist()
    keys = sorted((r["user_id"], r["window_start"].minute) for r in rows)
    # "d" in minute 0 of shard 0 is dropped: shard 0 had committed minute 0 already.
    assert keys == [("a", 0), ("a", 1), ("b", 0), ("c", 0), ("e", 1)]
    assert read_coverage(table).closed == {"0": minute_end + 60_000, "1": END_OF_INPUT}


def test_session_close_point_includes_gap(config: IcebergConfig) -> None:
    from sinks.ledger import close_points

    rows = tables.feature_columns(USER_SESSION, ["u"], [T0], [T0 + 1000],
                                  {"session_event_count": [2], "session_duration_s": [1.0],
                                   "session_purchase_amount": [0.0]})
    assert close_points(USER_SESSION, rows).to_pylist() == [T0 + 1000 + 1_800_000 + 1]
    assert isinstance(rows, pa.Table)
