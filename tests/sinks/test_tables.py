"""Iceberg table layouts and their Arrow conversions (pure)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pyarrow as pa
import pytest
from pyiceberg.schema import assign_fresh_schema_ids
from pyiceberg.transforms import DayTransform
from pyiceberg.types import DoubleType, LongType, MapType, StringType, TimestamptzType

from flows.records import FeatureRow, Quarantined, RawRecord
from flows.views import DEFAULT_VIEWS, ITEM_POPULARITY_5M, USER_SPEND_1H
from kappa.errors import ConfigError, SchemaError
from sinks import tables

ALL_TABLES = ["log", "events", "quarantine", *(v.table for v in DEFAULT_VIEWS)]
T0 = 1_700_000_000_123


def ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def records() -> list[RawRecord]:
    return [
        RawRecord("t", 0, 5, T0, b"u1", b"\x00payload", (("h1", b"x"), ("h2", None))),  # type: ignore[arg-type]
        RawRecord("t", 3, 9, T0 + 1, None, None, ()),
    ]


def events() -> list[dict]:
    base = dict(event_id="e1", user_id="u1", event_type="purchase", item_id="i1", amount=9.5,
                currency="EUR", ts=T0, session_id="s1", attributes={"k": "v"}, channel="ios",
                topic="t", partition=1, offset=7, ingest_ts=T0 + 50)
    other = {**base, "event_id": "e2", "event_type": "page_view", "amount": None,
             "currency": None, "attributes": {}, "offset": 8, "channel": "web"}
    return [base, other]


def feature_row(view=USER_SPEND_1H, **features) -> FeatureRow:
    return FeatureRow(view=view.name, entity="u1", window_start_ms=T0, window_end_ms=T0 + 3_600_000,
                      features=features, final=True, seq=4, last_ingest_ms=T0)


def converted(name: str) -> pa.Table:
    if name == "log":
        return tables.log_rows(records())
    if name == "events":
        return tables.event_rows(events())
    if name == "quarantine":
        return tables.quarantine_rows([Quarantined(records()[0], "late", "too old", 3)])
    view = tables.view_for_table(name)
    return tables.feature_rows(view, [feature_row(view, **dict.fromkeys(view.feature_names, 1))])


@pytest.mark.parametrize("name", ALL_TABLES)
def test_arrow_schema_is_the_iceberg_schema(name: str) -> None:
    schema, _ = tables.table_spec(name)
    assert converted(name).schema == schema.as_arrow()
    assert tables.arrow_schema(name) == schema.as_arrow()


@pytest.mark.parametrize("name", ALL_TABLES)
def test_empty_input_gives_empty_table_of_the_schema(name: str) -> None:
    schema, _ = tables.table_spec(name)
    if name == "log":
        out = tables.log_rows([])
    elif name == "events":
        out = tables.event_rows([])
    elif name == "quarantine":
        out = tables.quarantine_rows([])
    else:
        out = tables.feature_rows(tables.view_for_table(name), [])
    assert out.num_rows == 0 and out.schema == schema.as_arrow()


@pytest.mark.parametrize("name", ALL_TABLES)
def test_field_ids_survive_catalog_fresh_id_assignment(name: str) -> None:
    schema, _ = tables.table_spec(name)
    assert assign_fresh_schema_ids(schema).as_struct() == schema.as_struct()


@pytest.mark.parametrize(("name", "column"), [("log", "record_ts"), ("events", "ts"),
                                              ("quarantine", "ingest_ts"),
                                              ("features_user_session", "window_start")])
def test_partition_spec_is_day_of_time_column(name: str, column: str) -> None:
    schema, spec = tables.table_spec(name)
    (field,) = spec.fields
    assert isinstance(field.transform, DayTransform)
    assert field.source_id == schema.find_field(column).field_id


def test_events_schema_follows_reader_schema() -> None:
    avsc = json.loads(tables.READER_SCHEMA_FILE.read_text())
    schema = tables.events_schema()
    names = [f.name for f in schema.fields]
    assert names == [f["name"] for f in avsc["fields"]] + ["topic", "partition", "offset",
                                                           "ingest_ts"]
    amount, ts_field = schema.find_field("amount"), schema.find_field("ts")
    assert amount.optional and amount.field_type == DoubleType()
    assert ts_field.required and ts_field.field_type == TimestamptzType()
    attrs = schema.find_field("attributes").field_type
    assert isinstance(attrs, MapType) and attrs.value_type == StringType() and attrs.value_required


def test_unsupported_avro_type_is_a_schema_error() -> None:
    avsc = {"type": "record", "name": "X",
            "fields": [{"name": "a", "type": ["null", "int", "string"]}]}
    with pytest.raises(SchemaError):
        tables.events_schema_from_avro(avsc)


def test_unknown_table_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="features_nope"):
        tables.table_spec("features_nope")


def test_log_round_trip_with_nulls_and_headers() -> None:
    rows = tables.log_rows(records()).to_pylist()
    assert rows == [
        {"topic": "t", "partition": 0, "offset": 5, "record_ts": ts(T0), "key": b"u1",
         "value": b"\x00payload", "headers": [{"key": "h1", "value": b"x"},
                                             {"key": "h2", "value": None}]},
        {"topic": "t", "partition": 3, "offset": 9, "record_ts": ts(T0 + 1), "key": None,
         "value": None, "headers": []},
    ]


def test_events_round_trip_with_nulls_and_empty_map() -> None:
    rows = tables.event_rows(events()).to_pylist()
    assert rows[0]["ts"] == ts(T0) and rows[0]["ingest_ts"] == ts(T0 + 50)
    assert rows[0]["attributes"] == [("k", "v")] and rows[1]["attributes"] == []
    assert rows[1]["amount"] is None and rows[1]["currency"] is None
    assert rows[0]["amount"] == 9.5 and rows[0]["channel"] == "ios"
    # microsecond precision is kept exactly
    assert tables.event_rows(events()).column("ts")[0].value == T0 * 1000


def test_quarantine_round_trip() -> None:
    rec = records()
    rows = tables.quarantine_rows([Quarantined(rec[0], "late", "too old", 3),
                                   Quarantined(rec[1], "undecodable", "empty", None)]).to_pylist()
    assert rows == [
        {"topic": "t", "partition": 0, "offset": 5, "reason": "late", "detail": "too old",
         "schema_id": 3, "ingest_ts": ts(T0), "payload": b"\x00payload"},
        {"topic": "t", "partition": 3, "offset": 9, "reason": "undecodable", "detail": "empty",
         "schema_id": None, "ingest_ts": ts(T0 + 1), "payload": None},
    ]


def test_feature_rows_types_and_nullable_features() -> None:
    out = tables.feature_rows(USER_SPEND_1H, [
        feature_row(purchase_count=0, purchase_amount_sum=0, purchase_amount_avg=None,
                    purchase_amount_max=None),
        feature_row(purchase_count=2, purchase_amount_sum=3.5, purchase_amount_avg=1.75,
                    purchase_amount_max=2.0),
    ])
    schema = tables.features_schema(USER_SPEND_1H)
    assert schema.find_field("purchase_count").field_type == LongType()
    assert schema.find_field("purchase_amount_max").optional
    assert schema.find_field("purchase_amount_sum").required
    assert "final" not in out.column_names
    assert out.to_pylist()[0] == {
        "user_id": "u1", "window_start": ts(T0), "window_end": ts(T0 + 3_600_000),
        "purchase_count": 0, "purchase_amount_sum": 0.0, "purchase_amount_avg": None,
        "purchase_amount_max": None}
    assert out.column("purchase_amount_avg").to_pylist() == [None, 1.75]


def test_entity_column_is_named_after_the_view_entity() -> None:
    assert tables.features_schema(ITEM_POPULARITY_5M).fields[0].name == "item_id"
