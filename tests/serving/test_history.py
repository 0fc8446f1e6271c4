"""Point-in-time retrieval against a brute-force reference (hypothesis), on a real SQLite catalog."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flows.views import USER_ACTIVITY_1M, FeatureView, Tumbling
from kappa.errors import ConfigError
from serving.history import get_historical_features, point_in_time_join, read_entity_file
from sinks.iceberg import open_catalog
from sinks.tables import feature_columns, features_schema, table_spec

MIN_US = 60_000_000
DAY_MIN = 1440
BASE_MIN = 29_453_760  # 2026-01-01 in epoch minutes
SHORT = FeatureView(name="short_ttl", entity="user_id", window=Tumbling(size_s=60),
                    features=USER_ACTIVITY_1M.features, ttl_s=600)
NAMES = USER_ACTIVITY_1M.feature_names

windows = st.dictionaries(
    st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 4 * DAY_MIN)),
    st.integers(0, 50), max_size=25)
queries = st.lists(st.tuples(st.sampled_from(["a", "b", "c", "zz"]),
                             st.one_of(st.none(), st.integers(-10, 5 * DAY_MIN))), max_size=25)


def reference(hist: dict[tuple[str, int], int], qs: list[tuple[str, int | None]],
              ttl_min: float | None) -> list[int | None]:
    out: list[int | None] = []
    for entity, t in qs:
        ends = [end for (e, end) in hist if e == entity and t is not None and end <= t]
        if not ends or (ttl_min is not None and t - max(ends) > ttl_min):  # type: ignore[operator]
            out.append(None)
        else:
            out.append(hist[(entity, max(ends))])
    return out


def history_table(view: FeatureView, hist: dict[tuple[str, int], int]) -> pa.Table:
    keys = sorted(hist)
    ends = [(BASE_MIN + end) * 60_000 for _, end in keys]
    values = [hist[k] for k in keys]
    return feature_columns(view, [e for e, _ in keys], [x - 60_000 for x in ends], ends,
                           {"event_count": values, "purchase_count": values,
                            "purchase_amount_sum": [v / 2 for v in values],
                            "distinct_items": values})


def query_table(qs: list[tuple[str, int | None]]) -> pa.Table:
    return pa.table({
        "user_id": [e for e, _ in qs],
        "timestamp": pa.array([None if t is None else (BASE_MIN + t) * MIN_US for _, t in qs],
                              pa.timestamp("us", tz="UTC")),
    })


@settings(max_examples=300, deadline=None)
@given(hist=windows, qs=queries, short=st.booleans())
def test_join_matches_brute_force(hist: dict[tuple[str, int], int],
                                  qs: list[tuple[str, int | None]], short: bool) -> None:
    view = SHORT if short else USER_ACTIVITY_1M
    q = query_table(qs)
    got = point_in_time_join(history_table(view, hist), view, NAMES, q.column("user_id").combine_chunks(),
                             q.column("timestamp").combine_chunks())
    assert got[f"{view.name}__event_count"].to_pylist() == reference(
        hist, qs, None if view.ttl_s is None else view.ttl_s / 60)
    assert got[f"{view.name}__purchase_amount_sum"].to_pylist() == [
        None if v is None else v / 2 for v in reference(hist, qs, view.ttl_s / 60)]  # type: ignore[operator]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Any:
    home = tmp_path_factory.mktemp("history")
    return open_catalog(f"sqlite:///{home / 'catalog.db'}", f"file://{home / 'warehouse'}")


_ns = itertools.count()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hist=windows, qs=queries)
def test_iceberg_history_matches_brute_force(catalog: Any, hist: dict[tuple[str, int], int],
                                             qs: list[tuple[str, int | None]]) -> None:
    namespace = f"h{next(_ns)}"
    view = USER_ACTIVITY_1M  # one-day TTL; history spans four days over daily partitions
    catalog.create_namespace(namespace)
    table = catalog.create_table((namespace, view.table), schema=features_schema(view),
                                 partition_spec=table_spec(view.table)[1])
    if hist:
        table.append(history_table(view, hist))
    got = get_historical_features(catalog, namespace, query_table(qs), [f"{view.name}:event_count",
                                                                        f"{view.name}:distinct_items"])
    assert got.column_names == ["user_id", "timestamp", f"{view.name}__event_count",
                                f"{view.name}__distinct_items"]
    assert got.column(f"{view.name}__event_count").to_pylist() == reference(hist, qs, DAY_MIN)


def test_files_cli_shapes_and_errors(catalog: Any, tmp_path: Path) -> None:
    namespace = "files"
    view = USER_ACTIVITY_1M
    catalog.create_namespace(namespace)
    table = catalog.create_table((namespace, view.table), schema=features_schema(view),
                                 partition_spec=table_spec(view.table)[1])
    table.append(history_table(view, {("a", 10): 7}))
    csv = tmp_path / "entities.csv"
    csv.write_text("user_id,timestamp\na,2026-01-01T00:09:00Z\na,2026-01-01T00:10:00Z\n"
                   "a,2026-01-01 00:30:00\n")
    entity_df = read_entity_file(csv)
    got = get_historical_features(catalog, namespace, entity_df, view.name)
    assert got.column(f"{view.name}__event_count").to_pylist() == [None, 7, 7]
    assert got.column(f"{view.name}__purchase_amount_sum").to_pylist() == [None, 3.5, 3.5]
    parquet = tmp_path / "entities.parquet"
    pq.write_table(pa.table({"entity": ["a"], "ts_ms": [(BASE_MIN + 11) * 60_000]}), parquet)
    got = get_historical_features(catalog, namespace, read_entity_file(parquet),
                                  f"{view.name}:event_count", timestamp_column="ts_ms")
    assert got.column(f"{view.name}__event_count").to_pylist() == [7]
    # a view whose table does not exist yet: all null, no error
    got = get_historical_features(catalog, namespace, entity_df, "user_session:session_event_count")
    assert got.column("user_session__session_event_count").null_count == 3
    with pytest.raises(ConfigError, match="no 'when' column"):
        get_historical_features(catalog, namespace, entity_df, view.name, timestamp_column="when")
    with pytest.raises(ConfigError, match="item_id"):
        get_historical_features(catalog, namespace, entity_df, "item_popularity_5m")
    with pytest.raises(ConfigError):
        read_entity_file(tmp_path / "x.json")
    pacsv.write_csv(pa.table({"user_id": ["a"], "timestamp": ["yesterday"]}), tmp_path / "bad.csv")
    with pytest.raises(ConfigError):
        get_historical_features(catalog, namespace, read_entity_file(tmp_path / "bad.csv"), view.name)


def test_history_command_writes_parquet(catalog: Any, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    import argparse

    from serving.commands import cmd_history

    view = USER_ACTIVITY_1M
    catalog.create_namespace("cli")
    table = catalog.create_table(("cli", view.table), schema=features_schema(view),
                                 partition_spec=table_spec(view.table)[1])
    table.append(history_table(view, {("a", 10): 7, ("b", 12): 4}))
    entities = tmp_path / "in.parquet"
    pq.write_table(query_table([("a", 11), ("b", 11), ("b", 13)]), entities)
    home = Path(catalog.properties["warehouse"][len("file://"):]).parent
    for name in ("KAPPA_REDIS_URL", "KAPPA_NAMESPACE", "KAPPA_REDIS_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAPPA_HOME", str(tmp_path))
    monkeypatch.setenv("KAPPA_CATALOG_URI", f"sqlite:///{home / 'catalog.db'}")
    monkeypatch.setenv("KAPPA_WAREHOUSE", catalog.properties["warehouse"])
    monkeypatch.setenv("KAPPA_NAMESPACE", "cli")
    out = tmp_path / "out" / "train.parquet"
    cmd_history(argparse.Namespace(entities=str(entities), out=str(out), timestamp_column="timestamp",
                                   features=f"{view.name}:event_count, {view.name}:distinct_items"))
    report = orjson.loads(capsys.readouterr().out)
    assert report["rows"] == 3 and report["namespace"] == "cli"
    assert report["non_null"] == {f"{view.name}__event_count": 2, f"{view.name}__distinct_items": 2}
    assert pq.read_table(out).column(f"{view.name}__event_count").to_pylist() == [7, None, 4]
