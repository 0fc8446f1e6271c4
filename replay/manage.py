"""``kappa versions list|verify|promote|drop``: the version lifecycle after a replay.

``verify`` compares a candidate with the current version over the range both
cover — row counts, quarantine rates by reason, and per-view feature values of
a sample of entities — and says whether they agree. ``promote`` is one atomic
pointer switch; ``drop`` removes a non-current version's tables, keys and state.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import replace
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from flows.recovery import RecoveryStore
from flows.views import DEFAULT_VIEWS, FeatureView
from kappa.errors import ConfigError
from kappa.settings import Settings
from replay.versions import (
    DEFAULT_VERSION,
    Version,
    current_for,
    current_version,
    set_current,
    version_for,
)
from sinks.iceberg import open_catalog
from sinks.redis import redis_client


def _version(settings: Settings, name: str) -> Version:
    return version_for(name, base_namespace=settings.namespace, base_prefix=settings.redis_prefix)


def _tables(catalog: Any, namespace: str) -> dict[str, Any]:
    if (namespace,) not in catalog.list_namespaces():
        return {}
    return {ident[-1]: catalog.load_table(ident) for ident in catalog.list_tables(namespace)}


def _rows(table: Any) -> int:
    snap = table.current_snapshot()
    return int(snap.summary.additional_properties.get("total-records", 0)) if snap else 0


def list_versions(settings: Settings) -> dict[str, Any]:
    """Every version with its tables' row counts, and which one readers use."""
    catalog = open_catalog(settings.catalog_uri, settings.warehouse)
    current = current_for(settings)
    out = []
    for (ns,) in sorted(catalog.list_namespaces()):
        if ns == settings.namespace:
            name = DEFAULT_VERSION
        elif ns.startswith(settings.namespace + "_"):
            name = ns[len(settings.namespace) + 1:]
        else:
            continue
        version = _version(settings, name)
        store = RecoveryStore.for_outputs(replace(settings, namespace=version.namespace,
                                                  redis_prefix=version.redis_prefix))
        out.append({"version": name, "namespace": ns, "redis_prefix": version.redis_prefix,
                    "current": name == current.name, "complete": store.completed() is not None,
                    "tables": {t: _rows(tbl) for t, tbl in sorted(_tables(catalog, ns).items())}})
    return {"current": current.name, "versions": out}


def _features(table: Any, view: FeatureView) -> pa.Table:
    return table.scan().to_arrow().select([view.entity, "window_start", "window_end",
                                           *view.feature_names])


def _compare_view(view: FeatureView, current: pa.Table, candidate: pa.Table, sample: int,
                  rnd: random.Random) -> dict[str, Any]:
    if current.num_rows == 0 or candidate.num_rows == 0:
        return {"compared": 0, "note": "no rows on one side"}
    lo = max(pc.min(current["window_start"]).as_py(), pc.min(candidate["window_start"]).as_py())
    hi = min(pc.max(current["window_end"]).as_py(), pc.max(candidate["window_end"]).as_py())

    def inside(t: pa.Table) -> pa.Table:
        return t.filter(pc.and_(pc.greater_equal(t["window_start"], lo),
                                pc.less_equal(t["window_end"], hi)))

    cur, cand = inside(current), inside(candidate)
    entities = sorted(set(cur[view.entity].to_pylist()) | set(cand[view.entity].to_pylist()))
    chosen = set(rnd.sample(entities, min(sample, len(entities))))

    def keyed(t: pa.Table) -> dict[tuple[Any, ...], tuple[Any, ...]]:
        rows = t.filter(pc.is_in(t[view.entity], pa.array(sorted(chosen)))).to_pylist()
        return {(r[view.entity], r["window_start"]): tuple(r[f] for f in view.feature_names)
                for r in rows}

    a, b = keyed(cur), keyed(cand)
    different = [k for k in a.keys() & b.keys() if a[k] != b[k]]
    return {"range": [lo.isoformat(), hi.isoformat()], "entities_sampled": len(chosen),
            "compared": len(a.keys() & b.keys()), "different": len(different),
            "only_current": len(a.keys() - b.keys()), "only_candidate": len(b.keys() - a.keys()),
            "examples": [[str(k[0]), k[1].isoformat()] for k in different[:5]]}


