"""The profiler: adds up profile partials, closes profile windows, measures drift.

One stateful key holds every profile window (partials are small: a few
statistics per field and window, not events). Windows close on the features'
rule, so a closed profile is final and the same in every run:

* the ``events`` scope closes a window once every source partition's ingest
  clock minus the allowed lateness has passed its end;
* a view's scope closes a window once every feature shard's close clock has
  passed its end plus the view's finality delay (a session's gap).

Drift: each numeric field's closed window is compared (PSI, ``flows.sketch``)
with a reference: the trailing ``reference_windows`` closed windows of the same
field (default one day), or one pinned window when ``pinned_reference_ms`` is
set. It is written with the profile row and exported as ``kappa_drift_psi``.
"""

from __future__ import annotations

import pickle
from collections import deque
from dataclasses import dataclass
from typing import Any

import orjson

from flows.profiles import EVENTS_SCOPE, FieldStats, ProfilePartial, WindowKey, WindowProfile
from flows.records import END_OF_INPUT
from flows.sketch import Buckets, merged, psi, quantiles
from kappa.metrics import DRIFT_PSI, PROFILE_STAT, PROFILE_STRAGGLERS, PROFILE_WINDOWS, QUALITY

PROFILE_QUANTILES = (0.5, 0.9, 0.99)
TOP_CATEGORIES = 10
QUALITY_FIELD = "_quality"
"""``field`` of the row holding a window's quality dimensions."""


@dataclass(frozen=True, kw_only=True)
class ProfileConfig:
    """Window size, closing rule and drift reference of the profiler."""

    window_ms: int = 300_000
    allowed_lateness_ms: int = 60_000
    shards: int = 4
    view_delays_ms: tuple[tuple[str, int], ...] = ()
    """(view name, finality delay) of every profiled view."""
    warmups_ms: tuple[tuple[str, int], ...] = ()
    """(scope, warm-up) per scope: how long after its first profile window its values
    are still filling up (a 1 h sliding window's sums grow for an hour)."""
    reference_windows: int = 288
    """Trailing closed windows the drift reference merges (288 x 5 min = one day)."""
    pinned_reference_ms: int | None = None
    """Start of one window to use as the reference instead (once it has closed)."""
    min_drift_count: int = 50
    """Values needed on both sides before a PSI is computed."""

    def __post_init__(self) -> None:
        if self.window_ms <= 0 or self.reference_windows < 1 or self.min_drift_count < 1:
            msg = "profile window, reference windows and min drift count must be > 0"
            raise ValueError(msg)


