"""Online/offline consistency: Redis must serve what the Iceberg history says it should.

For a random sample of online keys per view (of the current version), the
online value must be the entity's *latest final* offline window, with equal
feature values. "Latest" is the window holding the entity's latest counted
event; for tumbling and session views that is the window with the largest end,
for a sliding view the one of those holding that event that ends first, i.e.
``max(window_end) - (size - hop)`` (DESIGN.md, "Online value").

Online values of open windows (``final: false``) have no offline row yet: they
are counted as ``open_windows`` and listed, never compared.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.expressions import In
from redis.exceptions import RedisError

from flows.views import FeatureView, Sliding
from kappa.errors import ServiceUnavailable
from serving.client import FeatureClient

MAX_LISTED = 50
"""Mismatches / open windows listed per view (all are counted)."""


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def sample_entities(client: FeatureClient, prefix: str, view: FeatureView, n: int,
                    rng: random.Random) -> list[str]:
    """Up to ``n`` entities of ``view`` under ``prefix``, uniformly (reservoir over SCAN).

    Raises:
        ServiceUnavailable: Redis did not answer.
    """
    head = f"{prefix}:{view.name}:"
    sample: list[str] = []
    seen = 0
    try:
        for key in client.redis.scan_iter(match=_glob_escape(head) + "*", count=1000):
            entity = key.decode()[len(head):]
            seen += 1
            if len(sample) < n:
                sample.append(entity)
            else:
                j = rng.randrange(seen)
                if j < n:
                    sample[j] = entity
    except RedisError as exc:
        msg = f"cannot scan Redis keys: {exc}".splitlines()[0]
        raise ServiceUnavailable(msg) from exc
    return sorted(sample)


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def _iso_ms(text: str) -> int:
    return _ms(datetime.fromisoformat(text))


def _latest_offline(view: FeatureView, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The offline row the online store should serve, given one entity's final windows."""
    max_end = max(_ms(r["window_end"]) for r in rows)
    target = max_end
    if isinstance(view.window, Sliding):
        target = max_end - (view.window.size_s - view.window.hop_s) * 1000
    for row in rows:
        if _ms(row["window_end"]) == target:
            return row
    return max(rows, key=lambda r: r["window_end"])


def _offline(catalog: Catalog, namespace: str, view: FeatureView,
             entities: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    try:
        table = catalog.load_table(f"{namespace}.{view.table}")
    except NoSuchTableError:
        return {}
    data: pa.Table = table.scan(row_filter=In(view.entity, set(entities))).to_arrow()  # type: ignore[call-arg,arg-type]  # pydantic signature
    data = data.sort_by([(view.entity, "ascending"), ("window_end", "ascending")])
    out: dict[str, list[dict[str, Any]]] = {}
    for row in data.to_pylist():
        out.setdefault(row[view.entity], []).append(row)
    return out


def verify_view(client: FeatureClient, catalog: Catalog, namespace: str, prefix: str,
                view: FeatureView, sample: int, rng: random.Random) -> dict[str, Any]:
    """Compare a sample of one view's online values with the offline history."""
    entities = sample_entities(client, prefix, view, sample, rng)
    result = client.get_online_features(view.name, entities) if entities else None
    offline = _offline(catalog, namespace, view, entities) if entities else {}
    mismatches: list[dict[str, Any]] = []
    open_windows: list[dict[str, Any]] = []
    compared = matched = 0
    for row in result.rows if result else []:
        online = row.views[view.name]
        if online.status == "missing":  # expired between SCAN and lookup
            continue
        assert online.window_start is not None and online.window_end is not None
        where = {"entity": row.entity, "window_start": online.window_start,
                 "window_end": online.window_end}
        if not online.final:
            open_windows.append(where)
            continue
        compared += 1
        history = offline.get(row.entity)
        if not history:
            mismatches.append({**where, "problem": "no_offline_row"})
            continue
        want = _latest_offline(view, history)
        want_window = (_ms(want["window_start"]), _ms(want["window_end"]))
        if (_iso_ms(online.window_start), _iso_ms(online.window_end)) != want_window:
            mismatches.append({**where, "problem": "window",
                               "offline_window_start": want["window_start"].isoformat(),
                               "offline_window_end": want["window_end"].isoformat()})
            continue
        diff = {name: {"online": online.features.get(name), "offline": want[name]}
                for name in view.feature_names if online.features.get(name) != want[name]}
        if diff:
            mismatches.append({**where, "problem": "values", "features": diff})
        else:
            matched += 1
    return {"sampled": len(entities), "compared": compared, "matched": matched,
            "mismatched": len(mismatches), "open_windows": len(open_windows),
            "mismatches": mismatches[:MAX_LISTED], "open": open_windows[:MAX_LISTED]}


def verify(client: FeatureClient, catalog: Catalog, *, sample: int = 100,
           views: Sequence[FeatureView] | None = None, seed: int | None = None) -> dict[str, Any]:
    """Check a sample of each view's online values against the offline history.

    Both sides are read from the current version (resolved once at the start).

    Returns:
        ``{"version", "namespace", "ok", "mismatched", "views": {name: report}}``;
        ``ok`` is true when no compared value differs.

    Raises:
        ServiceUnavailable: Redis or the catalog did not answer.
    """
    rng = random.Random(seed)
    version = client.current_version()
    chosen = list(views) if views is not None else list(client.views.values())
    reports = {v.name: verify_view(client, catalog, version.namespace, version.redis_prefix, v,
                                   sample, rng) for v in chosen}
    total = sum(r["mismatched"] for r in reports.values())
    if client.current_version() != version:
        total += 1
        reports["_version"] = {"problem": "the current version changed during verification"}
    return {"version": version.name, "namespace": version.namespace, "ok": total == 0,
            "mismatched": total, "views": reports}

