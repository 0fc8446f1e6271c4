"""The feature shard: every view's windows for the entities one shard owns.

One stateful Bytewax key per shard (not per entity) keeps the per-item cost of
Bytewax off the hot path and lets one watermark — the minimum ingest clock over
all source partitions — close windows for many entities at once. Every shard
hears every partition's clock, so the close decision never depends on how
partitions interleave.
"""

from __future__ import annotations

import pickle
import sys
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flows.aggregates import Agg
from flows.records import (
    END_OF_INPUT,
    FeatureOutput,
    FeatureRow,
    HistoryBatch,
    ShardBatch,
    ValidatedBatch,
)
from flows.views import FeatureView
from flows.windows import Closed, WindowState, new_state
from flows.wire import event_fields
from kappa.metrics import OPEN_WINDOWS, WATERMARK, WINDOWS_EMITTED


@dataclass(frozen=True, kw_only=True)
class FeatureConfig:
    """What the shard needs: lateness (closing rule) and live/bounded behaviour."""

    allowed_lateness_ms: int = 60_000
    live: bool = False
    """Live runs flush open windows to Redis (``final: false``); bounded runs emit finals only."""
    finalize_at_end: bool = True
    """The end of a bounded input closes every window (False: keep them for a continuation)."""
    report_progress: bool = False
    """Emit an (empty) output whenever the close clock advances, so the profiler
    knows how far every shard has closed even when no window closed."""

    def __post_init__(self) -> None:
        if self.allowed_lateness_ms < 0:
            msg = "allowed_lateness_ms must be >= 0"
            raise ValueError(msg)


def shard_of(entity: str, shards: int) -> int:
    """Stable shard of an entity in every process (crc32: adler32 spreads short ids badly)."""
    return zlib.crc32(entity.encode()) % shards


def route(batch: ValidatedBatch, views: tuple[FeatureView, ...], shards: int,
          keys: tuple[str, ...] | None = None) -> list[tuple[str, ShardBatch]]:
    """Split a validated batch into one ``ShardBatch`` per shard (empty ones included).

    ``keys``: the Bytewax state key of each shard (``flows.routing``; default ``"0".."n-1"``).
    The shard's *name* (ledger, metrics) stays ``str(index)`` whatever its key.
    """
    fields = sorted({v.entity for v in views})
    fields_read = event_fields(views)
    parts: list[dict[str, list[dict[str, Any]]]] = [{f: [] for f in fields} for _ in range(shards)]
    if batch.events:
        crc, intern = zlib.crc32, sys.intern
        for field in fields:
            for event in batch.events:
                # Interned: every window, pane, session and ``latest`` entry of an
                # entity then keys on one str instead of a copy from each event that
                # opened it (~20 MB of state at 1M events; one ~50 ns lookup each).
                entity = event[field] = intern(event[field])
                parts[crc(entity.encode()) % shards][field].append(event)
    return [
        (keys[s] if keys is not None else str(s),
         ShardBatch(partition=batch.partition, partitions=batch.partitions,
                            events=parts[s], clock_ms=batch.clock_ms, shard=str(s),
                            shards=shards, fields=fields_read))
        for s in range(shards)
    ]


GAUGE_INTERVAL_S = 1.0
"""How often a shard recounts its open windows for ``kappa_open_windows``."""


