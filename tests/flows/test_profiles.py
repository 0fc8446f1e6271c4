"""Profiles, quality dimensions and drift: streaming vs a plain reference, and drift detection."""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from typing import Any

import orjson
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from flows.features import FeatureConfig, FeatureShard, route
from flows.profiler import QUALITY_FIELD, ProfileConfig, Profiler
from flows.profiles import (
    EVENTS_SCOPE,
    event_partial,
    feature_partial,
    finality_delay_ms,
    window_starts,
)
from flows.records import RawBatch, RawRecord, ValidatedBatch
from flows.sketch import count_buckets, psi, quantiles
from flows.validate import PartitionValidator, ValidationConfig
from flows.views import DEFAULT_VIEWS
from tests.flows.test_windowing_property import LATENESS, build_partitions, decode, event_st
from tests.reference import Rec, reference_validate, reference_windows

WINDOW = 300_000
SHARDS = 2
VIEWS = {v.name: v for v in DEFAULT_VIEWS}


def config(**extra: Any) -> ProfileConfig:
    base: dict[str, Any] = {
        "window_ms": WINDOW, "allowed_lateness_ms": LATENESS, "shards": SHARDS, "min_drift_count": 1,
        "view_delays_ms": tuple((v.name, finality_delay_ms(v)) for v in DEFAULT_VIEWS)}
    return ProfileConfig(**{**base, **extra})


def stream(parts: dict[int, list[RawRecord]], rnd: random.Random) -> list[dict[str, Any]]:
    """The dataflow's profile path, step by step, under a random interleaving and batching."""
    validators = {p: PartitionValidator(ValidationConfig(allowed_lateness_ms=LATENESS), decode)
                  for p in parts}
    feature_cfg = FeatureConfig(allowed_lateness_ms=LATENESS, report_progress=True)
    shards = {str(s): FeatureShard(DEFAULT_VIEWS, feature_cfg) for s in range(SHARDS)}
    profiler = Profiler(config())
    rows: list[dict[str, Any]] = []
    cursors = dict.fromkeys(parts, 0)
    while any(cursors[p] < len(parts[p]) for p in parts):
        p = rnd.choice([q for q in parts if cursors[q] < len(parts[q])])
        recs = parts[p][cursors[p]:cursors[p] + rnd.randint(1, 7)]
        cursors[p] += len(recs)
        vb = validators[p].validate(RawBatch("t", p, len(parts), recs, 0))
        rows += profiler.add(event_partial(vb, WINDOW, LATENESS))
        for key, sb in route(vb, DEFAULT_VIEWS, SHARDS):
            out = shards[key].apply(sb)
            if out is not None:
                partial = feature_partial(out, VIEWS, SHARDS, WINDOW)
                if partial is not None:
                    rows += profiler.add(partial)
    for shard in shards.values():
        out = shard.close_all()
        partial = feature_partial(out, VIEWS, SHARDS, WINDOW) if out is not None else None
        if partial is not None:
            rows += profiler.add(partial)
    return rows + profiler.close_all()


def approx(a: float | None, b: float | None, rel: float = 1e-9) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-9)


def check_numeric(row: dict[str, Any], values: list[float | None]) -> None:
    present = sorted(v for v in values if v is not None)
    assert row["count"] == len(values) and row["nulls"] == len(values) - len(present)
    if not present:
        assert row.get("mean") is None
        return
    mean = math.fsum(present) / len(present)
    variance = math.fsum((v - mean) ** 2 for v in present) / len(present)
    assert (row["min"], row["max"]) == (present[0], present[-1])
    assert approx(row["mean"], mean) and approx(row["stddev"], math.sqrt(variance), 1e-6)
    for q, name in ((0.5, "p50"), (0.9, "p90"), (0.99, "p99")):
        true = present[math.floor(q * (len(present) - 1))]
        assert abs(row[name] - true) <= 0.01 * abs(true) + 1e-12, (name, row[name], true)


