"""Iceberg table definitions and their Arrow conversions (pure: no I/O beyond reading the .avsc).

Every table's Arrow schema is derived from its Iceberg schema with
``schema_to_pyarrow``, so what the converters build is exactly what
``Table.append`` checks against: same names, types, nullability and field ids.
Field ids are assigned explicitly and in the order the catalog's fresh-id
assignment uses (top-level fields first, then nested ids in pre-order), so a
created table keeps these very ids and a test can assert it.

Timestamps are Iceberg ``timestamptz`` (microseconds, UTC); every value on the
stream is epoch *milliseconds*, converted by one vectorised multiply per column.
"""

from __future__ import annotations

import functools
import json
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.transforms import DayTransform
from pyiceberg.types import (
    BinaryType,
    BooleanType,
    DoubleType,
    FloatType,
    IcebergType,
    IntegerType,
    ListType,
    LongType,
    MapType,
    NestedField,
    StringType,
    StructType,
    TimestamptzType,
)

from flows.records import Event, FeatureRow, Quarantined, RawRecord
from flows.views import DEFAULT_VIEWS, FeatureView
from kappa.errors import ConfigError, SchemaError

READER_SCHEMA_FILE = Path(__file__).resolve().parents[1] / "schemas" / "user_event_v2.avsc"
"""The Avro reader schema the ``events`` table mirrors."""

FIXED_TABLES = ("log", "events", "quarantine", "profiles")
FEATURES_PREFIX = "features_"
_PARTITION_FIELD_ID = 1000
_TS = pa.timestamp("us", tz="UTC")
_AVRO_PRIMITIVES: dict[str, IcebergType] = {
    "string": StringType(),
    "double": DoubleType(),
    "float": FloatType(),
    "long": LongType(),
    "int": IntegerType(),
    "boolean": BooleanType(),
    "bytes": BinaryType(),
}


def _day_spec(schema: Schema, column: str) -> PartitionSpec:
    source = schema.find_field(column)
    return PartitionSpec(PartitionField(source_id=source.field_id, field_id=_PARTITION_FIELD_ID,
                                        transform=DayTransform(), name=f"{column}_day"))


def _ms_to_ts(values: Sequence[int | None]) -> pa.Array:
    """Epoch-ms ints → ``timestamp[us, UTC]`` with one vectorised multiply."""
    return pc.multiply(pa.array(values, pa.int64()), 1000).cast(_TS)


# --------------------------------------------------------------------------- log
@functools.cache
def log_schema() -> Schema:
    """Bronze ``log``: every Kafka record exactly as consumed."""
    return Schema(
        NestedField(1, "topic", StringType(), required=True),
        NestedField(2, "partition", IntegerType(), required=True),
        NestedField(3, "offset", LongType(), required=True),
        NestedField(4, "record_ts", TimestamptzType(), required=True),
        NestedField(5, "key", BinaryType(), required=False),
        NestedField(6, "value", BinaryType(), required=False),
        NestedField(7, "headers", ListType(
            element_id=8,
            element=StructType(
                NestedField(9, "key", StringType(), required=True),
                NestedField(10, "value", BinaryType(), required=False),
            ),
            element_required=True,
        ), required=True),
    )


# ------------------------------------------------------------------------ events
def _avro_to_iceberg(avro_type: Any, next_id: Callable[[], int]) -> tuple[IcebergType, bool]:
    """One Avro field type → (Iceberg type, required); nested ids come from ``next_id``."""
    if isinstance(avro_type, list):
        branches = [t for t in avro_type if t != "null"]
        if len(branches) != 1 or len(avro_type) != 2:
            msg = f"only [null, X] unions are supported, got {avro_type!r}"
            raise SchemaError(msg)
        inner, _ = _avro_to_iceberg(branches[0], next_id)
        return inner, False
    if isinstance(avro_type, str):
        if avro_type not in _AVRO_PRIMITIVES:
            msg = f"unsupported Avro type {avro_type!r}"
            raise SchemaError(msg)
        return _AVRO_PRIMITIVES[avro_type], True
    if isinstance(avro_type, Mapping):
        kind, logical = avro_type.get("type"), avro_type.get("logicalType")
        if kind == "long" and logical == "timestamp-millis":
            return TimestamptzType(), True
        if kind == "map":
            key_id, value_id = next_id(), next_id()
            value, value_required = _avro_to_iceberg(avro_type["values"], next_id)
            return MapType(key_id=key_id, key_type=StringType(), value_id=value_id,
                           value_type=value, value_required=value_required), True
        if isinstance(kind, str) and logical is None:
            return _avro_to_iceberg(kind, next_id)
    msg = f"unsupported Avro type {avro_type!r}"
    raise SchemaError(msg)


