"""Mergeable data profiles of one batch, by profile window: the dataflow's half of data quality.

Each ``ValidatedBatch`` (and each feature shard's output) becomes one small
``ProfilePartial``: per profile window, counts and per-field statistics that
merge associatively. The profiler step (``flows.profiler``) adds partials up
and closes windows on the same clock rule as the features, so profiles are the
same in a live run, a replay and a reference computation.

Which window a record counts in:

* a valid event: the window of its event time ``ts``;
* a quarantined record: the window of its partition's ingest clock at that
  record minus the allowed lateness. Undecodable records have no ``ts``, and a
  late event's ``ts`` lies in a window that may already be closed; the clock
  rule is deterministic per partition and never lands in a closed window;
* a final feature window: the profile window holding its last millisecond.

Statistics per field: count, nulls, min, max, mean and variance (Chan et al.'s
pairwise merge of Welford's ``(n, mean, M2)``), a DDSketch (``flows.sketch``)
for quantiles and drift, and exact category counts for enum-like fields.
Counts, min/max, sketch and categories are order-independent (bit-identical
live/replay); mean and variance agree to float rounding (~1e-12 relative).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from flows.records import FeatureOutput, ValidatedBatch
from flows.sketch import Buckets, count_buckets, merge_into
from flows.views import FeatureView, Session

EVENTS_SCOPE = "events"
"""Scope of the raw-event profiles and quality dimensions (views use their name)."""

NUMERIC_EVENT_FIELDS: tuple[str, ...] = ("amount", "ingest_lag_s")
CATEGORY_EVENT_FIELDS: tuple[str, ...] = ("event_type", "currency", "channel")
MAX_CATEGORIES = 1000
"""Distinct values kept per category field and window; the rest count as ``__other__``."""


@dataclass(slots=True)
class FieldStats:
    """Mergeable statistics of one field in one window."""

    count: int = 0
    nulls: int = 0
    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    minimum: float | None = None
    maximum: float | None = None
    buckets: Buckets = field(default_factory=dict)
    categories: Counter[str] = field(default_factory=Counter)

    def merge(self, other: FieldStats) -> None:
        """Fold ``other`` in (Chan's parallel update for mean and M2)."""
        self.count += other.count
        self.nulls += other.nulls
        if other.n:
            if self.n == 0:
                self.n, self.mean, self.m2 = other.n, other.mean, other.m2
            else:
                n = self.n + other.n
                delta = other.mean - self.mean
                self.mean += delta * other.n / n
                self.m2 += other.m2 + delta * delta * self.n * other.n / n
                self.n = n
            lo, hi = other.minimum, other.maximum
            assert lo is not None and hi is not None
            self.minimum = lo if self.minimum is None else min(self.minimum, lo)
            self.maximum = hi if self.maximum is None else max(self.maximum, hi)
            merge_into(self.buckets, other.buckets)
        if other.categories:
            self.categories.update(other.categories)
            if len(self.categories) > MAX_CATEGORIES:
                keep = dict(self.categories.most_common(MAX_CATEGORIES - 1))
                other_n = sum(self.categories.values()) - sum(keep.values())
                self.categories = Counter(keep)
                self.categories["__other__"] += other_n

    @property
    def variance(self) -> float | None:
        """Population variance (``None`` without values)."""
        return self.m2 / self.n if self.n else None


def numeric_stats(values: pa.Array) -> FieldStats:
    """Statistics of a numeric column (nulls and non-finite values count as nulls)."""
    values = values.cast(pa.float64())
    finite = values.filter(pc.is_finite(pc.fill_null(values, float("nan"))))
    n = len(finite)
    stats = FieldStats(count=len(values), nulls=len(values) - n, n=n)
    if n:
        stats.mean = pc.mean(finite).as_py()
        stats.m2 = pc.variance(finite, ddof=0).as_py() * n
        bounds = pc.min_max(finite)
        stats.minimum, stats.maximum = bounds["min"].as_py(), bounds["max"].as_py()
        stats.buckets = count_buckets(finite, finite=True)
    return stats


def category_stats(values: pa.Array) -> FieldStats:
    """Statistics of a categorical column: nulls and exact value counts."""
    nulls = values.null_count
    stats = FieldStats(count=len(values), nulls=nulls)
    if nulls < len(values):
        counted = pc.value_counts(pc.drop_null(values))
        stats.categories = Counter(dict(zip(counted.field("values").to_pylist(),
                                            counted.field("counts").to_pylist(), strict=True)))
    return stats


@dataclass(slots=True)
class WindowProfile:
    """One scope's profile of one window: quality counters and field statistics."""

    consumed: int = 0
    valid: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    fields: dict[str, FieldStats] = field(default_factory=dict)

    def merge(self, other: WindowProfile) -> None:
        """Fold ``other`` in."""
        self.consumed += other.consumed
        self.valid += other.valid
        self.reasons.update(other.reasons)
        for name, stats in other.fields.items():
            mine = self.fields.get(name)
            if mine is None:
                self.fields[name] = stats
            else:
                mine.merge(stats)


WindowKey = tuple[str, int]
"""(scope, window start ms)."""


@dataclass(frozen=True, slots=True)
class ProfilePartial:
    """What one batch adds to the profiles, plus the clock its source reached.

    ``source`` is ``"p<partition>"`` for events (clock: the partition's ingest
    clock) or ``"s<shard>"`` for feature shards (clock: the shard's close clock).
    """

    source: str
    sources: int
    clock_ms: int | None
    windows: dict[WindowKey, WindowProfile]


def window_starts(ms: pa.Array, size_ms: int) -> pa.Array:
    """Epoch-aligned window start of each epoch-ms value (floor division, negatives too)."""
    ms = ms.cast(pa.int64())
    # Arrow's integer divide truncates towards zero; shift negatives down by one window.
    quotient = pc.divide(pc.subtract(ms, pc.if_else(pc.less(ms, 0), size_ms - 1, 0)), size_ms)
    return pc.multiply(quotient, size_ms)


def event_partial(batch: ValidatedBatch, window_ms: int, lateness_ms: int) -> ProfilePartial:
    """The profile contribution of one validated poll."""
    windows: dict[WindowKey, WindowProfile] = {}
    if batch.events:
        events = batch.events
        ts = pa.array([e["ts"] for e in events], pa.int64())
        ingest = pa.array([e["ingest_ts"] for e in events], pa.int64())
        columns: dict[str, pa.Array] = {
            "amount": pa.array([e.get("amount") for e in events], pa.float64()),
            "ingest_lag_s": pc.divide(pc.cast(pc.subtract(ingest, ts), pa.float64()), 1000.0),
        }
        for name in CATEGORY_EVENT_FIELDS:
            columns[name] = pa.array([e.get(name) for e in events], pa.string())
        starts = window_starts(ts, window_ms)
        for start in pc.unique(starts).to_pylist():
            mask = pc.equal(starts, start)
            profile = WindowProfile()
            for name, values in columns.items():
                chosen = values.filter(mask)
                profile.fields[name] = (numeric_stats(chosen) if name in NUMERIC_EVENT_FIELDS
                                        else category_stats(chosen))
            profile.valid = profile.consumed = profile.fields["amount"].count
            windows[(EVENTS_SCOPE, start)] = profile
    for q in batch.quarantined:
        at = q.clock_ms - lateness_ms
        start = at - at % window_ms
        window = windows.get((EVENTS_SCOPE, start))
        if window is None:
            window = windows[(EVENTS_SCOPE, start)] = WindowProfile()
        window.consumed += 1
        window.reasons[q.reason] += 1
    return ProfilePartial(source=f"p{batch.partition}", sources=batch.partitions,
                          clock_ms=batch.clock_ms, windows=windows)


def warmup_ms(view: FeatureView) -> int:
    """How long a view's values keep filling up after its first window (its length or gap)."""
    window = view.window
    return (window.gap_s if isinstance(window, Session) else window.size_s) * 1000


def finality_delay_ms(view: FeatureView) -> int:
    """How far past a window's end the close clock must be before it is final."""
    return view.window.gap_s * 1000 + 1 if isinstance(view.window, Session) else 0


def feature_partial(output: FeatureOutput, views: dict[str, FeatureView], shards: int,
                    window_ms: int) -> ProfilePartial | None:
    """The profile contribution of a feature shard's final windows (``None``: nothing to add)."""
    if output.closed_until is None:
        return None
    windows: dict[WindowKey, WindowProfile] = {}
    for batch in output.history:
        view = views[batch.view]
        ends = pa.array(batch.ends, pa.int64())
        starts = window_starts(pc.subtract(ends, 1), window_ms)
        columns = {name: pa.array(values) for name, values in batch.features.items()}
        for start in pc.unique(starts).to_pylist():
            mask = pc.equal(starts, start)
            profile = WindowProfile()
            for name, values in columns.items():
                profile.fields[name] = numeric_stats(values.filter(mask))
            profile.valid = profile.consumed = pc.sum(mask).as_py() or 0
            windows[(view.name, start)] = profile
    return ProfilePartial(source=f"s{output.shard}", sources=shards,
                          clock_ms=output.closed_until, windows=windows)