class FeatureShard:
    """Window state of all views for one shard, plus the partition clocks.

    Guarantees: a window is emitted to history exactly once, when final; the
    online row of an entity is always the window holding its latest counted
    event; ``seq`` grows with every update of the same window.
    """

    def __init__(self, views: tuple[FeatureView, ...], config: FeatureConfig, shard: str = "0",
                 state: bytes | None = None) -> None:
        self.views = views
        self.config = config
        self.shard = shard
        self.clocks: dict[int, int] = {}
        self.partitions = 0
        self.watermark: int | None = None
        self.states: dict[str, WindowState] = {v.name: new_state(v) for v in views}
        self.latest: dict[str, dict[str, int]] = {v.name: {} for v in views}
        self.dirty: dict[str, set[str]] = {v.name: set() for v in views}
        self._gauges_at = 0.0
        """When the open-window gauges were last set (monotonic seconds)."""
        if state is not None:
            (self.shard, self.clocks, self.partitions, self.watermark, self.states, self.latest,
             self.dirty) = pickle.loads(state)  # noqa: S301 - our own snapshot

    def snapshot(self) -> bytes:
        """Immutable copy of the whole shard for Bytewax recovery."""
        return pickle.dumps((self.shard, self.clocks, self.partitions, self.watermark,
                             self.states, self.latest, self.dirty),
                            protocol=pickle.HIGHEST_PROTOCOL)

    def apply(self, batch: ShardBatch) -> FeatureOutput | None:
        """Count the batch's events, advance its partition clock, close what is final."""
        self.shard = batch.shard
        live = self.config.live
        for view in self.views:
            events = batch.events.get(view.entity)
            if not events:
                continue
            state = self.states[view.name]
            latest = self.latest[view.name]
            dirty = self.dirty[view.name]
            key = view.entity
            for event in events:
                entity = event[key]
                state.add(entity, event)
                ts = event["ts"]
                if latest.get(entity, ts - 1) < ts:
                    latest[entity] = ts
                if live:
                    dirty.add(entity)
        self.partitions = max(self.partitions, batch.partitions)
        if batch.clock_ms is not None and batch.clock_ms > self.clocks.get(batch.partition, -1):
            self.clocks[batch.partition] = batch.clock_ms
        if len(self.clocks) < self.partitions:
            return None
        watermark = min(self.clocks.values())
        if self.watermark is not None and watermark <= self.watermark:
            return None
        self.watermark = watermark
        WATERMARK.labels(self.shard).set(watermark)
        return self._close(watermark - self.config.allowed_lateness_ms)

    def close_all(self) -> FeatureOutput | None:
        """End of a bounded run: every window becomes final."""
        return self._close(None)

    @property
    def finished(self) -> bool:
        """Whether a bounded run's final close already happened (nothing can follow)."""
        return self.watermark == END_OF_INPUT

    def _close(self, until_ms: int | None) -> FeatureOutput | None:
        online: list[FeatureRow] = []
        history: list[HistoryBatch] = []
        # Counting open windows walks every entity's state (a session view: all of its
        # sessions), 1.7% of a bounded run's CPU when done at every watermark step.
        now = time.monotonic()
        gauges = until_ms is None or now - self._gauges_at >= GAUGE_INTERVAL_S
        if gauges:
            self._gauges_at = now
        for view in self.views:
            state = self.states[view.name]
            latest = self.latest[view.name]
            dirty = self.dirty[view.name]
            spec = state.spec
            name = view.name
            names = tuple(view.feature_names)
            entities: list[str] = []
            starts: list[int] = []
            ends: list[int] = []
            rows: list[tuple[Any, ...]] = []
            closed: Iterable[Closed] = state.close(until_ms)
            previous: Agg | None = None
            values: tuple[Any, ...] = ()
            finish, is_online = spec.finish_values, state.is_online
            for entity, start, end, agg in closed:
                entities.append(entity)
                starts.append(start)
                ends.append(end)
                if agg is not previous:  # sliding windows over the same panes share one
                    values = finish(agg)
                    previous = agg
                rows.append(values)
                entity_latest = latest.get(entity)
                if entity_latest is not None and is_online(start, end, entity_latest):
                    online.append(FeatureRow(
                        view=name, entity=entity, window_start_ms=start, window_end_ms=end,
                        features=values, final=True, seq=spec.count(agg) * 2 + 1,
                        last_ingest_ms=spec.last_ingest(agg), names=names))
                    del latest[entity]
                    dirty.discard(entity)
            # Row tuples become columns in one C-level transpose.
            columns = [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in names]
            batch = HistoryBatch(view=name, shard=self.shard,
                                 closed_until=END_OF_INPUT if until_ms is None else until_ms,
                                 entities=entities, starts=starts, ends=ends,
                                 features=dict(zip(names, columns, strict=True)))
            if batch.entities:
                history.append(batch)
                WINDOWS_EMITTED.labels(name, "true").inc(len(batch))
            if gauges:
                OPEN_WINDOWS.labels(name, self.shard).set(state.open_count())
        if until_ms is None:
            self.watermark = END_OF_INPUT
        closed_until = END_OF_INPUT if until_ms is None else until_ms
        if not online and not history and not self.config.report_progress:
            return None
        return FeatureOutput(online=online, history=history, shard=self.shard,
                             closed_until=closed_until)

    def flush(self) -> FeatureOutput | None:
        """Running aggregates of open windows touched since the last flush (``final: false``)."""
        online: list[FeatureRow] = []
        for view in self.views:
            dirty = self.dirty[view.name]
            if not dirty:
                continue
            state = self.states[view.name]
            latest = self.latest[view.name]
            spec = state.spec
            before = len(online)
            name, window_of, latest_of, add = view.name, state.online, latest.get, online.append
            finish, count, last_ingest = spec.finish_map, spec.count, spec.last_ingest
            for entity in dirty:
                ts = latest_of(entity)
                if ts is None:
                    continue
                window = window_of(entity, ts)
                if window is None:
                    continue
                start, end, agg = window
                # Positional (view, entity, start, end, features, final, seq, last_ingest):
                # one per dirty entity and view in every live flush.
                add(FeatureRow(name, entity, start, end, finish(agg), False, count(agg) * 2,
                               last_ingest(agg)))
            dirty.clear()
            WINDOWS_EMITTED.labels(view.name, "false").inc(len(online) - before)
        return FeatureOutput(online=online, shard=self.shard) if online else None