def events_schema_from_avro(avsc: Mapping[str, Any]) -> Schema:
    """Derive the silver ``events`` schema from a parsed ``.avsc`` record schema.

    Mapping: string→string, double→double, ``["null", X]``→optional X,
    timestamp-millis long→timestamptz, map<string>→map<string, string>; then
    ``topic``, ``partition``, ``offset`` and ``ingest_ts`` are appended.

    Raises:
        SchemaError: On a type this table layout does not support.
    """
    avro_fields = list(avsc["fields"])
    top = len(avro_fields) + 4
    counter = iter(range(top + 1, 1_000_000))
    fields: list[NestedField] = []
    # Top-level ids first (1..top), nested ids after, in field order: the
    # catalog's fresh-id assignment produces exactly this numbering.
    for i, avro_field in enumerate(avro_fields, start=1):
        ice_type, required = _avro_to_iceberg(avro_field["type"], lambda: next(counter))
        fields.append(NestedField(i, avro_field["name"], ice_type, required=required))
    n = len(avro_fields)
    fields += [
        NestedField(n + 1, "topic", StringType(), required=True),
        NestedField(n + 2, "partition", IntegerType(), required=True),
        NestedField(n + 3, "offset", LongType(), required=True),
        NestedField(n + 4, "ingest_ts", TimestamptzType(), required=True),
    ]
    return Schema(*fields)


@functools.cache
def events_schema() -> Schema:
    """The ``events`` schema of the shipped reader schema (parsed once)."""
    try:
        avsc = json.loads(READER_SCHEMA_FILE.read_text())
    except (OSError, ValueError) as exc:
        msg = f"cannot read reader schema {READER_SCHEMA_FILE}: {exc}"
        raise SchemaError(msg) from exc
    return events_schema_from_avro(avsc)


# -------------------------------------------------------------------- quarantine
@functools.cache
def quarantine_schema() -> Schema:
    """``quarantine``: the record's coordinates, reason and original bytes."""
    return Schema(
        NestedField(1, "topic", StringType(), required=True),
        NestedField(2, "partition", IntegerType(), required=True),
        NestedField(3, "offset", LongType(), required=True),
        NestedField(4, "reason", StringType(), required=True),
        NestedField(5, "detail", StringType(), required=True),
        NestedField(6, "schema_id", IntegerType(), required=False),
        NestedField(7, "ingest_ts", TimestamptzType(), required=True),
        NestedField(8, "payload", BinaryType(), required=False),
    )


# ---------------------------------------------------------------------- profiles
PROFILE_COLUMNS: tuple[tuple[str, IcebergType, bool], ...] = (
    ("scope", StringType(), True),        # "events" or a view name
    ("field", StringType(), True),        # a field, a feature, or "_quality"
    ("count", LongType(), True),
    ("nulls", LongType(), False),
    ("null_rate", DoubleType(), False),
    ("min", DoubleType(), False),
    ("max", DoubleType(), False),
    ("mean", DoubleType(), False),
    ("stddev", DoubleType(), False),
    ("p50", DoubleType(), False),
    ("p90", DoubleType(), False),
    ("p99", DoubleType(), False),
    ("top", StringType(), False),         # JSON [[value, count], ...], most frequent first
    ("sketch", StringType(), False),      # JSON {bucket code: count} (flows.sketch)
    ("psi", DoubleType(), False),         # drift against the reference
    ("consumed", LongType(), False),      # the quality row's columns from here on
    ("valid", LongType(), False),
    ("completeness", DoubleType(), False),
    ("validity", DoubleType(), False),
    ("uniqueness", DoubleType(), False),
    ("timeliness", DoubleType(), False),
    ("reasons", StringType(), False),     # JSON {reason: count}
)


