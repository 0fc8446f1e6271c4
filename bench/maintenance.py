"""Commit latency and small files over a long streaming run, with and without table upkeep.

    python -m bench.maintenance [--commits N] [--rows R] [--interval-commits K]

Two ``log`` tables in one scratch SQLite catalog are written by the real sink
partition (coverage in every snapshot, one commit per simulated 10 s epoch),
alternating commit by commit so both see the same machine noise. One runs
the automatic schedule (every ``K`` epochs: compact, expire, remove
orphans); the other never does. Prints JSON.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import REGISTRY

from flows.records import RawRecord, TableRows
from sinks import tables
from sinks.iceberg import IcebergConfig, IcebergSink
from sinks.maintenance import MaintenanceConfig, file_stats

EPOCH_S = 10.0
T0 = 1_767_225_600_000  # 2026-01-01
DAY_MS = 86_400_000


@dataclass
class _Run:
    namespace: str
    part: Any
    latencies: list[float] = field(default_factory=list)
    max_files: int = 0
    maintenance_s: float = 0.0


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _rows(start: int, n: int) -> TableRows:
    # Four source partitions over two days: two table partitions per commit.
    return TableRows(tables.log_rows([
        RawRecord("bench", i % 4, i, T0 + (i % 2) * DAY_MS + i, b"k", b"v" * 64, ())
        for i in range(start, start + n)]))


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(run: _Run, window: int) -> dict[str, Any]:
    ms = [v * 1000 for v in run.latencies]
    table = run.part._writer.table
    stats = file_stats(table)
    location = Path(table.location().removeprefix("file://"))
    return {
        "first_mean_ms": round(statistics.mean(ms[:window]), 2),
        "last_mean_ms": round(statistics.mean(ms[-window:]), 2),
        "last_over_first": round(statistics.mean(ms[-window:]) / statistics.mean(ms[:window]), 2),
        "p50_ms": round(_percentile(ms, 0.5), 2),
        "p99_ms": round(_percentile(ms, 0.99), 2),
        "snapshots_at_end": len(table.snapshots()),
        "files_per_partition_at_end": stats["max_files_per_partition"],
        "files_per_partition_max_seen": run.max_files,
        "data_files_live": stats["data_files"],
        "files_on_disk": sum(1 for p in location.rglob("*") if p.is_file()),
        "maintenance_seconds_total": round(run.maintenance_s, 2),
    }


def main() -> None:
    """Run the benchmark and print the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commits", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=50, help="rows per commit")
    parser.add_argument("--interval-commits", type=int, default=30,
                        help="epochs between maintenance runs (30 x 10 s = the 300 s default)")
    parser.add_argument("--min-snapshots", type=int, default=10)
    parser.add_argument("--files-over", type=int, default=16)
    parser.add_argument("--window", type=int, default=50, help="commits in first/last means")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="kappa-bench-maint-"))
    clock = _Clock()
    # Snapshots are time-stamped on the wall clock while epochs are simulated,
    # so the time-travel horizon is 0 here and min_snapshots does the keeping.
    upkeep = MaintenanceConfig(interval_s=args.interval_commits * EPOCH_S, retain_snapshots_s=0,
                               min_snapshots=args.min_snapshots,
                               compact_when_files_over=args.files_over, orphan_older_than_s=0)
    runs = []
    for namespace, maintenance in (("plain", None), ("maintained", upkeep)):
        config = IcebergConfig(catalog_uri=f"sqlite:///{home / 'catalog.db'}",
                               warehouse=f"file://{home / 'warehouse'}", namespace=namespace,
                               commit_on_snapshot=True, maintenance=maintenance)
        sink = IcebergSink(config, ["log"], now_getter=clock)
        runs.append(_Run(namespace, sink.build_part("iceberg", "log", None)))
    try:
        for c in range(args.commits):
            clock.now += EPOCH_S
            for run in runs:
                label = {"table": f"{run.namespace}.log"}
                before = REGISTRY.get_sample_value("kappa_iceberg_commit_seconds_sum", label) or 0.0
                run.part.write_batch([_rows(c * args.rows, args.rows)])
                started = time.perf_counter()
                run.part.snapshot()  # commit, then maintain when due
                total = time.perf_counter() - started
                after = REGISTRY.get_sample_value("kappa_iceberg_commit_seconds_sum", label) or 0.0
                commit = after - before
                run.latencies.append(commit)
                run.maintenance_s += total - commit
                if (c + 2) % args.interval_commits == 0:  # the peak: just before a run
                    stats = file_stats(run.part._writer.table)
                    run.max_files = max(run.max_files, stats["max_files_per_partition"])
        report = {
            "commits": args.commits, "rows_per_commit": args.rows,
            "maintenance": {"every_commits": args.interval_commits,
                            "min_snapshots": args.min_snapshots,
                            "compact_when_files_over": args.files_over},
            "commit_latency_window": args.window,
            **{run.namespace: _summary(run, args.window) for run in runs},
        }
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
