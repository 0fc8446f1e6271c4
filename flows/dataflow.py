"""The one dataflow definition, used by live runs and replays alike.

``build_flow`` does no I/O: it wires steps between a source and sinks given to
it. Step ids are recovery keys (Bytewax stores state under them), so they are
literal and pinned by a test; renaming one orphans checkpointed state.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from flows.features import FeatureConfig, FeatureShard, route
from flows.lifecycle import stop_requested
from flows.profiler import ProfileConfig, Profiler
from flows.profiles import ProfilePartial, event_partial, feature_partial
from flows.records import (
    FeatureOutput,
    FeatureRow,
    Quarantined,
    RawBatch,
    ShardBatch,
    TableRows,
    ValidatedBatch,
)
from flows.routing import Routing
from flows.validate import Decode, PartitionValidator, ValidationConfig
from flows.views import FeatureView
from kappa.metrics import EVENTS_QUARANTINED, EVENTS_VALID, PARTITION_CLOCK
from sinks.tables import (
    empty_table,
    event_rows,
    feature_columns,
    log_rows,
    profile_rows,
    quarantine_rows,
)

STATEFUL_STEPS: tuple[str, ...] = ("kafka_in", "validate", "features", "profiles", "iceberg_out",
                                   "dlq_out")
"""Steps that hold recovery state; a test pins this list."""


@dataclass(frozen=True, kw_only=True)
class FlowConfig:
    """Everything the dataflow's logic needs; nothing about where data lives."""

    name: str
    topic: str
    views: tuple[FeatureView, ...]
    validation: ValidationConfig
    features: FeatureConfig
    shards: int = 4
    flush_interval_s: float = 0.25
    archive_log: bool = True
    tables: tuple[str, ...] = ()
    """Iceberg tables to tick in live mode (empty: no ticks)."""
    recovery: bool = False
    """Snapshot state for Bytewax recovery; without it ``snapshot`` is free (returns None)."""
    write_events: bool = True
    """Write ``events`` and ``quarantine`` (a backfill of new views into existing outputs
    writes only the new feature tables)."""
    profiles: ProfileConfig | None = None
    """Profile events and features into the ``profiles`` table (``None``: no profiling).
    Needs ``features.report_progress`` so closed windows are known per shard."""
    routing: Routing | None = None
    """State keys of the per-partition and per-shard steps (``None``: ``"0".."n-1"``,
    right for one worker; ``flows.routing`` spreads them over several)."""

    def __post_init__(self) -> None:
        if self.shards < 1:
            msg = "shards must be >= 1"
            raise ValueError(msg)
        if not self.views:
            msg = "at least one feature view is required"
            raise ValueError(msg)
        if self.profiles is not None and not self.features.report_progress:
            msg = "profiling needs FeatureConfig(report_progress=True)"
            raise ValueError(msg)


@dataclass(frozen=True, kw_only=True)
class FlowSinks:
    """Where the flow writes: Iceberg tables, Redis, the dead-letter topic."""

    iceberg: Sink[tuple[str, TableRows]]
    redis: Sink[list[FeatureRow]]
    dlq: Sink[tuple[str, list[Quarantined]]] | None = None
    """None: quarantined records go to the Iceberg table only (replays)."""


class _ValidateLogic(StatefulBatchLogic[RawBatch, ValidatedBatch, bytes | None]):
    def __init__(self, validator: PartitionValidator, recovery: bool) -> None:
        self._validator = validator
        self._recovery = recovery

    def on_batch(self, values: list[RawBatch]) -> tuple[list[ValidatedBatch], bool]:
        out = [self._validator.validate(batch) for batch in values]
        for vb in out:
            if vb.events:
                EVENTS_VALID.labels(vb.topic).inc(len(vb.events))
            if vb.quarantined:
                counts: dict[str, int] = defaultdict(int)
                for q in vb.quarantined:
                    counts[q.reason] += 1
                for reason, n in counts.items():
                    EVENTS_QUARANTINED.labels(vb.topic, reason).inc(n)
            if vb.clock_ms is not None:
                PARTITION_CLOCK.labels(vb.topic, str(vb.partition)).set(vb.clock_ms)
        return out, StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes | None:
        # Bytewax asks every epoch even without a recovery store; pickling the
        # state for nobody would cost seconds per million events.
        return self._validator.snapshot() if self._recovery else None


