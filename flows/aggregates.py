"""Mergeable aggregate state for one (entity, window), compiled from a view.

State is a plain list (cheap to create, update and pickle): one slot per base
feature, then ``[n_events, first_ts, last_ts, last_ingest_ms]``. Sums keep their
terms and are totalled with ``math.fsum``, which rounds exactly once, so a sum
does not depend on the order events arrived in: a live run, a replay and the
batch reference give bit-identical values.
"""

from __future__ import annotations

import math
from typing import Any

from flows.views import FeatureView

Agg = list[Any]

_COUNT, _SUM, _MAX, _DISTINCT = 0, 1, 2, 3
_KINDS = {"count": _COUNT, "sum": _SUM, "max": _MAX, "distinct": _DISTINCT}


class AggSpec:
    """The per-view aggregation program: create, add, merge, finish."""

    def __init__(self, view: FeatureView) -> None:
        self.view = view
        self._slots: list[tuple[int, int, str | None, frozenset[str] | None]] = []
        for feat in view.features:
            if feat.agg in _KINDS:
                self._slots.append((len(self._slots), _KINDS[feat.agg], feat.field, feat.where))
        self._base = len(self._slots)
        self._finish: list[tuple[str, str, Any]] = []
        slot_of = {f.name: i for i, f in enumerate(f for f in view.features if f.agg in _KINDS)}
        for feat in view.features:
            if feat.agg in _KINDS:
                self._finish.append((feat.name, feat.agg, slot_of[feat.name]))
            elif feat.agg == "ratio":
                self._finish.append((feat.name, "ratio", feat.ratio_of))
            else:
                self._finish.append((feat.name, "duration", None))

    def new(self) -> Agg:
        """An empty aggregate."""
        agg: Agg = []
        for _, kind, _, _ in self._slots:
            agg.append(0 if kind == _COUNT else [] if kind == _SUM else
                       None if kind == _MAX else set())
        agg.extend((0, None, None, 0))
        return agg

    def add(self, agg: Agg, event: dict[str, Any]) -> None:
        """Count one event into ``agg``."""
        event_type = event["event_type"]
        for i, kind, field, where in self._slots:
            if where is not None and event_type not in where:
                continue
            if kind == _COUNT:
                agg[i] += 1
            elif kind == _SUM:
                value = event[field]  # type: ignore[index]
                if value is not None:
                    agg[i].append(value)
            elif kind == _MAX:
                value = event[field]  # type: ignore[index]
                if value is not None and (agg[i] is None or value > agg[i]):
                    agg[i] = value
            else:
                agg[i].add(event[field])  # type: ignore[index]
        b = self._base
        ts = event["ts"]
        agg[b] += 1
        if agg[b + 1] is None or ts < agg[b + 1]:
            agg[b + 1] = ts
        if agg[b + 2] is None or ts > agg[b + 2]:
            agg[b + 2] = ts
        if event["ingest_ts"] > agg[b + 3]:
            agg[b + 3] = event["ingest_ts"]

    def merge(self, into: Agg, other: Agg) -> None:
        """Fold ``other`` into ``into`` (both of this spec)."""
        for i, kind, _, _ in self._slots:
            if kind == _COUNT:
                into[i] += other[i]
            elif kind == _SUM:
                into[i].extend(other[i])
            elif kind == _MAX:
                if other[i] is not None and (into[i] is None or other[i] > into[i]):
                    into[i] = other[i]
            else:
                into[i] |= other[i]
        b = self._base
        into[b] += other[b]
        if other[b + 1] is not None and (into[b + 1] is None or other[b + 1] < into[b + 1]):
            into[b + 1] = other[b + 1]
        if other[b + 2] is not None and (into[b + 2] is None or other[b + 2] > into[b + 2]):
            into[b + 2] = other[b + 2]
        into[b + 3] = max(into[b + 3], other[b + 3])

    def copy(self, agg: Agg) -> Agg:
        """A deep-enough copy (lists and sets duplicated)."""
        out = self.new()
        self.merge(out, agg)
        return out

    def count(self, agg: Agg) -> int:
        """Counted events in the aggregate."""
        return int(agg[self._base])

    def first_ts(self, agg: Agg) -> int:
        """Earliest event ts."""
        return int(agg[self._base + 1])

    def last_ts(self, agg: Agg) -> int:
        """Latest event ts."""
        return int(agg[self._base + 2])

    def last_ingest(self, agg: Agg) -> int:
        """Latest record timestamp among the counted events."""
        return int(agg[self._base + 3])

    def finish_values(self, agg: Agg) -> tuple[Any, ...]:
        """The feature vector as a tuple in view order (what history columns take)."""
        return tuple(self.finish(agg).values())

    def finish(self, agg: Agg) -> dict[str, Any]:
        """The feature vector, with derived features (ratios, duration) computed."""
        out: dict[str, Any] = {}
        for name, kind, ref in self._finish:
            if kind == "count":
                out[name] = agg[ref]
            elif kind == "sum":
                out[name] = math.fsum(agg[ref])
            elif kind == "max":
                out[name] = agg[ref]
            elif kind == "distinct":
                out[name] = len(agg[ref])
            elif kind == "duration":
                b = self._base
                out[name] = (agg[b + 2] - agg[b + 1]) / 1000.0
        for name, kind, ref in self._finish:
            if kind == "ratio":
                num, den = out[ref[0]], out[ref[1]]
                out[name] = None if not den else num / den
        return {name: out[name] for name, _, _ in self._finish}