@functools.cache
def profiles_schema() -> Schema:
    """``profiles``: one row per closed profile window, scope and field (``flows.profiler``)."""
    fields = [NestedField(1, "window_start", TimestamptzType(), required=True),
              NestedField(2, "window_end", TimestamptzType(), required=True)]
    for i, (name, ice_type, required) in enumerate(PROFILE_COLUMNS, start=3):
        fields.append(NestedField(i, name, ice_type, required=required))
    return Schema(*fields)


def profile_rows(rows: list[dict[str, Any]]) -> pa.Table:
    """Profiler rows (dicts, epoch-ms windows) → rows of ``profiles``."""
    columns: list[pa.Array | list[Any]] = [_ms_to_ts([r["window_start"] for r in rows]),
                                           _ms_to_ts([r["window_end"] for r in rows])]
    columns.extend([r.get(name) for r in rows] for name, _, _ in PROFILE_COLUMNS)
    return _table(_fixed_arrow("profiles"), columns)


# ---------------------------------------------------------------------- features
@functools.cache
def features_schema(view: FeatureView) -> Schema:
    """``features_<view>``: final windows only, so no ``final`` column."""
    fields = [
        NestedField(1, view.entity, StringType(), required=True),
        NestedField(2, "window_start", TimestamptzType(), required=True),
        NestedField(3, "window_end", TimestamptzType(), required=True),
    ]
    for i, feat in enumerate(view.features, start=4):
        ice_type: IcebergType = LongType() if feat.dtype == "long" else DoubleType()
        fields.append(NestedField(i, feat.name, ice_type, required=not feat.nullable))
    return Schema(*fields)


# ------------------------------------------------------------------------- specs
def table_spec(name: str,
               views: Iterable[FeatureView] = DEFAULT_VIEWS) -> tuple[Schema, PartitionSpec]:
    """Schema and partition spec of a table by name.

    Args:
        name: ``log``, ``events``, ``quarantine`` or ``features_<view>``.
        views: Views that ``features_<view>`` names are resolved against.

    Raises:
        ConfigError: The name is not a known table.
    """
    if name == "log":
        return log_schema(), _day_spec(log_schema(), "record_ts")
    if name == "events":
        return events_schema(), _day_spec(events_schema(), "ts")
    if name == "quarantine":
        return quarantine_schema(), _day_spec(quarantine_schema(), "ingest_ts")
    if name == "profiles":
        return profiles_schema(), _day_spec(profiles_schema(), "window_start")
    view = view_for_table(name, views)
    schema = features_schema(view)
    return schema, _day_spec(schema, "window_start")


def view_for_table(name: str, views: Iterable[FeatureView] = DEFAULT_VIEWS) -> FeatureView:
    """The view whose history table is ``name`` (``ConfigError`` when none is)."""
    views = tuple(views)
    for view in views:
        if view.table == name:
            return view
    known = [*FIXED_TABLES, *(v.table for v in views)]
    msg = f"unknown table {name!r}; known: {', '.join(known)}"
    raise ConfigError(msg)


@functools.cache
def _fixed_arrow(name: str) -> pa.Schema:
    return schema_to_pyarrow(table_spec(name)[0])


@functools.cache
def _features_arrow(view: FeatureView) -> pa.Schema:
    return schema_to_pyarrow(features_schema(view))


def arrow_schema(name: str, views: Iterable[FeatureView] = DEFAULT_VIEWS) -> pa.Schema:
    """The Arrow form of ``table_spec(name)``'s schema (with field ids), cached."""
    if name in FIXED_TABLES:
        return _fixed_arrow(name)
    return _features_arrow(view_for_table(name, views))