class _FeatureLogic(StatefulBatchLogic[ShardBatch, FeatureOutput, bytes | None]):
    def __init__(self, shard: FeatureShard, flush_interval_s: float, recovery: bool) -> None:
        self._shard = shard
        self._recovery = recovery
        self._live = shard.config.live
        self._interval = flush_interval_s
        self._next_flush = _now() + flush_interval_s

    def on_batch(self, values: list[ShardBatch]) -> tuple[list[FeatureOutput], bool]:
        out = [o for o in map(self._shard.apply, values) if o is not None]
        if self._live and _now() >= self._next_flush:
            out.extend(self._flush())
        return out, StatefulBatchLogic.RETAIN

    def _flush(self) -> list[FeatureOutput]:
        self._next_flush = _now() + self._interval
        flushed = self._shard.flush()
        return [flushed] if flushed is not None else []

    def on_notify(self) -> tuple[list[FeatureOutput], bool]:
        return self._flush(), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[FeatureOutput], bool]:
        if stop_requested() or not self._shard.config.finalize_at_end:
            # A graceful stop, not the end of a bounded input: keep windows open
            # for the next run (they resume from the recovery store).
            return (self._flush() if self._live else []), StatefulBatchLogic.RETAIN
        closed = self._shard.close_all()
        return ([closed] if closed is not None else []), StatefulBatchLogic.RETAIN

    def notify_at(self) -> Any:
        if not self._live:
            return None

        return datetime.fromtimestamp(self._next_flush, tz=UTC)

    def snapshot(self) -> bytes | None:
        return self._shard.snapshot() if self._recovery else None


class _ProfileLogic(StatefulBatchLogic[ProfilePartial, list[dict[str, Any]], bytes | None]):
    def __init__(self, profiler: Profiler, finalize_at_end: bool, recovery: bool) -> None:
        self._profiler = profiler
        self._finalize = finalize_at_end
        self._recovery = recovery

    def on_batch(self, values: list[ProfilePartial]) -> tuple[list[list[dict[str, Any]]], bool]:
        rows: list[dict[str, Any]] = []
        for partial in values:
            rows.extend(self._profiler.add(partial))
        return ([rows] if rows else []), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[list[dict[str, Any]]], bool]:
        if stop_requested() or not self._finalize:
            return [], StatefulBatchLogic.RETAIN
        rows = self._profiler.close_all()
        return ([rows] if rows else []), StatefulBatchLogic.RETAIN

    def snapshot(self) -> bytes | None:
        return self._profiler.snapshot() if self._recovery else None


def _now() -> float:
    return time.time()


def _history_tables(output: FeatureOutput, by_view: dict[str, FeatureView]) -> list[tuple[str, Any]]:
    return [(by_view[b.view].table,
             TableRows(feature_columns(by_view[b.view], b.entities, b.starts, b.ends, b.features),
                       shard=b.shard, closed_until=b.closed_until))
            for b in output.history]


class _Ticker:
    """Turns idle heartbeats into at most one round of empty table items per interval."""

    def __init__(self, tables: tuple[str, ...], views: tuple[FeatureView, ...],
                 interval_s: float) -> None:
        self._tables = tables
        self._views = views
        self._interval = interval_s
        self._next = 0.0

    def __call__(self, batch: RawBatch) -> list[tuple[str, Any]]:
        if batch.records or not batch.idle or not self._tables:
            return []
        now = time.monotonic()
        if now < self._next:
            return []
        self._next = now + self._interval
        return [(name, TableRows(empty_table(name, self._views))) for name in self._tables]


