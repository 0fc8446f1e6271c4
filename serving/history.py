"""Point-in-time-correct training sets from the Iceberg feature history.

For every row ``(entity, t)`` of an entity table and every requested view, the
answer is the feature values of that entity's latest *final* window with
``window_end <= t`` — a window that had closed, in event time, by ``t``, so no
value from the future leaks into a training row. When that window ended more
than the view's TTL before ``t`` the values are null (the online store would
have called it stale), as they are when there is no such window.

Reading is pruned: a window with ``window_end <= t`` has ``window_start < t``
(``<=`` for a one-event session), and the tables are partitioned by
``day(window_start)``, so the scan filter ``window_start <= max(t)`` (plus
``window_end >= min(t) - TTL`` and the entity set) skips whole partitions and
files. The join itself is one sort of history and queries together followed by
a running maximum (:func:`asof_indices`): O(n log n), all in Arrow compute kernels.

Output columns: the entity table's columns, then ``{view}__{feature}`` per
requested feature, rows in input order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.expressions import And, BooleanExpression, GreaterThanOrEqual, In, LessThanOrEqual

from flows.views import DEFAULT_VIEWS, FeatureView, views_by_name
from kappa.errors import ConfigError
from serving.core import make_plan
from sinks.tables import arrow_schema

_TS = pa.timestamp("us", tz="UTC")
MAX_IN_FILTER = 10_000
"""Above this many distinct entities the scan filters by time only, entities after."""


def read_entity_file(path: str | Path) -> pa.Table:
    """An entity table from a ``.parquet`` or ``.csv`` file.

    Raises:
        ConfigError: The file is missing, unreadable or of another format.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pq.read_table(path)
        if suffix == ".csv":
            return pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(
                timestamp_parsers=[pacsv.ISO8601]))
    except (OSError, pa.ArrowInvalid) as exc:
        msg = f"cannot read entity file {path}: {exc}".splitlines()[0]
        raise ConfigError(msg) from exc
    msg = f"entity file must be .parquet or .csv, got {path.name!r}"
    raise ConfigError(msg)


def _timestamps(table: pa.Table, column: str) -> pa.Array:
    """The query timestamps as ``timestamp[us, UTC]`` (naive values are taken as UTC)."""
    if column not in table.column_names:
        msg = f"entity table has no {column!r} column; columns: {', '.join(table.column_names)}"
        raise ConfigError(msg)
    col = table.column(column).combine_chunks()
    typ = col.type
    try:
        if pa.types.is_timestamp(typ):
            if typ.tz is None:
                col = pc.assume_timezone(col, "UTC")
            return col.cast(_TS)
        if pa.types.is_integer(typ):  # epoch milliseconds
            return pc.multiply(col.cast(pa.int64()), 1000).cast(_TS)
        if pa.types.is_string(typ) or pa.types.is_large_string(typ):
            # A value without a zone offset is UTC.
            zoned = pc.match_substring_regex(col, r"(Z|[+-]\d\d:?\d\d)$")
            col = pc.if_else(zoned, col, pc.binary_join_element_wise(col, "Z", ""))
            return col.cast(_TS)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        msg = f"column {column!r} is not a timestamp: {exc}".splitlines()[0]
        raise ConfigError(msg) from exc
    msg = f"column {column!r} must be a timestamp, epoch-ms integer or ISO-8601 string, got {typ}"
    raise ConfigError(msg)


def _entities(table: pa.Table, view: FeatureView) -> pa.Array:
    for name in (view.entity, "entity"):
        if name in table.column_names:
            return table.column(name).combine_chunks().cast(pa.string())
    msg = (f"entity table needs a {view.entity!r} (or 'entity') column for view {view.name!r}; "
           f"columns: {', '.join(table.column_names)}")
    raise ConfigError(msg)


def asof_indices(hist_entities: pa.Array, hist_ends_us: pa.Array, query_entities: pa.Array,
                 query_ts_us: pa.Array) -> pa.Array:
    """For each query, the history row of the same entity with the largest end <= its time.

    Args:
        hist_entities: Entity of each history row (any order).
        hist_ends_us: Window end of each history row, epoch µs (int64).
        query_entities: Entity of each query.
        query_ts_us: Time of each query, epoch µs (int64; null: no answer).

    Returns:
        int64 indices into the history rows, null where there is none. Ties on
        the end (which a well-formed history never has per entity) pick the last.
    """
    n_hist, n_query = len(hist_entities), len(query_entities)
    if n_hist == 0 or n_query == 0:
        return pa.nulls(n_query, pa.int64())
    codes = pa.concat_arrays([hist_entities.cast(pa.string()),
                              query_entities.cast(pa.string())]).dictionary_encode().indices
    both = pa.table({
        "code": codes,
        "time": pa.concat_arrays([hist_ends_us.cast(pa.int64()), query_ts_us.cast(pa.int64())]),
        # History sorts before a query at the same time: window_end <= t is allowed.
        "kind": pa.concat_arrays([pa.repeat(0, n_hist).cast(pa.int8()),
                                  pa.repeat(1, n_query).cast(pa.int8())]),
    })
    order = pc.sort_indices(both, sort_keys=[("code", "ascending"), ("time", "ascending"),
                                             ("kind", "ascending")])
    kind_sorted = both.column("kind").combine_chunks().take(order)
    is_hist = pc.equal(kind_sorted, 0)
    position = pc.subtract(pc.cumulative_sum(pa.repeat(1, n_hist + n_query).cast(pa.int64())), 1)
    last_hist = pc.cumulative_max(pc.if_else(is_hist, position, -1))
    found = order.take(pc.max_element_wise(last_hist, 0))
    same = pc.fill_null(pc.and_(pc.greater_equal(last_hist, 0),
                                pc.equal(codes.take(found), codes.take(order))), False)
    answer = pc.if_else(same, found.cast(pa.int64()), pa.scalar(None, pa.int64()))
    is_query = pc.invert(is_hist)
    query_index = pc.subtract(order.filter(is_query).cast(pa.int64()), n_hist)
    out = answer.filter(is_query).take(pc.sort_indices(query_index))
    usable = pc.and_(query_ts_us.is_valid(), query_entities.is_valid())
    return pc.if_else(usable, out, pa.scalar(None, pa.int64()))