def reference_rows(parts: dict[int, list[RawRecord]]) -> dict[tuple[str, int, str], Any]:
    """Profiles computed the plain way: validate everything, then group by window."""
    recs, clock_at = [], {}
    for p, rs in parts.items():
        clock = None
        for r in rs:
            clock = r.timestamp_ms if clock is None else max(clock, r.timestamp_ms)
            clock_at[(p, r.offset)] = clock
            recs.append(Rec(p, r.offset, r.timestamp_ms, len(r.value or b"") + len(r.key or b""),
                            orjson.loads(r.value or b"null")))
    counted, reasons = reference_validate(recs, lateness_ms=LATENESS)
    expected: dict[tuple[str, int, str], Any] = {}
    by_window: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for e in counted:
        by_window[e["ts"] - e["ts"] % WINDOW].append(e)
    quarantined: dict[int, Counter[str]] = defaultdict(Counter)
    for key, reason in reasons.items():
        at = clock_at[key] - LATENESS
        quarantined[at - at % WINDOW][reason] += 1
    for start in set(by_window) | set(quarantined):
        events = by_window.get(start, [])
        expected[(EVENTS_SCOPE, start, QUALITY_FIELD)] = (len(events), dict(quarantined[start]))
        if events:
            expected[(EVENTS_SCOPE, start, "amount")] = [e.get("amount") for e in events]
            expected[(EVENTS_SCOPE, start, "ingest_lag_s")] = [
                (e["ingest_ts"] - e["ts"]) / 1000 for e in events]
            expected[(EVENTS_SCOPE, start, "event_type")] = Counter(e["event_type"] for e in events)
    for view in DEFAULT_VIEWS:
        windows: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for (_, _, end), feats in reference_windows(view, counted).items():
            windows[(end - 1) - (end - 1) % WINDOW].append(feats)
        for start, feats in windows.items():
            for name in view.feature_names:
                expected[(view.name, start, name)] = [f[name] for f in feats]
    return expected


def check_against_reference(rows: list[dict[str, Any]], parts: dict[int, list[RawRecord]]) -> None:
    got = {(r["scope"], r["window_start"], r["field"]): r for r in rows}
    assert len(got) == len(rows), "a profile row was emitted twice"
    expected = reference_rows(parts)
    for key, want in expected.items():
        row = got.get(key)
        assert row is not None, f"missing profile row {key}"
        if key[2] == QUALITY_FIELD:
            valid, reasons = want
            assert (row["valid"], orjson.loads(row["reasons"])) == (valid, reasons), key
            assert row["consumed"] == valid + sum(reasons.values())
        elif isinstance(want, Counter):
            assert dict(orjson.loads(row["top"])) == dict(want), key
        else:
            check_numeric(row, want)
    extra = {k for k in got if k not in expected and k[2] not in ("currency", "channel")}
    assert not extra, f"rows the reference does not have: {sorted(extra)[:5]}"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=st.lists(event_st, min_size=1, max_size=60), seed=st.integers(0, 10_000))
