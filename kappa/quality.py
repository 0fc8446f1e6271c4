"""``kappa quality report``: quality dimensions and drift from the ``profiles`` table.

The dataflow writes one row per closed profile window, scope and field
(``flows.profiler``); this module only reads them back, so a report costs a
table scan, never a pass over the events. Drift is the PSI the flow computed
against its reference, or, with ``reference_ms``, recomputed here from the
stored sketches against one pinned window.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from flows.profiler import QUALITY_FIELD
from flows.sketch import psi
from kappa.errors import ConfigError, KappaError

DRIFT_THRESHOLD = 0.25
"""PSI above which a field counts as drifted (also the alert rule's threshold)."""
DIMENSIONS = ("completeness", "validity", "uniqueness", "timeliness")
DAY_MS = 86_400_000


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


def read_profiles(catalog: Any, namespace: str, from_ms: int | None, to_ms: int | None) -> pa.Table:
    """Profile rows of windows starting in ``[from_ms, to_ms)``, oldest first."""
    from pyiceberg.exceptions import NoSuchTableError

    try:
        table = catalog.load_table(f"{namespace}.profiles")
    except NoSuchTableError:
        msg = (f"no profiles table in namespace {namespace!r}: run the flow with profiling on "
               "(KAPPA_PROFILES=1, the default) first")
        raise KappaError(msg) from None
    rows = table.scan().to_arrow()
    starts = pc.divide(pc.cast(rows["window_start"], pa.int64()), 1000)
    rows = rows.append_column("start_ms", starts)
    rows = rows.append_column("end_ms", pc.divide(pc.cast(rows["window_end"], pa.int64()), 1000))
    if from_ms is not None:
        rows = rows.filter(pc.greater_equal(rows["start_ms"], from_ms))
    if to_ms is not None:
        rows = rows.filter(pc.less(rows["start_ms"], to_ms))
    return rows.sort_by([("start_ms", "ascending"), ("scope", "ascending"), ("field", "ascending")])


def _sketch(row: dict[str, Any]) -> dict[int, int]:
    return {int(k): v for k, v in orjson.loads(row["sketch"]).items()} if row.get("sketch") else {}


def build_report(rows: pa.Table, *, threshold: float = DRIFT_THRESHOLD,
                 reference_ms: int | None = None) -> dict[str, Any]:
    """Quality per window and overall, drift per scope and field, and the alerts."""
    records = rows.to_pylist()
    quality = [r for r in records if r["scope"] == "events" and r["field"] == QUALITY_FIELD]
    windows = [{"window_start": _iso(r["start_ms"]), "window_end": _iso(r["end_ms"]),
                "consumed": r["consumed"], "valid": r["valid"],
                **{d: r[d] for d in DIMENSIONS}, "reasons": orjson.loads(r["reasons"] or "{}")}
               for r in quality]
    consumed = sum(r["consumed"] or 0 for r in quality)
    reasons: dict[str, int] = defaultdict(int)
    for w in windows:
        for reason, n in w["reasons"].items():
            reasons[reason] += n
    overall = {"windows": len(windows), "consumed": consumed,
               "valid": sum(r["valid"] or 0 for r in quality), "reasons": dict(reasons)}
    if consumed:
        overall.update({
            "completeness": 1 - reasons.get("missing_field", 0) / consumed,
            "validity": overall["valid"] / consumed,
            "uniqueness": 1 - reasons.get("duplicate", 0) / consumed,
            "timeliness": 1 - reasons.get("late", 0) / consumed})

    pinned: dict[tuple[str, str], dict[int, int]] = {}
    if reference_ms is not None:
        pinned = {(r["scope"], r["field"]): _sketch(r) for r in records
                  if r["start_ms"] == reference_ms and r.get("sketch")}
        if not pinned:
            msg = f"no profile window starts at {_iso(reference_ms)} in the selected range"
            raise ConfigError(msg)
    series: dict[tuple[str, str], list[tuple[int, float | None, float | None]]] = defaultdict(list)
    for r in records:
        if r["field"] == QUALITY_FIELD or r.get("sketch") is None:
            continue
        key = (r["scope"], r["field"])
        value = r["psi"]
        if reference_ms is not None:
            ref = pinned.get(key)
            value = psi(ref, _sketch(r)) if ref and r["start_ms"] != reference_ms else None
        series[key].append((r["start_ms"], value, r["mean"]))
    drift: dict[str, dict[str, Any]] = defaultdict(dict)
    alerts = []
    for (scope, name), points in sorted(series.items()):
        values = [v for _, v, _ in points if v is not None]
        drift[scope][name] = {
            "windows": len(points), "last_psi": points[-1][1], "max_psi": max(values, default=None),
            "drifted_windows": sum(v > threshold for v in values), "last_mean": points[-1][2]}
        alerts += [{"scope": scope, "field": name, "window_start": _iso(start), "psi": v}
                   for start, v, _ in points if v is not None and v > threshold]
    return {"reference": "trailing" if reference_ms is None else _iso(reference_ms),
            "threshold": threshold, "quality": overall, "windows": windows,
            "drift": dict(drift), "alerts": alerts,
            "_series": {f"{s}.{f}": [(t, v) for t, v, _ in pts] for (s, f), pts in series.items()}}


def render_table(report: dict[str, Any]) -> str:
    """The report for people: quality per window, then drift per scope and field."""
    lines = [f"{'window_start':<22}{'consumed':>10}{'valid':>9}"
             + "".join(f"{d[:12]:>14}" for d in DIMENSIONS)]
    for w in report["windows"]:
        lines.append(f"{w['window_start']:<22}{w['consumed']:>10}{w['valid']:>9}"
                     + "".join(f"{(w[d] if w[d] is not None else float('nan')):>14.4f}"
                               for d in DIMENSIONS))
    q = report["quality"]
    if q.get("consumed"):
        lines.append(f"{'overall':<22}{q['consumed']:>10}{q['valid']:>9}"
                     + "".join(f"{q[d]:>14.4f}" for d in DIMENSIONS))
    lines += ["", f"drift (PSI vs {report['reference']}; > {report['threshold']} is drifted)",
              f"{'scope':<22}{'field':<28}{'windows':>8}{'last_psi':>10}{'max_psi':>10}{'drifted':>9}"]
    for scope, fields in report["drift"].items():
        for name, d in fields.items():
            last = "-" if d["last_psi"] is None else f"{d['last_psi']:.3f}"
            peak = "-" if d["max_psi"] is None else f"{d['max_psi']:.3f}"
            lines.append(f"{scope:<22}{name:<28}{d['windows']:>8}{last:>10}{peak:>10}"
                         f"{d['drifted_windows']:>9}")
    return "\n".join(lines)


def plot_drift(report: dict[str, Any], path: Path) -> Path:
    """PNG of every numeric field's PSI over the last day of the report, with the threshold."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    series = report["_series"]
    ends = [t for pts in series.values() for t, _ in pts]
    fig, ax = plt.subplots(figsize=(11, 5.5))
    if ends:
        since = max(ends) - DAY_MS
        for name, pts in sorted(series.items()):
            xs: list[Any] = [datetime.fromtimestamp(t / 1000, tz=UTC) for t, v in pts
                             if v is not None and t >= since]
            ys = [v for t, v in pts if v is not None and t >= since]
            if xs:
                ax.plot(xs, ys, marker=".", linewidth=1, label=name)
    ax.axhline(report["threshold"], color="red", linestyle="--", label="alert threshold")
    ax.set_title(f"Drift (PSI vs {report['reference']}), last day")
    ax.set_xlabel("profile window start (UTC)")
    ax.set_ylabel("PSI")
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    fig.autofmt_xdate()
    fig.tight_layout()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    except OSError as exc:
        msg = f"cannot write {path}: {exc}"
        raise KappaError(msg) from exc
    finally:
        plt.close(fig)
    return path
