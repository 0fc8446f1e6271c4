"""Window state for one view on one feature shard: tumbling, sliding, session.

Each state holds many entities' open windows and closes them against a clock
given by the caller (``close(until_ms)``): a tumbling or sliding window
``[start, end)`` is final once ``end <= until_ms``; a session once
``last_ts + gap < until_ms``. The caller passes ``until = watermark - lateness``,
where the watermark is the minimum ingest clock over all partitions; no
non-late event can then reach a closed window (see DESIGN.md).

Sliding windows are built from hop-sized panes (each event is added once, and a
window merges its panes when it is emitted) instead of updating every
overlapping window per event.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterator
from typing import Any

from flows.aggregates import Agg, AggSpec
from flows.views import FeatureView, Session, Sliding, Tumbling

Closed = tuple[str, int, int, Agg]
"""(entity, window_start_ms, window_end_ms, aggregate) of a window made final."""

_NO_PANE: dict[str, Agg] = {}
"""Stands in for a missing pane in lookups (never written to)."""


class TumblingState:
    """Open tumbling windows, grouped by start so closing pops whole windows."""

    def __init__(self, spec: AggSpec, size_ms: int) -> None:
        self.spec = spec
        self.size = size_ms
        self.windows: dict[int, dict[str, Agg]] = {}

    def add(self, entity: str, event: dict[str, Any]) -> None:
        """Count ``event`` in its window."""
        ts = event["ts"]
        start = ts - ts % self.size
        by_entity = self.windows.get(start)
        if by_entity is None:
            by_entity = self.windows[start] = {}
        agg = by_entity.get(entity)
        if agg is None:
            agg = by_entity[entity] = self.spec.new()
        self.spec.add(agg, event)

    def online(self, entity: str, latest_ts: int) -> tuple[int, int, Agg] | None:
        """The open window holding the entity's latest counted event."""
        start = latest_ts - latest_ts % self.size
        agg = self.windows.get(start, {}).get(entity)
        return None if agg is None else (start, start + self.size, agg)

    def is_online(self, start: int, end: int, latest_ts: int) -> bool:
        """Whether ``[start, end)`` is the online window for that latest ts."""
        return start <= latest_ts < end

    def close(self, until_ms: int | None) -> Iterator[Closed]:
        """Pop every window with ``end <= until_ms`` (all when ``None``), oldest first."""
        for start in sorted(self.windows):
            end = start + self.size
            if until_ms is not None and end > until_ms:
                break
            for entity, agg in self.windows.pop(start).items():
                yield entity, start, end, agg

    def open_count(self) -> int:
        """Open (entity, window) pairs."""
        return sum(len(w) for w in self.windows.values())


class SlidingState:
    """Panes of ``hop`` ms; a window of ``size`` is the merge of its panes."""

    def __init__(self, spec: AggSpec, size_ms: int, hop_ms: int) -> None:
        self.spec = spec
        self.size = size_ms
        self.hop = hop_ms
        self.panes: dict[int, dict[str, Agg]] = {}
        self.closed_until: int | None = None
        """Every window ending at or before this has been emitted."""

    def add(self, entity: str, event: dict[str, Any]) -> None:
        """Count ``event`` in its pane."""
        ts = event["ts"]
        pane = ts - ts % self.hop
        by_entity = self.panes.get(pane)
        if by_entity is None:
            by_entity = self.panes[pane] = {}
        agg = by_entity.get(entity)
        if agg is None:
            agg = by_entity[entity] = self.spec.new()
        self.spec.add(agg, event)

    def _window(self, entity: str, start: int) -> Agg | None:
        merged: Agg | None = None
        pane_of, spec, none = self.panes.get, self.spec, _NO_PANE
        for pane in range(start, start + self.size, self.hop):
            agg = pane_of(pane, none).get(entity)
            if agg is not None:
                if merged is None:
                    merged = spec.copy(agg)
                else:
                    spec.merge(merged, agg)
        return merged

    def online(self, entity: str, latest_ts: int) -> tuple[int, int, Agg] | None:
        """The window ending first among those holding the latest event."""
        end = latest_ts - latest_ts % self.hop + self.hop
        agg = self._window(entity, end - self.size)
        return None if agg is None else (end - self.size, end, agg)

    def is_online(self, start: int, end: int, latest_ts: int) -> bool:
        """Whether ``[start, end)`` is the online window for that latest ts."""
        return end == latest_ts - latest_ts % self.hop + self.hop

    def close(self, until_ms: int | None) -> Iterator[Closed]:
        """Emit windows with ``end <= until_ms``, entity by entity; drop spent panes.

        Each entity's panes are merged once per distinct pane set, not once per
        window: consecutive windows over the same panes yield the *same* aggregate
        object (callers may reuse what they computed from it). An entity with one
        pane is in ``size / hop`` windows that all share one aggregate.
        """
        if not self.panes:
            if until_ms is not None:
                self.closed_until = until_ms - until_ms % self.hop
            return
        hop, size = self.hop, self.size
        panes = sorted(self.panes)
        last_end = panes[-1] + size if until_ms is None else until_ms - until_ms % hop
        first_end = panes[0] + hop
        if self.closed_until is not None and self.closed_until + hop > first_end:
            first_end = self.closed_until + hop
        if first_end <= last_end:
            by_entity: dict[str, list[int]] = {}
            lo = bisect.bisect_left(panes, first_end - size)
            hi = bisect.bisect_left(panes, last_end)
            for pane in panes[lo:hi]:
                for entity in self.panes[pane]:
                    own = by_entity.get(entity)
                    if own is None:
                        by_entity[entity] = [pane]
                    else:
                        own.append(pane)
            for entity in sorted(by_entity):
                yield from self._entity_windows(entity, by_entity[entity], first_end, last_end)
        self.closed_until = last_end
        for pane in panes:
            if pane + size <= last_end:
                del self.panes[pane]

    def _entity_windows(self, entity: str, own: list[int], first_end: int,
                        last_end: int) -> Iterator[Closed]:
        """Windows ``[end - size, end)`` with ``first_end <= end <= last_end`` over ``own`` panes."""
        hop, size, spec = self.hop, self.size, self.spec
        end = max(first_end, own[0] + hop)
        stop = min(last_end, own[-1] + size)
        lo = hi = 0
        n = len(own)
        merged: Agg | None = None
        while end <= stop:
            start = end - size
            new_lo, new_hi = lo, hi
            while new_lo < n and own[new_lo] < start:
                new_lo += 1
            while new_hi < n and own[new_hi] < end:
                new_hi += 1
            if new_lo == new_hi:  # a gap: jump to the next pane's first window
                end = own[new_lo] + hop
                lo = hi = new_lo
                merged = None
                continue
            if merged is None or (new_lo, new_hi) != (lo, hi):
                by_pane = self.panes
                merged = spec.copy(by_pane[own[new_lo]][entity])
                for pane in own[new_lo + 1:new_hi]:
                    spec.merge(merged, by_pane[pane][entity])
                lo, hi = new_lo, new_hi
            yield entity, start, end, merged
            end += hop

    def open_count(self) -> int:
        """Open (entity, pane) pairs."""
        return sum(len(p) for p in self.panes.values())


