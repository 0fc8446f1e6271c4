"""``TableWriter``: buffer Arrow tables for one Iceberg table, append them in few commits.

Rows are written as data files while they arrive, once ``file_bytes`` of them
are buffered, and a commit only writes the rest and appends the files. The
commit runs on the flow's worker thread, and everything else on that worker
waits for it: writing a 100k-row buffer at commit time stalled it for 150-250
ms (and fed the freshness tail), the append of pre-written files takes ~15 ms
(measured on the ``log`` table). Memory is bounded by ``file_bytes`` too.

Retries happen in two layers. pyiceberg 0.12 itself retries a conflicting
commit (``commit.retry.num-retries``, default 4) by refreshing and re-applying
the snapshot update *without* rewriting data files — the cheap path. When it
gives up (or a table sets that property to 0), :class:`TableWriter` refreshes
and appends the same data files again, up to ``max_commit_attempts`` times;
files whose commit never lands (a crash, or every attempt failed) are orphans
for ``kappa maintain``.
Catalog or warehouse outages are waited out (logged, counted), never dropped.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.manifest import DataFile
from pyiceberg.partitioning import PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from kappa.errors import ServiceUnavailable, TerminalError, TransientError
from kappa.metrics import ICEBERG_COMMIT_SECONDS, SINK_ERRORS, SINK_ROWS, SINK_WRITE_SECONDS
from sinks.catalog import IcebergConfig
from sinks.sliced_append import append_files, write_files

log = logging.getLogger(__name__)
_T = TypeVar("_T")

WRITER_PROPERTY = "kappa.writer"
ROWS_PROPERTY = "kappa.rows"
TABLE_PROPERTY = "kappa.table"


def _fault_pause_inside_commit(table: str) -> None:
    """Fault injection for chaos tests: hold a commit open after its files are written.

    Only active when ``KAPPA_FAULT_COMMIT_PAUSE_S`` is set; touches
    ``KAPPA_FAULT_COMMIT_MARKER`` first so a test knows when to kill the process.
    """
    pause = os.environ.get("KAPPA_FAULT_COMMIT_PAUSE_S")
    if not pause:
        return
    marker = os.environ.get("KAPPA_FAULT_COMMIT_MARKER")
    if marker:
        Path(marker).write_text(table)
    time.sleep(float(pause))




def _ensure_table(catalog: SqlCatalog, config: IcebergConfig, name: str, schema: Schema,
                  spec: PartitionSpec) -> Table:
    """Create namespace and table unless they exist; safe when partitions race to create."""
    for attempt in range(3):
        try:
            catalog.create_namespace_if_not_exists(config.namespace)
            return catalog.create_table_if_not_exists(
                (config.namespace, name), schema=schema, partition_spec=spec,
                properties=dict(config.table_properties))
        except IntegrityError:
            # Another partition created the namespace between check and insert.
            if attempt == 2:
                raise
    raise AssertionError  # pragma: no cover - the loop returns or raises


class TableWriter:
    """Buffers Arrow tables for one Iceberg table and appends them in few, large commits.

    Guarantees:
        * The table (and namespace) exist after construction, with the given
          schema and spec; the loaded ``Table`` is kept, never reloaded per batch.
        * One :meth:`commit` is at most one snapshot; an empty buffer is none.
        * A commit conflict is retried after ``refresh()`` with jittered
          exponential backoff; the buffer is only cleared once the append landed.
        * Every snapshot summary carries ``kappa.writer``, ``kappa.rows``,
          ``kappa.table`` and whatever ``properties`` the caller passes (the
          exactly-once hook: source offsets covered by the commit).

    Not thread-safe: one writer belongs to one Bytewax partition.
    """

    def __init__(
        self,
        catalog: SqlCatalog,
        config: IcebergConfig,
        name: str,
        schema: Schema,
        spec: PartitionSpec,
        *,
        now_getter: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self._config = config
        self._now = now_getter
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._sink_label = f"iceberg:{name}"
        try:
            self._table = _ensure_table(catalog, config, name, schema, spec)
        except (SQLAlchemyError, OSError) as exc:
            msg = f"cannot create Iceberg table {config.namespace}.{name}: {exc}".splitlines()[0]
            raise ServiceUnavailable(msg) from exc
        if self._table.schema().as_struct() != schema.as_struct():
            msg = (f"Iceberg table {config.namespace}.{name} has a different schema than this "
                   "version writes; migrate it or write to a new namespace")
            raise TerminalError(msg)
        self._arrow_schema = self._table.schema().as_arrow()
        self._buffer: list[pa.Table] = []
        self._buffer_bytes = 0
        self._files: list[DataFile] = []
        """Written but not yet committed (their rows count in ``_rows``)."""
        self._rows = 0
        self._write_uuid = uuid.uuid4()
        self._counter = itertools.count(0)
        self._last_commit = self._now()

    @property
    def table(self) -> Table:
        """The loaded table object (refreshed only on a commit conflict)."""
        return self._table

    @property
    def buffered_rows(self) -> int:
        """Rows waiting for the next commit (in memory or in written files)."""
        return self._rows

    @property
    def pending_files(self) -> int:
        """Data files written since the last commit."""
        return len(self._files)

    def add(self, data: pa.Table) -> None:
        """Buffer ``data`` (cast to the table schema if it differs); empty tables are ignored.

        Once ``file_bytes`` are buffered they are written as data files (not yet
        committed); a warehouse outage is waited out, never dropped.

        Raises:
            TerminalError: ``data`` cannot be cast to the table's schema.
        """
        if data.num_rows == 0:
            return
        if not data.schema.equals(self._arrow_schema):
            try:
                data = data.cast(self._arrow_schema)
            except (pa.ArrowInvalid, ValueError) as exc:
                msg = f"rows for {self.name} do not match its schema: {exc}".splitlines()[0]
                raise TerminalError(msg) from exc
        self._buffer.append(data)
        self._buffer_bytes += data.nbytes
        self._rows += data.num_rows
        if self._buffer_bytes >= self._config.file_bytes:
            started = time.perf_counter()
            self._write_buffer()
            SINK_WRITE_SECONDS.labels(sink=self._sink_label).observe(time.perf_counter() - started)

    def _write_buffer(self) -> None:
        """Write the in-memory rows as data files (kept for the next commit)."""
        if not self._buffer:
            return
        data = self._buffer[0] if len(self._buffer) == 1 else pa.concat_tables(self._buffer)
        try:
            self._files += self._wait_out_outages(
                lambda: write_files(self._table.metadata, self._table.io, data,
                                    self._write_uuid, self._counter, self._config.file_bytes),
                "write data files of")
        except ValueError as exc:
            msg = f"Iceberg rejected rows for {self.name}: {exc}".splitlines()[0]
            raise TerminalError(msg) from exc
        self._buffer.clear()
        self._buffer_bytes = 0

    def _wait_out_outages(self, attempt: Callable[[], _T], what: str) -> _T:
        """``attempt()``, retried while the warehouse or catalog is unreachable."""
        outage = 0
        while True:
            try:
                return attempt()
            except (SQLAlchemyError, OSError) as exc:
                outage += 1
                self._pause_for_outage(exc, outage, what)

    def _pause_for_outage(self, exc: Exception, outage: int, what: str) -> None:
        """One wait of an outage (its ``outage``-th): counted, logged, backing off."""
        SINK_ERRORS.labels(sink=self._sink_label).inc()
        delay = min(self._config.outage_backoff_max_s,
                    self._config.backoff_base_s * 2 ** min(outage, 10))
        log.warning("cannot %s Iceberg table %s (%s); retry %d in %.2fs", what, self.name,
                    str(exc).splitlines()[0][:200], outage, delay)
        self._sleep(delay)

    def due(self, now: float | None = None) -> bool:
        """Whether to commit: rows buffered and the interval elapsed, or the buffer is full."""
        if self._rows == 0:
            return False
        now = self._now() if now is None else now
        return (self._rows >= self._config.max_buffer_rows
                or now - self._last_commit >= self._config.commit_interval_s)

    def maybe_commit(self, now: float | None = None,
                     properties: Mapping[str, str] | None = None) -> int:
        """Commit if :meth:`due`; returns the rows committed (0 when nothing was)."""
        return self.commit(properties) if self.due(now) else 0

    def commit(self, properties: Mapping[str, str] | None = None) -> int:
        """Append everything buffered as ONE snapshot; returns the rows committed.

        Args:
            properties: Extra snapshot summary entries (e.g. covered source offsets).

        Raises:
            TransientError: Still conflicting after ``max_commit_attempts``.
            ServiceUnavailable: The catalog or warehouse is unreachable.
            TerminalError: The rows are rejected by the table (schema mismatch).
        """
        if self._rows == 0:
            return 0
        started = time.perf_counter()
        self._write_buffer()
        rows = self._rows
        summary = {WRITER_PROPERTY: self._config.writer_id, ROWS_PROPERTY: str(rows),
                   TABLE_PROPERTY: self.name, **(properties or {})}
        self._append_with_retry(self._files, summary)
        elapsed = time.perf_counter() - started
        SINK_WRITE_SECONDS.labels(sink=self._sink_label).observe(elapsed)
        ICEBERG_COMMIT_SECONDS.labels(table=f"{self._config.namespace}.{self.name}").observe(elapsed)
        SINK_ROWS.labels(sink=self._sink_label).inc(rows)
        self._files = []
        self._rows = 0
        self._last_commit = self._now()
        return rows

    def _append_with_retry(self, files: list[DataFile], summary: dict[str, str]) -> None:
        attempts = self._config.max_commit_attempts
        attempt = 0
        outage = 0
        while True:
            attempt += 1
            try:
                with self._table.transaction() as tx:
                    append_files(tx, files, summary)
                    _fault_pause_inside_commit(self.name)
                return
            except CommitFailedException as exc:
                SINK_ERRORS.labels(sink=self._sink_label).inc()
                if attempt >= attempts:
                    msg = f"commit to {self.name} still conflicts after {attempts} attempts: {exc}"
                    raise TransientError(msg.splitlines()[0]) from exc
                cap = min(self._config.backoff_max_s, self._config.backoff_base_s * 2 ** attempt)
                delay = self._rng.uniform(0, cap)
                log.warning("commit to %s conflicted (attempt %d/%d), retrying in %.3fs",
                            self.name, attempt, attempts, delay)
                self._sleep(delay)
                self._refresh()
            except ValueError as exc:
                msg = f"Iceberg rejected rows for {self.name}: {exc}".splitlines()[0]
                raise TerminalError(msg) from exc
            except (SQLAlchemyError, OSError) as exc:
                # Catalog or warehouse unreachable: wait it out, never drop rows.
                outage += 1
                attempt -= 1
                self._pause_for_outage(exc, outage, "commit to")
                try:
                    self._table.refresh()
                except (SQLAlchemyError, OSError):
                    continue

    def _refresh(self) -> None:
        try:
            self._table.refresh()
        except (SQLAlchemyError, OSError) as exc:
            msg = f"cannot refresh Iceberg table {self.name}: {exc}".splitlines()[0]
            raise ServiceUnavailable(msg) from exc