def _scan(catalog: Catalog, namespace: str, view: FeatureView, names: Sequence[str],
          entities: pa.Array, t_min_us: int, t_max_us: int) -> pa.Table:
    try:
        table = catalog.load_table(f"{namespace}.{view.table}")
    except NoSuchTableError:
        return arrow_schema(view.table, (view,)).empty_table().select(
            [view.entity, "window_end", *names])
    row_filter: BooleanExpression = LessThanOrEqual("window_start", t_max_us)  # type: ignore[call-arg,arg-type]  # pydantic signature
    if view.ttl_s is not None:
        row_filter = And(row_filter, GreaterThanOrEqual("window_end", t_min_us - view.ttl_s * 1_000_000))  # type: ignore[call-arg,arg-type]  # pydantic signature
    distinct = pc.unique(entities.drop_null())
    if len(distinct) <= MAX_IN_FILTER:
        row_filter = And(row_filter, In(view.entity, set(distinct.to_pylist())))  # type: ignore[call-arg,arg-type]  # pydantic signature
    scan = table.scan(row_filter=row_filter,
                      selected_fields=(view.entity, "window_end", *names))
    data = scan.to_arrow()
    if len(distinct) > MAX_IN_FILTER:
        data = data.filter(pc.is_in(data.column(view.entity), value_set=distinct))
    return data


def point_in_time_join(history: pa.Table, view: FeatureView, names: Sequence[str],
                       query_entities: pa.Array, query_ts: pa.Array) -> dict[str, pa.Array]:
    """The PIT values of ``names`` for each query (pure; ``history`` holds final windows).

    Returns:
        ``{"{view}__{feature}": array}`` aligned with the queries.
    """
    ts_us = query_ts.cast(_TS).cast(pa.int64())
    ends_us = history.column("window_end").combine_chunks().cast(_TS).cast(pa.int64())
    idx = asof_indices(history.column(view.entity).combine_chunks(), ends_us, query_entities, ts_us)
    if view.ttl_s is not None:
        too_old = pc.greater(pc.subtract(ts_us, ends_us.take(idx)), view.ttl_s * 1_000_000)
        idx = pc.if_else(pc.fill_null(too_old, False), pa.scalar(None, pa.int64()), idx)
    return {f"{view.name}__{name}": history.column(name).combine_chunks().take(idx)
            for name in names}


def get_historical_features(catalog: Catalog, namespace: str, entity_df: pa.Table,
                            features: str | Sequence[str], *,
                            views: Mapping[str, FeatureView] | None = None,
                            timestamp_column: str = "timestamp") -> pa.Table:
    """A training set: ``entity_df`` plus the PIT-correct value of each feature per row.

    Args:
        catalog: The Iceberg catalog.
        namespace: Namespace of the version to read (the current one, normally).
        entity_df: Rows of (entity, timestamp). The entity column is named as the
            view's entity (``user_id``/``item_id``) or ``entity``; the timestamp
            column is a timestamp (naive = UTC), epoch-ms integer or ISO-8601 string.
        features: A view name or ``view:feature`` references.
        views: Feature-view registry (default: the shipped views).
        timestamp_column: Name of the timestamp column.

    Returns:
        ``entity_df``'s columns then ``{view}__{feature}`` columns, in input row order;
        null where no final window had ended by the row's time or it is past the TTL.

    Raises:
        ConfigError: Unknown feature, or a missing/ill-typed entity or timestamp column.
    """
    plan = make_plan(features, views if views is not None else views_by_name(DEFAULT_VIEWS))
    query_ts = _timestamps(entity_df, timestamp_column)
    out = entity_df
    valid_ts = query_ts.drop_null()
    for view, names in plan.views:
        query_entities = _entities(entity_df, view)
        if len(valid_ts):
            bounds: Any = pc.min_max(valid_ts.cast(pa.int64()))
            history = _scan(catalog, namespace, view, names, query_entities,
                            bounds["min"].as_py(), bounds["max"].as_py())
        else:
            history = _scan(catalog, namespace, view, names, query_entities, 0, -1)
        for name, column in point_in_time_join(history, view, names, query_entities,
                                               query_ts).items():
            out = out.append_column(name, column)
    return out