class SessionState:
    """Open sessions per entity, with a lazy heap of close times."""

    def __init__(self, spec: AggSpec, gap_ms: int) -> None:
        self.spec = spec
        self.gap = gap_ms
        self.sessions: dict[str, list[list[Any]]] = {}
        """entity -> open sessions as [first_ts, last_ts, agg], disjoint."""
        self._heap: list[tuple[int, str]] = []

    def add(self, entity: str, event: dict[str, Any]) -> None:
        """Count ``event``, merging every session it bridges."""
        ts = event["ts"]
        gap = self.gap
        sessions = self.sessions.get(entity)
        if sessions is None:
            sessions = self.sessions[entity] = []
        touching = [s for s in sessions if s[0] - gap <= ts <= s[1] + gap]
        if not touching:
            agg = self.spec.new()
            self.spec.add(agg, event)
            sessions.append([ts, ts, agg])
            heapq.heappush(self._heap, (ts, entity))
            return
        target = touching[0]
        for other in touching[1:]:
            self.spec.merge(target[2], other[2])
            target[0] = min(target[0], other[0])
            target[1] = max(target[1], other[1])
            sessions.remove(other)
        self.spec.add(target[2], event)
        target[0] = min(target[0], ts)
        if ts > target[1]:
            target[1] = ts
            heapq.heappush(self._heap, (ts, entity))

    def online(self, entity: str, latest_ts: int) -> tuple[int, int, Agg] | None:
        """The open session holding the entity's latest counted event."""
        for first, last, agg in self.sessions.get(entity, ()):
            if first <= latest_ts <= last:
                return first, last, agg
        return None

    def is_online(self, start: int, end: int, latest_ts: int) -> bool:
        """Whether the session ``[start, end]`` holds that latest ts."""
        return start <= latest_ts <= end

    def close(self, until_ms: int | None) -> Iterator[Closed]:
        """Emit sessions with ``last_ts + gap < until_ms`` (all when ``None``)."""
        if until_ms is None:
            for entity in sorted(self.sessions):
                for first, last, agg in sorted(self.sessions[entity], key=lambda s: s[0]):
                    yield entity, first, last, agg
            self.sessions.clear()
            self._heap.clear()
            return
        heap = self._heap
        while heap and heap[0][0] + self.gap < until_ms:
            _, entity = heapq.heappop(heap)
            sessions = self.sessions.get(entity)
            if not sessions:
                continue
            done = [s for s in sessions if s[1] + self.gap < until_ms]
            if not done:
                continue
            keep = [s for s in sessions if s[1] + self.gap >= until_ms]
            if keep:
                self.sessions[entity] = keep
            else:
                del self.sessions[entity]
            for first, last, agg in sorted(done, key=lambda s: s[0]):
                yield entity, first, last, agg

    def open_count(self) -> int:
        """Open sessions."""
        return sum(len(s) for s in self.sessions.values())


WindowState = TumblingState | SlidingState | SessionState


def new_state(view: FeatureView) -> WindowState:
    """The window state matching the view's window kind."""
    spec = AggSpec(view)
    window = view.window
    if isinstance(window, Tumbling):
        return TumblingState(spec, window.size_s * 1000)
    if isinstance(window, Sliding):
        return SlidingState(spec, window.size_s * 1000, window.hop_s * 1000)
    if isinstance(window, Session):
        return SessionState(spec, window.gap_s * 1000)
    msg = f"unsupported window {window!r}"
    raise TypeError(msg)
