"""Iceberg sink: few, large appends, one committer per table.

Each table is one Bytewax partition of :class:`IcebergSink`, so exactly one
worker ever commits to a given table (no self-inflicted commit conflicts). A
partition buffers Arrow tables and appends them *once* per commit interval (or
when the buffer grows past ``max_buffer_rows``), recording what it wrote in the
snapshot summary. Conflicts with outside writers are retried with jittered
exponential backoff after refreshing the table; anything else fails loudly.

"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from typing_extensions import override

from flows.records import TableRows
from flows.views import DEFAULT_VIEWS, FeatureView
from kappa.errors import ConfigError
from sinks.catalog import (  # noqa: F401 - re-exported: the sink's public surface
    CATALOG_NAME,
    STREAMING_TABLE,
    IcebergConfig,
    open_catalog,
    retry_outages,
)
from sinks.ledger import (
    COVERAGE_PROPERTY,
    Coverage,
    drop_closed_windows,
    drop_committed_offsets,
    drop_profiled_windows,
    offsets_of,
    profile_coverage,
    read_coverage,
)
from sinks.maintenance import Maintainer
from sinks.tables import table_spec, view_for_table
from sinks.writer import ROWS_PROPERTY, TABLE_PROPERTY, WRITER_PROPERTY, TableWriter  # noqa: F401

log = logging.getLogger(__name__)


class _IcebergTablePartition(StatefulSinkPartition[TableRows, None]):
    """The single committer of one table, idempotent under replays.

    On build it reads the table's coverage (``sinks.ledger``) and from then on
    drops every incoming row that coverage already includes; every commit
    records the new cumulative coverage in the same snapshot, atomically.
    Send an empty ``TableRows`` as a tick to let a quiet stream commit on time.
    Table upkeep (``maintainer``) runs right after a successful commit, so it
    never races this table's only writer.
    """

    def __init__(self, writer: TableWriter, view: FeatureView | None,
                 commit_on_snapshot: bool, maintainer: Maintainer | None = None) -> None:
        self._writer = writer
        self._view = view
        self._commit_on_snapshot = commit_on_snapshot
        self._maintainer = maintainer
        self._committed = read_coverage(writer.table)
        self._pending = Coverage()

    @override
    def write_batch(self, values: list[TableRows]) -> None:
        for item in values:
            rows = item.rows
            if rows.num_rows:
                if self._writer.name == "profiles":
                    rows = drop_profiled_windows(rows, self._committed.closed)
                    self._pending.merge(Coverage(closed=profile_coverage(rows)))
                elif self._view is None:
                    rows = drop_committed_offsets(rows, self._committed.offsets)
                    self._pending.merge(Coverage(offsets=offsets_of(rows)))
                else:
                    rows = drop_closed_windows(self._view, rows, item.shard or "0",
                                               self._committed.closed)
            if self._view is not None and item.shard is not None and item.closed_until:
                self._pending.merge(Coverage(closed={item.shard: item.closed_until}))
            self._writer.add(rows)
        if not self._commit_on_snapshot and self._writer.due():
            self._commit()

    def _commit(self) -> None:
        if self._writer.buffered_rows == 0:
            return
        coverage = Coverage()
        coverage.merge(self._committed)
        coverage.merge(self._pending)
        self._writer.commit({COVERAGE_PROPERTY: coverage.to_property()})
        self._committed = coverage
        self._pending = Coverage()
        if self._maintainer is not None:
            self._maintainer.after_commit(self._writer.table)

    @override
    def snapshot(self) -> None:
        """Called at the end of every epoch: with recovery on, commit everything now.

        The resume state lives in the table itself (its coverage), so nothing
        needs to be stored in Bytewax's recovery store.
        """
        if self._commit_on_snapshot:
            self._commit()

    @override
    def close(self) -> None:
        self._commit()


class IcebergSink(FixedPartitionedSink[TableRows, None]):
    """Writes ``(table_name, pa.Table)`` items, one partition (and committer) per table.

    Bytewax routes a key to ``sorted(all_parts)[part_fn(key) % len(all_parts)]``
    (its partition set is a ``BTreeSet`` of names, i.e. sorted by code point).
    Every worker lists the same table names, and ``part_fn`` returns a name's
    index in that sorted list, so each table lands on exactly one partition.
    """

    def __init__(self, config: IcebergConfig, tables: Sequence[str],
                 views: Iterable[FeatureView] = DEFAULT_VIEWS, *,
                 now_getter: Callable[[], float] = time.monotonic) -> None:
        """Validate the table names up front (pure, no I/O).

        Raises:
            ConfigError: No tables, or a name that is not a known table.
        """
        self._config = config
        self._views = tuple(views)
        self._now = now_getter
        self._tables = tuple(sorted(set(tables)))
        if not self._tables:
            msg = "IcebergSink needs at least one table"
            raise ConfigError(msg)
        for name in self._tables:
            table_spec(name, self._views)
        self._index = {name: i for i, name in enumerate(self._tables)}

    @override
    def list_parts(self) -> list[str]:
        return list(self._tables)

    @override
    def part_fn(self, item_key: str) -> int:
        try:
            return self._index[item_key]
        except KeyError:
            msg = f"IcebergSink got rows for unconfigured table {item_key!r}; has {self._tables}"
            raise ConfigError(msg) from None

    @override
    def build_part(self, step_id: str, for_part: str,
                   resume_state: Any | None) -> _IcebergTablePartition:
        # No resume state: the table's own coverage says what it holds (sinks.ledger).
        schema, spec = table_spec(for_part, self._views)
        view = view_for_table(for_part, self._views) if for_part.startswith("features_") else None

        def build() -> _IcebergTablePartition:
            catalog = open_catalog(self._config.catalog_uri, self._config.warehouse)
            writer = TableWriter(catalog, self._config, for_part, schema, spec,
                                 now_getter=self._now)
            upkeep = self._config.maintenance
            maintainer = (Maintainer(upkeep, now_getter=self._now)
                          if upkeep is not None and upkeep.enabled else None)
            return _IcebergTablePartition(writer, view, self._config.commit_on_snapshot,
                                          maintainer)

        return retry_outages(build, f"open Iceberg table {for_part}", self._config)