# -------------------------------------------------------------------- converters
def _table(target: pa.Schema, columns: Sequence[pa.Array | list[Any]]) -> pa.Table:
    arrays = [
        col if isinstance(col, pa.Array) else pa.array(col, type=field.type)
        for col, field in zip(columns, target, strict=True)
    ]
    return pa.Table.from_arrays(arrays, schema=target)


def log_rows(records: list[RawRecord]) -> pa.Table:
    """Raw Kafka records → rows of ``log`` (one row per record, order kept)."""
    if not records:
        return empty_table("log")
    # Records are named tuples in column order: zip(*) transposes in C.
    topics, partitions, offsets, stamps, keys, values, headers = zip(*records, strict=True)
    return _table(_fixed_arrow("log"), [topics, partitions, offsets, _ms_to_ts(stamps), keys,
                                        values, headers])


@functools.cache
def _event_plan() -> tuple[tuple[str, bool], ...]:
    """(field name, is timestamp) per column of ``events``."""
    return tuple((f.name, isinstance(f.field_type, TimestamptzType))
                 for f in events_schema().fields)


@functools.cache
def _event_getter() -> Callable[[Event], tuple[Any, ...]]:
    return operator.itemgetter(*(name for name, _ in _event_plan()))


def event_rows(events: list[Event]) -> pa.Table:
    """Valid events (``ts``/``ingest_ts`` as epoch ms) → rows of ``events``.

    Optional fields may be absent from an event dict; required ones must be present.
    """
    plan = _event_plan()
    if not events:
        return empty_table("events")
    try:
        # Decoded events carry every field: one C-level getter per event, then zip(*).
        columns: list[Any] = list(zip(*map(_event_getter(), events), strict=True))
    except KeyError:
        columns = [[e.get(name) for e in events] for name, _ in plan]
    return _table(_fixed_arrow("events"),
                  [_ms_to_ts(col) if is_ts else col
                   for col, (_, is_ts) in zip(columns, plan, strict=True)])


def quarantine_rows(items: list[Quarantined]) -> pa.Table:
    """Quarantined records → rows of ``quarantine`` (payload = original value bytes)."""
    return _table(_fixed_arrow("quarantine"), [
        [q.record.topic for q in items],
        [q.record.partition for q in items],
        [q.record.offset for q in items],
        [q.reason for q in items],
        [q.detail for q in items],
        [q.schema_id for q in items],
        _ms_to_ts([q.record.timestamp_ms for q in items]),
        [q.record.value for q in items],
    ])


def feature_rows(view: FeatureView, rows: list[FeatureRow]) -> pa.Table:
    """Final windows of ``view`` → rows of ``features_<view>``.

    The caller passes final windows only (the table has no ``final`` column).
    """
    columns: list[pa.Array | list[Any]] = [
        [r.entity for r in rows],
        _ms_to_ts([r.window_start_ms for r in rows]),
        _ms_to_ts([r.window_end_ms for r in rows]),
    ]
    maps = [r.feature_map() for r in rows]
    for name in view.feature_names:
        columns.append([m.get(name) for m in maps])
    return _table(_features_arrow(view), columns)


def feature_columns(view: FeatureView, entities: list[str], starts: list[int], ends: list[int],
                    features: dict[str, list[Any]]) -> pa.Table:
    """Final windows of ``view`` given column by column → rows of ``features_<view>``."""
    columns: list[pa.Array | list[Any]] = [entities, _ms_to_ts(starts), _ms_to_ts(ends)]
    columns.extend(features[name] for name in view.feature_names)
    return _table(_features_arrow(view), columns)


def empty_table(name: str, views: Iterable[FeatureView] = DEFAULT_VIEWS) -> pa.Table:
    """A zero-row table of ``name``: a commit tick for the Iceberg sink."""
    return arrow_schema(name, views).empty_table()