def _quarantine_rates(table: Any | None) -> dict[str, float]:
    if table is None:
        return {}
    reasons = table.scan(selected_fields=("reason",)).to_arrow()["reason"]
    total = len(reasons)
    counts = pc.value_counts(reasons).to_pylist() if total else []
    return {c["values"]: round(c["counts"] / total, 6) for c in counts}


def verify(settings: Settings, name: str, *, sample: int = 200, seed: int = 0,
           views: tuple[FeatureView, ...] = DEFAULT_VIEWS) -> dict[str, Any]:
    """Compare version ``name`` with the current one; ``ok`` when nothing differs."""
    catalog = open_catalog(settings.catalog_uri, settings.warehouse)
    current = current_for(settings)
    candidate = _version(settings, name)
    cand_tables = _tables(catalog, candidate.namespace)
    if not cand_tables:
        msg = f"version {name!r} has no tables in {candidate.namespace}"
        raise ConfigError(msg)
    cur_tables = _tables(catalog, current.namespace)
    rnd = random.Random(seed)
    report: dict[str, Any] = {
        "current": current.name, "candidate": candidate.name,
        "row_counts": {t: {"current": _rows(cur_tables[t]) if t in cur_tables else None,
                           "candidate": _rows(cand_tables[t])} for t in sorted(cand_tables)},
        "quarantine_rates": {"current": _quarantine_rates(cur_tables.get("quarantine")),
                             "candidate": _quarantine_rates(cand_tables.get("quarantine"))},
        "views": {},
    }
    ok = True
    for view in views:
        if view.table not in cand_tables or view.table not in cur_tables:
            continue
        result = _compare_view(view, _features(cur_tables[view.table], view),
                               _features(cand_tables[view.table], view), sample, rnd)
        report["views"][view.name] = result
        ok = ok and not result.get("different") and not result.get("only_current") \
            and not result.get("only_candidate")
    report["ok"] = ok
    return report


def promote(settings: Settings, name: str) -> dict[str, Any]:
    """Switch readers to ``name`` atomically (one SET of the pointer)."""
    catalog = open_catalog(settings.catalog_uri, settings.warehouse)
    version = _version(settings, name)
    if not _tables(catalog, version.namespace):
        msg = f"version {name!r} has no tables in {version.namespace}; replay it first"
        raise ConfigError(msg)
    client = redis_client(settings.require_redis())
    try:
        previous = current_version(client, base_namespace=settings.namespace,
                                   base_prefix=settings.redis_prefix)
        set_current(client, version, base_prefix=settings.redis_prefix)
    finally:
        client.close()
    return {"current": version.name, "previous": previous.name}


def drop(settings: Settings, name: str) -> dict[str, Any]:
    """Remove a non-current version: its tables, Redis keys and recovery state."""
    version = _version(settings, name)
    client = redis_client(settings.require_redis())
    try:
        current = current_version(client, base_namespace=settings.namespace,
                                  base_prefix=settings.redis_prefix)
        if name in (current.name, DEFAULT_VERSION):
            msg = f"version {name!r} is current or the live default; promote another first"
            raise ConfigError(msg)
        deleted = 0
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{version.redis_prefix}:*", count=1000):
            batch.append(key)
            if len(batch) == 1000:
                deleted += client.delete(*batch)
                batch = []
        if batch:
            deleted += client.delete(*batch)
    finally:
        client.close()
    catalog = open_catalog(settings.catalog_uri, settings.warehouse)
    tables = _tables(catalog, version.namespace)
    for table in tables:
        catalog.purge_table((version.namespace, table))
    if (version.namespace,) in catalog.list_namespaces():
        catalog.drop_namespace(version.namespace)
    store = RecoveryStore.for_outputs(replace(settings, namespace=version.namespace,
                                              redis_prefix=version.redis_prefix))
    if store.path.exists():
        shutil.rmtree(store.path)
    return {"dropped": name, "tables": sorted(tables), "redis_keys": deleted}
