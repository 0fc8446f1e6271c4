"""Replay input from the Iceberg ``log`` archive, for ranges Kafka no longer retains.

The live flow archives every consumed record exactly as it came off the log
(topic, partition, offset, record timestamp, key, value, headers), so reading
the archive in partition/offset order gives the dataflow byte-identical input,
and therefore identical features, however old the range is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from flows.lifecycle import stop_requested
from flows.records import RawBatch, RawRecord
from kappa.metrics import EVENTS_CONSUMED


@dataclass(frozen=True, kw_only=True)
class ArchiveRange:
    """Offsets ``[start, end)`` of one partition to read from the archive."""

    partition: int
    start: int
    end: int


@dataclass(frozen=True, kw_only=True)
class ArchiveConfig:
    """The archive table and what to read from it."""

    table: Any
    """A loaded pyiceberg ``Table`` (the base namespace's ``log``)."""
    topic: str
    ranges: dict[int, ArchiveRange]
    partitions: int
    batch_size: int = 5000


def archived_range(table: Any, partition: int, start: int, end: int) -> pa.Table:
    """Archived records of one partition in ``[start, end)``, sorted by offset."""
    rows = table.scan(row_filter=f"partition = {partition} AND offset >= {start} "
                                 f"AND offset < {end}").to_arrow()
    return rows.sort_by("offset")


def offset_at_time(table: Any, partition: int, ts_ms: int) -> int | None:
    """First archived offset of ``partition`` with record_ts >= ``ts_ms`` (None: none)."""
    moment = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
    rows = table.scan(row_filter=f"partition = {partition} AND record_ts >= '{moment.isoformat()}'",
                      selected_fields=("offset",)).to_arrow()
    if rows.num_rows == 0:
        return None
    return int(pc.min(rows["offset"]).as_py())


def archive_extent(table: Any, partition: int) -> tuple[int, int] | None:
    """(first offset, last offset + 1) archived for ``partition``."""
    rows = table.scan(row_filter=f"partition = {partition}",
                      selected_fields=("offset",)).to_arrow()
    if rows.num_rows == 0:
        return None
    return int(pc.min(rows["offset"]).as_py()), int(pc.max(rows["offset"]).as_py()) + 1


Continuation = Callable[[int], StatefulSourcePartition[RawBatch, int]]
"""Builds the reader that takes over at an offset (Kafka, for the retained part)."""


class _ArchiveReader(StatefulSourcePartition[RawBatch, int]):
    def __init__(self, config: ArchiveConfig, partition: int, resume: int | None,
                 then: Continuation | None) -> None:
        self._config = config
        self._partition = partition
        rng = config.ranges.get(partition)
        self._next = resume if resume is not None else (rng.start if rng else 0)
        self._end = rng.end if rng else 0
        self._rows: pa.Table | None = None
        self._pos = 0
        self._then_factory = then
        self._then: StatefulSourcePartition[RawBatch, int] | None = None
        self._counter = EVENTS_CONSUMED.labels(config.topic)

    def _load(self) -> None:
        self._rows = archived_range(self._config.table, self._partition, self._next, self._end)
        self._pos = 0

    def next_batch(self) -> list[RawBatch]:
        if stop_requested():
            raise StopIteration
        if self._next >= self._end:
            if self._then is None and self._then_factory is not None:
                self._then = self._then_factory(self._next)
            if self._then is not None:
                return list(self._then.next_batch())
            raise StopIteration
        if self._rows is None:
            self._load()
        assert self._rows is not None
        if self._pos >= self._rows.num_rows:
            self._next = self._end  # the archive has nothing more in range
            return []
        chunk = self._rows.slice(self._pos, self._config.batch_size)
        self._pos += chunk.num_rows
        topic, part = self._config.topic, self._partition
        records = [
            RawRecord(topic, part, off, int(ts.timestamp() * 1000) if ts else 0, key, value,
                      tuple((h["key"], h["value"]) for h in headers or ()))
            for off, ts, key, value, headers in zip(
                chunk["offset"].to_pylist(), chunk["record_ts"].to_pylist(),
                chunk["key"].to_pylist(), chunk["value"].to_pylist(),
                chunk["headers"].to_pylist(), strict=True)
        ]
        self._next = records[-1].offset + 1
        self._counter.inc(len(records))
        return [RawBatch(topic, part, self._config.partitions, records, 0)]

    def next_awake(self) -> Any:
        return self._then.next_awake() if self._then is not None else None

    def snapshot(self) -> int:
        if self._then is not None:
            return int(self._then.snapshot())
        return self._next

    def close(self) -> None:
        if self._then is not None:
            self._then.close()


class ArchiveSource(FixedPartitionedSource[RawBatch, int]):
    """One partition per source partition; resume state is the next offset.

    With ``kafka`` given, a partition continues from Kafka once its archive range
    is done (``auto`` replays: the archive for what Kafka no longer retains).
    """

    def __init__(self, config: ArchiveConfig, kafka: FixedPartitionedSource[RawBatch, int] | None
                 = None) -> None:
        self._config = config
        self._kafka = kafka

    def list_parts(self) -> list[str]:
        """Every source partition of the replay."""
        return [str(p) for p in range(self._config.partitions)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None
                   ) -> StatefulSourcePartition[RawBatch, int]:
        """Resume inside the archive range, or in Kafka past it."""
        partition = int(for_part)
        rng = self._config.ranges.get(partition)
        kafka = self._kafka
        then: Continuation | None = None
        if kafka is not None:
            def then(offset: int) -> StatefulSourcePartition[RawBatch, int]:
                return kafka.build_part(step_id, for_part, offset)
        if then is not None and rng is not None and resume_state is not None \
                and resume_state >= rng.end:
            return then(resume_state)
        return _ArchiveReader(self._config, partition, resume_state, then)
