"""A plain, brute-force reference of the pipeline's semantics (DESIGN.md).

Written independently of flows/ and deliberately naive: whole lists, sorting,
no state machines. Tests compare the streaming results with it.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from flows.views import FeatureView, Session, Sliding, Tumbling

CURRENCY = re.compile(r"[A-Z]{3}\Z")
TYPES = {"page_view", "add_to_cart", "purchase", "refund"}


@dataclass
class Rec:
    """A consumed record: coordinates, record timestamp, and what decoding gave."""

    partition: int
    offset: int
    record_ts: int
    size: int
    event: dict[str, Any] | None  # decoded (ts as ms) or None
    decode_reason: str | None = None  # "undecodable" / "unknown_schema" when event is None


def reference_validate(records: Iterable[Rec], *, lateness_ms: int = 60_000,
                       horizon_ms: int = 600_000, future_ms: int = 300_000,
                       max_bytes: int = 65_536) -> tuple[list[dict[str, Any]], dict[tuple[int, int], str]]:
    """Counted events and the quarantine reason of every other record."""
    by_part: dict[int, list[Rec]] = defaultdict(list)
    for r in records:
        by_part[r.partition].append(r)
    counted: list[dict[str, Any]] = []
    reasons: dict[tuple[int, int], str] = {}
    for part, recs in by_part.items():
        recs.sort(key=lambda r: r.offset)
        clock = None
        kept: dict[str, int] = {}
        for r in recs:
            clock = r.record_ts if clock is None else max(clock, r.record_ts)
            key = (part, r.offset)
            ev = r.event
            if r.size > max_bytes:
                reasons[key] = "oversize"
                continue
            if ev is None:
                reasons[key] = r.decode_reason or "undecodable"
                continue
            if any(not ev.get(f) for f in ("event_id", "user_id", "item_id", "session_id")):
                reasons[key] = "missing_field"
                continue
            amount = ev.get("amount")
            if (ev["event_type"] not in TYPES
                    or (amount is None and ev["event_type"] in ("purchase", "refund"))
                    or (amount is not None and (amount < 0 or not math.isfinite(amount)))
                    or (ev.get("currency") is not None and not CURRENCY.match(ev["currency"]))):
                reasons[key] = "invalid_value"
                continue
            if ev["ts"] > r.record_ts + future_ms:
                reasons[key] = "future_timestamp"
                continue
            if ev["ts"] < clock - lateness_ms:
                reasons[key] = "late"
                continue
            prev = kept.get(ev["event_id"])
            if prev is not None and abs(ev["ts"] - prev) <= horizon_ms:
                reasons[key] = "duplicate"
                continue
            kept[ev["event_id"]] = ev["ts"]
            counted.append(dict(ev, partition=part, offset=r.offset, ingest_ts=r.record_ts))
    return counted, reasons


def _features(view: FeatureView, events: list[dict[str, Any]], start: int, end: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in view.features:
        sel = [e for e in events if f.where is None or e["event_type"] in f.where]
        if f.agg == "count":
            out[f.name] = len(sel)
        elif f.agg == "sum":
            out[f.name] = math.fsum(e[f.field] for e in sel if e[f.field] is not None)
        elif f.agg == "max":
            vals = [e[f.field] for e in sel if e[f.field] is not None]
            out[f.name] = max(vals) if vals else None
        elif f.agg == "distinct":
            out[f.name] = len({e[f.field] for e in sel})
        elif f.agg == "duration":
            out[f.name] = (end - start) / 1000.0
    for f in view.features:
        if f.agg == "ratio":
            num, den = out[f.ratio_of[0]], out[f.ratio_of[1]]
            out[f.name] = num / den if den else None
    return out


def reference_windows(view: FeatureView, events: list[dict[str, Any]]
                      ) -> dict[tuple[str, int, int], dict[str, Any]]:
    """Every window with >= 1 counted event: (entity, start, end) -> features."""
    groups: dict[tuple[str, int, int], list[dict[str, Any]]] = defaultdict(list)
    w = view.window
    if isinstance(w, Tumbling):
        size = w.size_s * 1000
        for e in events:
            start = e["ts"] // size * size
            groups[(e[view.entity], start, start + size)].append(e)
    elif isinstance(w, Sliding):
        size, hop = w.size_s * 1000, w.hop_s * 1000
        for e in events:
            first = e["ts"] // hop * hop - size + hop
            for start in range(first, e["ts"] + 1, hop):
                if start <= e["ts"] < start + size:
                    groups[(e[view.entity], start, start + size)].append(e)
    elif isinstance(w, Session):
        gap = w.gap_s * 1000
        per_entity: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for e in events:
            per_entity[e[view.entity]].append(e)
        for entity, evs in per_entity.items():
            evs.sort(key=lambda e: e["ts"])
            run = [evs[0]]
            for e in evs[1:]:
                if e["ts"] - run[-1]["ts"] > gap:
                    groups[(entity, run[0]["ts"], run[-1]["ts"])] = run
                    run = []
                run.append(e)
            groups[(entity, run[0]["ts"], run[-1]["ts"])] = run
    return {k: _features(view, evs, k[1], k[2]) for k, evs in groups.items()}


def reference_online(view: FeatureView, events: list[dict[str, Any]]
                     ) -> dict[str, tuple[int, int, dict[str, Any]]]:
    """Per entity: the window holding its latest counted event (start, end, features)."""
    windows = reference_windows(view, events)
    latest: dict[str, int] = {}
    for e in events:
        ent = e[view.entity]
        latest[ent] = max(latest.get(ent, e["ts"]), e["ts"])
    out: dict[str, tuple[int, int, dict[str, Any]]] = {}
    w = view.window
    for ent, ts in latest.items():
        if isinstance(w, Tumbling):
            size = w.size_s * 1000
            start, end = ts // size * size, ts // size * size + size
        elif isinstance(w, Sliding):
            end = ts // (w.hop_s * 1000) * (w.hop_s * 1000) + w.hop_s * 1000
            start = end - w.size_s * 1000
        else:
            start, end = next((k[1], k[2]) for k in windows if k[0] == ent and k[1] <= ts <= k[2])
        out[ent] = (start, end, windows[(ent, start, end)])
    return out