def test_streaming_profiles_equal_reference(specs: list[dict[str, Any]], seed: int) -> None:
    parts = build_partitions(specs)
    rows = stream(parts, random.Random(seed))
    check_against_reference(rows, parts)
    # Another interleaving and batching: the same rows apart from float rounding of
    # mean/stddev. Not in the same order: when windows close depends on batching
    # (one poll may close two windows that another batching closes one by one).
    other = stream(parts, random.Random(seed + 1))
    loose = ("mean", "stddev", "psi")

    def strip(found: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return sorted(({k: v for k, v in r.items() if k not in loose} for r in found),
                      key=lambda r: (r["scope"], r["window_start"], r["field"]))

    assert strip(rows) == strip(other)


def test_sketch_quantiles_within_relative_accuracy() -> None:
    rnd = random.Random(3)
    values = [rnd.lognormvariate(3, 1.5) for _ in range(20_000)] + [0.0] * 50 + [-5.0, -0.25]
    buckets = count_buckets(pa.array(values + [None, float("nan")]))
    assert sum(buckets.values()) == len(values)
    ordered = sorted(values)
    qs = [0.0, 0.001, 0.01, 0.25, 0.5, 0.9, 0.99, 0.999, 1.0]
    for q, got in zip(qs, quantiles(buckets, qs), strict=True):
        true = ordered[math.floor(q * (len(ordered) - 1))]
        assert got is not None and abs(got - true) <= 0.01 * abs(true) + 1e-12, (q, got, true)


def test_window_starts_floor_negative_times() -> None:
    got = window_starts(pa.array([-1, 0, 299_999, 300_000, -300_000, -300_001]), WINDOW)
    assert got.to_pylist() == [-300_000, 0, 0, 300_000, -300_000, -600_000]


def test_psi_is_small_for_the_same_distribution_and_large_for_a_halving() -> None:
    rnd = random.Random(11)
    ref = count_buckets(pa.array([rnd.lognormvariate(3.2, 0.9) for _ in range(5000)]))
    same = count_buckets(pa.array([rnd.lognormvariate(3.2, 0.9) for _ in range(500)]))
    halved = count_buckets(pa.array([rnd.lognormvariate(3.2, 0.9) * 0.5 for _ in range(500)]))
    assert psi(ref, same) is not None and psi(ref, same) < 0.1  # type: ignore[operator]
    assert psi(ref, halved) is not None and psi(ref, halved) > 0.25  # type: ignore[operator]
    assert psi(ref, {}) is None and psi({}, same) is None


def purchases(start_ms: int, minutes: int, per_minute: int, scale_from: int | None,
              rnd: random.Random) -> list[ValidatedBatch]:
    """One partition's valid purchases, a batch per minute of ingest time."""
    batches = []
    for m in range(minutes):
        now = start_ms + (m + 1) * 60_000
        events = []
        for i in range(per_minute):
            ts = now - 60_000 + i * (60_000 // per_minute)
            amount = round(rnd.lognormvariate(3.2, 0.9), 2)
            if scale_from is not None and ts >= scale_from:
                amount = round(amount * 0.5, 2)
            events.append({"ts": ts, "ingest_ts": ts + 500, "amount": amount,
                           "event_type": "purchase", "currency": "USD", "channel": "web"})
        batches.append(ValidatedBatch(topic="t", partition=0, partitions=1, events=events,
                                      quarantined=[], clock_ms=now, consumed=per_minute))
    return batches


def drift_run(scale_from: int | None) -> dict[int, float | None]:
    profiler = Profiler(config(min_drift_count=50, allowed_lateness_ms=0))
    rows = []
    for vb in purchases(0, 120, 40, scale_from, random.Random(5)):
        rows += profiler.add(event_partial(vb, WINDOW, 0))
    return {r["window_start"]: r.get("psi") for r in rows
            if r["scope"] == EVENTS_SCOPE and r["field"] == "amount"}


def test_an_amount_halving_crosses_the_alert_threshold_within_one_window() -> None:
    shift_at = 60 * 60_000  # amounts halve from minute 60 on
    psi_by_window = drift_run(shift_at)
    assert psi_by_window[0] is None and psi_by_window[WINDOW] is None  # warm-up, no reference
    before = [v for s, v in psi_by_window.items() if WINDOW < s < shift_at]
    assert before and all(v is not None and v < 0.25 for v in before), before
    first_shifted = psi_by_window[shift_at]
    assert first_shifted is not None and first_shifted > 0.25
    # The metric the alert rule reads was past the threshold once that window closed.
    assert drift_run(None) and max(v for v in drift_run(None).values() if v is not None) < 0.25
    psi_metric = REGISTRY.get_sample_value("kappa_drift_psi", {"scope": EVENTS_SCOPE,
                                                               "field": "amount"})
    assert psi_metric is not None


def test_gauge_reports_the_shift_when_its_window_closes() -> None:
    shift_at = 60 * 60_000
    profiler = Profiler(config(min_drift_count=50, allowed_lateness_ms=0))
    labels = {"scope": EVENTS_SCOPE, "field": "amount"}
    for vb in purchases(0, 66, 40, shift_at, random.Random(5)):
        profiler.add(event_partial(vb, WINDOW, 0))
        if vb.clock_ms == shift_at:
            assert REGISTRY.get_sample_value("kappa_drift_psi", labels) < 0.25
    # Clock at 66 min: the window [60, 65) min closed, one window after the shift began.
    assert REGISTRY.get_sample_value("kappa_drift_psi", labels) > 0.25


def test_first_window_and_a_views_fill_up_time_never_alert() -> None:
    # A view whose values fill up for 15 min (3 profile windows) after its first window.
    profiler = Profiler(config(min_drift_count=1, allowed_lateness_ms=0,
                               warmups_ms=(("events", 3 * WINDOW),)))
    rows = [r for vb in purchases(0, 60, 20, None, random.Random(4))
            for r in profiler.add(event_partial(vb, WINDOW, 0))]
    psi_by_start = {r["window_start"]: r.get("psi") for r in rows if r["field"] == "amount"}
    assert all(psi_by_start[s] is None for s in range(0, 5 * WINDOW, WINDOW))
    assert psi_by_start[5 * WINDOW] is not None  # first window with a settled reference


def test_snapshot_restores_open_windows_and_references() -> None:
    batches = purchases(0, 30, 20, None, random.Random(2))
    whole = Profiler(config(allowed_lateness_ms=0))
    rows_whole = [r for vb in batches for r in whole.add(event_partial(vb, WINDOW, 0))]
    first = Profiler(config(allowed_lateness_ms=0))
    rows = [r for vb in batches[:17] for r in first.add(event_partial(vb, WINDOW, 0))]
    resumed = Profiler(config(allowed_lateness_ms=0), first.snapshot())
    rows += [r for vb in batches[17:] for r in resumed.add(event_partial(vb, WINDOW, 0))]
    assert rows == rows_whole
