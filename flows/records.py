"""The values that travel between dataflow steps.

Items on the stream are *batches*, never single events: Bytewax costs several
microseconds per item and per stateful call, so a Kafka poll becomes one item
and every downstream step loops over it in plain Python or Arrow.
All timestamps are integer milliseconds since the Unix epoch (UTC).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from flows.wire import pack, pack_table, unpack, unpack_table

END_OF_INPUT = 2**62
"""Close clock of a bounded run's final close: every window is final."""

Event = dict[str, Any]
"""A decoded, valid event: the reader-schema fields (``ts`` as epoch ms) plus
``topic``, ``partition``, ``offset`` and ``ingest_ts`` (the record timestamp, ms)."""


class RawRecord(NamedTuple):
    """One Kafka record exactly as consumed.

    A named tuple, not a frozen dataclass: one is built per consumed record, and a
    frozen dataclass costs three times as much to create (measured 0.91 vs 0.29 µs);
    ``zip(*records)`` also turns a poll into columns at C speed (``sinks.tables``).
    """

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class RawBatch:
    """One poll of one Kafka partition.

    An empty ``records`` list is a heartbeat: the partition is caught up, and in
    live mode its ingest clock may advance to ``wall_ms``.
    """

    topic: str
    partition: int
    partitions: int
    records: list[RawRecord]
    wall_ms: int
    idle: bool = False


@dataclass(frozen=True, slots=True)
class Quarantined:
    """A record that failed validation, with the first reason that applied."""

    record: RawRecord
    reason: str
    detail: str
    schema_id: int | None = None
    clock_ms: int = 0
    """The partition's ingest clock at this record (what lateness was judged against)."""


@dataclass(frozen=True, slots=True)
class ValidatedBatch:
    """A ``RawBatch`` after decode and validation.

    ``clock_ms`` is the partition's ingest clock after this batch (running max of
    record timestamps, or wall time for an idle partition in live mode); windows
    close against the minimum of these over all partitions.
    """

    topic: str
    partition: int
    partitions: int
    events: list[Event]
    quarantined: list[Quarantined]
    clock_ms: int | None
    consumed: int


@dataclass(frozen=True, slots=True)
class ShardBatch:
    """The part of a ``ValidatedBatch`` that one feature shard owns.

    Sent to every shard even when ``events`` is empty, so each shard sees every
    partition's clock advance.
    """

    partition: int
    partitions: int
    events: dict[str, list[Event]]
    """Events by the entity field they are routed on (``user_id``, ``item_id``)."""
    clock_ms: int | None
    shard: str = "0"
    shards: int = 1
    fields: tuple[str, ...] = ()
    """The event fields the shard's views read: all another process is sent
    (``flows.wire``; empty: whole events)."""
    _packed: bytes | None = field(default=None, repr=False, compare=False)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Packed once: Bytewax pickles an item twice to send it (flows.wire).
        packed = self._packed
        if packed is None:
            packed = pack(self.events, self.fields)
            object.__setattr__(self, "_packed", packed)
        return _shard_batch, (self.partition, self.partitions, packed, self.clock_ms,
                              self.shard, self.shards, self.fields)


def _shard_batch(partition: int, partitions: int, packed: bytes, clock_ms: int | None,
                 shard: str, shards: int, fields: tuple[str, ...]) -> ShardBatch:
    return ShardBatch(partition=partition, partitions=partitions, events=unpack(packed),
                      clock_ms=clock_ms, shard=shard, shards=shards, fields=fields)


class FeatureRow(NamedTuple):
    """One window's feature vector for one entity.

    ``seq`` orders updates of the same window (it grows with the counted events,
    and the final write is the largest), so the Redis write-if-newer guard
    can tell a stale replay from a newer value. A named tuple for the same
    reason as ``RawRecord``: a live flush builds one per dirty entity and view.
    """

    view: str
    entity: str
    window_start_ms: int
    window_end_ms: int
    features: dict[str, Any] | tuple[Any, ...]
    """By name, or (a window made final) the values in ``names`` order: the tuple is
    the one the history row already holds, so a close that makes every entity's
    window final (the end of a bounded run: ~300k rows at once) does not build
    a dict per row (~230 bytes each, ~70 MB of that run's peak RSS)."""
    final: bool
    seq: int
    last_ingest_ms: int = 0
    names: tuple[str, ...] = ()
    """The feature names when ``features`` is a tuple of values."""

    def feature_map(self) -> dict[str, Any]:
        """The features by name, whichever form the row carries."""
        features = self.features
        if isinstance(features, dict):
            return features
        return dict(zip(self.names, features, strict=True))


@dataclass(slots=True)
class HistoryBatch:
    """Final windows of one view, column by column (what Iceberg wants).

    Columnar on purpose: a bounded run can close millions of windows at once,
    and one object plus one dict per window would dominate time and memory.
    """

    view: str
    shard: str = "0"
    closed_until: int = 0
    """The close clock these windows became final at (the sink's exactly-once key)."""
    entities: list[str] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    features: dict[str, list[Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.entities)

    def rows(self) -> list[tuple[str, int, int, dict[str, Any]]]:
        """Row view, for tests and small outputs: (entity, start, end, features)."""
        names = list(self.features)
        return [(e, s, w, {n: self.features[n][i] for n in names})
                for i, (e, s, w) in enumerate(zip(self.entities, self.starts, self.ends,
                                                  strict=True))]


@dataclass(frozen=True, slots=True)
class FeatureOutput:
    """What one feature shard emits in one step."""

    online: list[FeatureRow] = field(default_factory=list)
    """Rows for Redis: each entity's current online window, open or final."""
    history: list[HistoryBatch] = field(default_factory=list)
    """Final windows with at least one counted event, for Iceberg, per view."""
    shard: str = "0"
    closed_until: int | None = None
    """The close clock this output made final (``None``: an online flush); set even
    when nothing closed, so downstream steps learn every shard's progress."""


@dataclass(frozen=True, slots=True)
class TableRows:
    """Rows for one Iceberg table, with what the exactly-once ledger needs.

    ``shard``/``closed_until`` are set for feature tables (see ``sinks.ledger``);
    the other tables carry partition and offset columns instead.
    """

    rows: Any
    """A ``pyarrow.Table`` in the table's Arrow schema."""
    shard: str | None = None
    closed_until: int | None = None
    _packed: bytes | None = field(default=None, repr=False, compare=False)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # An Arrow IPC stream, written once: Bytewax pickles an item twice (flows.wire).
        packed = self._packed
        if packed is None:
            packed = pack_table(self.rows)
            object.__setattr__(self, "_packed", packed)
        return _table_rows, (packed, self.shard, self.closed_until)


def _table_rows(packed: bytes, shard: str | None, closed_until: int | None) -> TableRows:
    return TableRows(unpack_table(packed), shard=shard, closed_until=closed_until)