class Profiler:
    """Open profile windows, the clocks that close them, and the drift references."""

    def __init__(self, config: ProfileConfig, state: bytes | None = None) -> None:
        self.config = config
        self._delays = dict(config.view_delays_ms)
        self._warmups = dict(config.warmups_ms)
        self.first_closed: dict[str, int] = {}
        """Start of each scope's first closed window: where its warm-up is counted from."""
        self.open: dict[WindowKey, WindowProfile] = {}
        self.clocks: dict[str, int] = {}
        self.sources: dict[str, int] = {"p": 0, "s": config.shards}
        self.closed_until: dict[str, int] = {}
        self.trailing: dict[tuple[str, str], deque[Buckets]] = {}
        self.pinned: dict[tuple[str, str], Buckets] = {}
        if state is not None:
            (self.open, self.clocks, self.sources, self.closed_until, self.trailing,
             self.pinned, self.first_closed) = pickle.loads(state)  # noqa: S301 - our own

    def snapshot(self) -> bytes:
        """The whole state, pickled, for Bytewax recovery."""
        return pickle.dumps((self.open, self.clocks, self.sources, self.closed_until,
                             self.trailing, self.pinned, self.first_closed),
                            protocol=pickle.HIGHEST_PROTOCOL)

    def add(self, partial: ProfilePartial) -> list[dict[str, Any]]:
        """Fold one partial in; return the rows of every window that became final."""
        for key, profile in partial.windows.items():
            scope, start = key
            if start + self.config.window_ms <= self.closed_until.get(scope, -(2**62)):
                PROFILE_STRAGGLERS.labels(scope).inc(profile.consumed)
                continue
            mine = self.open.get(key)
            if mine is None:
                self.open[key] = profile
            else:
                mine.merge(profile)
        kind = partial.source[0]
        if kind == "p":
            self.sources["p"] = max(self.sources["p"], partial.sources)
        if partial.clock_ms is not None and partial.clock_ms > self.clocks.get(partial.source, -1):
            self.clocks[partial.source] = partial.clock_ms
        return self._close_due()

    def close_all(self) -> list[dict[str, Any]]:
        """End of a bounded run: every open window is final."""
        # The input ended inside these windows: partial by construction, no drift.
        return self._close(sorted(self.open, key=lambda k: (k[1], k[0])), tail=True)

    def _min_clock(self, kind: str) -> int | None:
        clocks = [c for s, c in self.clocks.items() if s[0] == kind]
        if not clocks or len(clocks) < self.sources[kind]:
            return None
        return min(clocks)

    def _close_due(self) -> list[dict[str, Any]]:
        size = self.config.window_ms
        events_until = self._min_clock("p")
        shards_until = self._min_clock("s")
        due, tail = [], set()
        for scope, start in self.open:
            if scope == EVENTS_SCOPE:
                ready = (events_until is not None
                         and start + size <= events_until - self.config.allowed_lateness_ms)
            else:
                ready = (shards_until is not None
                         and start + size + self._delays.get(scope, 0) <= shards_until)
                if ready and shards_until == END_OF_INPUT:
                    tail.add((scope, start))  # closed by a bounded run's end, not by time
            if ready:
                due.append((scope, start))
        return self._close(sorted(due, key=lambda k: (k[1], k[0])), tail=tail)

    def _close(self, keys: list[WindowKey], tail: bool | set[WindowKey] = False
               ) -> list[dict[str, Any]]:
        """Rows of ``keys``; ``tail`` windows (cut short by the end of input) get no drift."""
        rows: list[dict[str, Any]] = []
        for key in keys:
            scope, start = key
            profile = self.open.pop(key)
            end = start + self.config.window_ms
            self.closed_until[scope] = max(self.closed_until.get(scope, end), end)
            self.first_closed.setdefault(scope, start)
            PROFILE_WINDOWS.labels(scope).inc()
            base = {"window_start": start, "window_end": end, "scope": scope}
            if scope == EVENTS_SCOPE:
                rows.append({**base, **quality_columns(profile)})
            for name in sorted(profile.fields):
                partial = tail is True or (isinstance(tail, set) and key in tail)
                rows.append({**base, **self._field_row(scope, name, profile.fields[name], start,
                                                       partial)})
        return rows

    def _field_row(self, scope: str, name: str, stats: FieldStats, start: int,
                   partial: bool = False) -> dict[str, Any]:
        row = field_columns(name, stats)
        labels = (scope, name)
        if (stats.buckets or stats.n) and not partial:
            row["psi"] = self._drift(labels, stats, start)
        for stat in ("count", "null_rate", "mean", "stddev", "p50", "p99"):
            value = row.get(stat)
            if value is not None:
                PROFILE_STAT.labels(scope, name, stat).set(value)
        return row

    def _drift(self, labels: tuple[str, str], stats: FieldStats, start: int) -> float | None:
        """PSI against the reference; ``None`` while warming up or without a reference.

        A scope's first closed window is partial (the stream began inside it), and a
        view's windows keep filling for one window length: those windows neither get
        a PSI nor join the reference, or every run would start with false alarms.
        """
        cfg = self.config
        warm_until = (self.first_closed[labels[0]] + cfg.window_ms
                      + self._warmups.get(labels[0], 0))
        if start < warm_until:
            return None
        if cfg.pinned_reference_ms is not None:
            reference = self.pinned.get(labels)
            if start == cfg.pinned_reference_ms:
                self.pinned[labels] = dict(stats.buckets)
        else:
            history = self.trailing.setdefault(labels, deque(maxlen=cfg.reference_windows))
            reference = merged(history) if history else None
            history.append(dict(stats.buckets))
        value = None
        if (reference and sum(reference.values()) >= cfg.min_drift_count
                and stats.n >= cfg.min_drift_count):
            value = psi(reference, stats.buckets)
        if value is not None:
            DRIFT_PSI.labels(*labels).set(value)
        return value


def field_columns(name: str, stats: FieldStats) -> dict[str, Any]:
    """One field's profile row (without window and scope)."""
    row: dict[str, Any] = {"field": name, "count": stats.count, "nulls": stats.nulls,
                           "null_rate": stats.nulls / stats.count if stats.count else None}
    if stats.n:
        variance = stats.variance
        row.update({"min": stats.minimum, "max": stats.maximum, "mean": stats.mean,
                    "stddev": variance ** 0.5 if variance is not None else None})
        p50, p90, p99 = quantiles(stats.buckets, PROFILE_QUANTILES)
        row.update({"p50": p50, "p90": p90, "p99": p99,
                    "sketch": orjson.dumps({str(k): v for k, v in sorted(stats.buckets.items())}
                                           ).decode()})
    if stats.categories:
        top = sorted(stats.categories.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_CATEGORIES]
        row["top"] = orjson.dumps(top).decode()
    return row


def quality_columns(profile: WindowProfile) -> dict[str, Any]:
    """The quality dimensions of one events window, as shares of consumed records.

    completeness: not quarantined for a missing required field; validity: not
    quarantined at all; uniqueness: not a duplicate; timeliness: not late.
    """
    consumed = profile.consumed
    reasons = profile.reasons

    def share_without(*names: str) -> float | None:
        return 1 - sum(reasons[n] for n in names) / consumed if consumed else None

    row: dict[str, Any] = {"field": QUALITY_FIELD, "count": consumed, "consumed": consumed,
                           "valid": profile.valid,
                           "completeness": share_without("missing_field"),
                           "validity": profile.valid / consumed if consumed else None,
                           "uniqueness": share_without("duplicate"),
                           "timeliness": share_without("late"),
                           "reasons": orjson.dumps(dict(sorted(reasons.items()))).decode()}
    for dimension in ("completeness", "validity", "uniqueness", "timeliness"):
        value = row[dimension]
        if value is not None:
            QUALITY.labels(dimension).set(value)
    return row