def build_flow(config: FlowConfig, source: Source[RawBatch], sinks: FlowSinks,
               decode_factory: Any) -> Dataflow:
    """Wire the pipeline: input → log archive → validate → quarantine / events → features.

    Args:
        config: The flow's logic settings.
        source: Emits ``RawBatch`` items (Kafka live, bounded, or a test source).
        sinks: Iceberg, Redis and DLQ sinks.
        decode_factory: Zero-argument callable returning a ``Decode`` function; called
            once per partition validator so schema caches are per worker.
    """
    by_view = {v.name: v for v in config.views}
    flow = Dataflow(config.name)
    raw = op.input("kafka_in", flow, source)

    iceberg_streams = []
    if config.archive_log:
        log_items = op.filter_map(
            "log_rows", raw,
            lambda b: ("log", TableRows(log_rows(b.records))) if b.records else None)
        iceberg_streams.append(log_items)

    # Idle heartbeats become empty per-table items, so a table's time-based commit
    # happens even when no new rows arrive for it (sink partitions have no timers).
    tick = _Ticker(config.tables, config.views, config.flush_interval_s)
    iceberg_streams.append(op.flat_map("commit_ticks", raw, tick))

    routing = config.routing
    partition_key = routing.partition_key if routing is not None else str
    shard_keys = routing.shard_keys if routing is not None else None
    keyed = op.key_on("key_by_partition", raw, lambda b: partition_key(b.partition))

    def build_validator(state: bytes | None) -> _ValidateLogic:
        decode: Decode = decode_factory()
        return _ValidateLogic(PartitionValidator(config.validation, decode, state), config.recovery)

    validated = op.key_rm("validated", op.stateful_batch("validate", keyed, build_validator))

    bad = op.filter_map("quarantined", validated, lambda v: v.quarantined or None)
    if sinks.dlq is not None:
        op.output("dlq_out", op.map("key_dlq", bad, lambda q: (str(q[0].record.partition), q)),
                  sinks.dlq)
    if config.write_events:
        iceberg_streams.append(op.map("quarantine_rows", bad,
                                      lambda q: ("quarantine", TableRows(quarantine_rows(q)))))
        good = op.filter_map("valid_events", validated, lambda v: v.events or None)
        iceberg_streams.append(op.map("event_rows", good,
                                      lambda e: ("events", TableRows(event_rows(e)))))

    sharded = op.flat_map("route_to_shards", validated,
                          lambda v: route(v, config.views, config.shards, shard_keys))

    def build_shard(state: bytes | None) -> _FeatureLogic:
        return _FeatureLogic(FeatureShard(config.views, config.features, state=state),
                             config.flush_interval_s, config.recovery)

    features = op.key_rm("feature_outputs", op.stateful_batch("features", sharded, build_shard))
    online = op.filter_map("online_rows", features, lambda o: o.online or None)
    op.output("redis_out", online, sinks.redis)
    iceberg_streams.append(op.flat_map("history_rows", features,
                                       lambda o: _history_tables(o, by_view)))
    if config.profiles is not None:
        iceberg_streams.append(_profile_stream(config, config.profiles, validated, features))

    op.output("iceberg_out", op.merge("iceberg_rows", *iceberg_streams), sinks.iceberg)
    return flow


def _profile_stream(config: FlowConfig, profiles: ProfileConfig, validated: Any,
                    features: Any) -> Any:
    """Profile partials of every poll and every shard close → ``profiles`` table rows."""
    by_view = {v.name: v for v in config.views}
    window_ms = profiles.window_ms
    lateness_ms = config.validation.allowed_lateness_ms
    from_events = op.map("event_profiles", validated,
                         lambda v: event_partial(v, window_ms, lateness_ms))
    from_features = op.filter_map("feature_profiles", features,
                                  lambda o: feature_partial(o, by_view, config.shards, window_ms))
    keyed = op.key_on("key_profiles", op.merge("profile_partials", from_events, from_features),
                      lambda _: "profiles")

    def build_profiler(state: bytes | None) -> _ProfileLogic:
        return _ProfileLogic(Profiler(profiles, state), config.features.finalize_at_end,
                             config.recovery)

    rows = op.key_rm("profile_outputs", op.stateful_batch("profiles", keyed, build_profiler))
    return op.map("profile_rows", rows, lambda r: ("profiles", TableRows(profile_rows(r))))

