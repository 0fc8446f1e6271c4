"""Table upkeep: expire snapshots, compact small files, remove orphaned files.

A streaming committer adds one snapshot, one manifest and a few small data
files per epoch; every commit re-reads and re-writes metadata that grows with
them (~0.45 ms per retained snapshot on the SQLite catalog). :func:`maintain`
keeps all three bounded without breaking the exactly-once ledger
(``sinks.ledger``):

* compaction commits carry the newest ``kappa.coverage`` (and the other
  ``kappa.*`` writer properties) into their own summary, computed against the
  exact parent they commit on (pyiceberg's in-transaction rebase is disabled
  for them, so a rebase can never carry a stale coverage);
* expiry never removes the current snapshot, branch/tag heads, the chain that
  ``read_coverage`` walks to the newest coverage, the newest ``min_snapshots``
  or anything younger than the time-travel horizon.

What pyiceberg 0.12 provides and what is ours: snapshot removal is
``table.maintenance.expire_snapshots().by_ids(...)`` (we only choose the ids);
compaction uses pyiceberg's overwrite snapshot producer
(``delete_data_file``/``append_data_file``: one OVERWRITE snapshot replacing
exactly the given files) with its file reader (``ArrowScan``) and writer
(``_dataframe_to_data_files``, private but the same one ``append`` uses) —
0.12 has no ``rewrite_data_files``. Orphan-file removal is ours entirely
(0.12 has none); it lists ``file://`` warehouses only.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import CommitFailedException, NoSuchNamespaceError
from pyiceberg.table import Table, TableProperties
from sqlalchemy.exc import SQLAlchemyError

from kappa.errors import ConfigError, ServiceUnavailable, TransientError
from kappa.metrics import (
    ICEBERG_DATA_FILES,
    ICEBERG_PARTITION_FILES_MAX,
    ICEBERG_SNAPSHOTS,
    MAINTENANCE_EFFECT,
    MAINTENANCE_ERRORS,
    MAINTENANCE_LAST_RUN,
)
from sinks.compaction import MAINTENANCE_PROPERTY, carried_properties, compact, coverage_chain, file_stats

if TYPE_CHECKING:
    from kappa.settings import Settings

__all__ = ["MAINTENANCE_PROPERTY", "MaintenanceConfig", "Maintainer", "carried_properties",
           "compact", "expire_snapshots", "file_stats", "maintain", "maintain_tables", "observe",
           "referenced_files", "remove_orphan_files"]

log = logging.getLogger(__name__)

_TABLE_FILE_SUFFIXES = (".parquet", ".avro", ".metadata.json", ".puffin", ".orc", ".stats")


@dataclass(frozen=True, kw_only=True)
class MaintenanceConfig:
    """What table upkeep needs.

    Attributes:
        enabled: Run the automatic schedule inside ``kappa run``.
        interval_s: Minimum seconds between two automatic runs on one table.
        retain_snapshots_s: Time-travel horizon: snapshots younger than this are kept.
        min_snapshots: The newest this-many snapshots are always kept.
        compact_when_files_over: Compact a partition holding more small files than this.
        target_file_bytes: On-disk size compacted files aim for.
        orphan_older_than_s: Only unreferenced files older than this are deleted
            (a running commit's files are young and unreferenced; 0 is safe only
            for the table's single committer between its own commits).
        max_commit_attempts: Attempts of one compaction commit when it conflicts.
        backoff_base_s: First conflict backoff; doubles per attempt, fully jittered.
        backoff_max_s: Cap of one backoff sleep.
    """

    enabled: bool = True
    interval_s: float = 300.0
    retain_snapshots_s: float = 3600.0
    min_snapshots: int = 10
    compact_when_files_over: int = 16
    target_file_bytes: int = 128 * 1024 * 1024
    orphan_older_than_s: float = 3600.0
    max_commit_attempts: int = 8
    backoff_base_s: float = 0.05
    backoff_max_s: float = 5.0

    def __post_init__(self) -> None:
        if self.interval_s < 0 or self.retain_snapshots_s < 0 or self.orphan_older_than_s < 0:
            msg = "maintenance interval, retention and orphan age must be >= 0"
            raise ConfigError(msg)
        if self.min_snapshots < 1:
            msg = "min_snapshots must be >= 1 (the current snapshot is always kept)"
            raise ConfigError(msg)
        if self.compact_when_files_over < 1 or self.target_file_bytes < 1024:
            msg = "compact_when_files_over must be >= 1 and target_file_bytes >= 1024"
            raise ConfigError(msg)
        if self.max_commit_attempts < 1 or not 0 <= self.backoff_base_s <= self.backoff_max_s:
            msg = "need max_commit_attempts >= 1 and 0 <= backoff_base_s <= backoff_max_s"
            raise ConfigError(msg)

    @classmethod
    def from_settings(cls, settings: Settings) -> MaintenanceConfig:
        """The upkeep slice of the settings (``KAPPA_MAINTENANCE*`` and friends)."""
        return cls(enabled=settings.maintenance, interval_s=settings.maintenance_interval_s,
                   retain_snapshots_s=settings.snapshot_retention_s,
                   min_snapshots=settings.min_snapshots,
                   compact_when_files_over=settings.compact_files_over,
                   target_file_bytes=settings.target_file_bytes,
                   orphan_older_than_s=settings.orphan_age_s)


def _label(table: Table) -> str:
    """``namespace.table``, the metrics label."""
    return ".".join(table.name())


def _wrap_io(what: str, exc: Exception) -> ServiceUnavailable:
    return ServiceUnavailable(f"cannot {what}: {exc}".splitlines()[0])


# -------------------------------------------------------------------- expiry
def expire_snapshots(table: Table, config: MaintenanceConfig, now: float,
                     dry_run: bool = False) -> dict[str, Any]:
    """Expire snapshots beyond the horizon, in one metadata commit.

    Guarantees: the current snapshot, every branch/tag head, the snapshots
    ``read_coverage`` walks (current back to the newest with coverage), the
    newest ``min_snapshots`` and every snapshot younger than
    ``retain_snapshots_s`` (relative to ``now``, epoch seconds) are kept. Files
    are not deleted here; :func:`remove_orphan_files` does that.
    """
    snapshots = sorted(table.snapshots(), key=lambda s: s.timestamp_ms, reverse=True)
    horizon_ms = (now - config.retain_snapshots_s) * 1000
    keep = {s.snapshot_id for s in snapshots[:config.min_snapshots]}
    keep |= {s.snapshot_id for s in snapshots if s.timestamp_ms >= horizon_ms}
    keep |= {ref.snapshot_id for ref in table.metadata.refs.values()}
    keep |= {s.snapshot_id for s in coverage_chain(table)}
    expire = [s.snapshot_id for s in snapshots if s.snapshot_id not in keep]
    if expire and not dry_run:
        try:
            # pyiceberg's own API; it skips branch/tag heads once more on commit.
            table.maintenance.expire_snapshots().by_ids(expire).commit()
        except CommitFailedException as exc:
            msg = f"expiring snapshots of {table.name()} conflicted: {exc}".splitlines()[0]
            raise TransientError(msg) from exc
        except (SQLAlchemyError, OSError) as exc:
            msg = f"expire snapshots of {table.name()}"
            raise _wrap_io(msg, exc) from exc
    return {"snapshots_before": len(snapshots), "snapshots_expired": len(expire),
            "snapshots_after": len(snapshots) - (0 if dry_run else len(expire))}


# ------------------------------------------------------------- orphan files
def _local_path(location: str) -> Path | None:
    parsed = urlparse(location)
    return Path(parsed.path) if parsed.scheme in ("file", "") else None


def referenced_files(table: Table) -> set[str]:
    """Every file the table's metadata still reaches, as local paths.

    Current metadata file and metadata log; per retained snapshot its manifest
    list, manifests and every data/delete file they list (deleted entries
    too, so time travel to any retained snapshot keeps working); statistics.
    """
    paths = {table.metadata_location, *(e.metadata_file for e in table.metadata.metadata_log)}
    paths |= {s.statistics_path for s in table.metadata.statistics}
    paths |= {s.statistics_path for s in table.metadata.partition_statistics}
    seen: set[str] = set()
    for snapshot in table.snapshots():
        paths.add(snapshot.manifest_list)
        for manifest in snapshot.manifests(table.io):
            if manifest.manifest_path in seen:
                continue
            seen.add(manifest.manifest_path)
            paths.add(manifest.manifest_path)
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=False):
                paths.add(entry.data_file.file_path)
    return {str(p) for p in (_local_path(x) for x in paths) if p is not None}


def remove_orphan_files(table: Table, config: MaintenanceConfig, now: float,
                        dry_run: bool = False) -> dict[str, Any]:
    """Delete table files no retained metadata reaches and older than ``orphan_older_than_s``.

    Only the table's ``data`` and ``metadata`` directories are listed, only
    files with Iceberg suffixes are touched, and only on ``file://``
    warehouses (object stores are reported as unsupported, nothing deleted).
    """
    props = table.metadata.properties
    location = table.metadata.location.rstrip("/")
    dirs = [_local_path(props.get(TableProperties.WRITE_DATA_PATH, f"{location}/data")),
            _local_path(props.get(TableProperties.WRITE_METADATA_PATH, f"{location}/metadata"))]
    if any(d is None for d in dirs):
        return {"orphans_supported": False, "orphan_files_removed": 0, "bytes_removed": 0}
    keep = referenced_files(table)
    cutoff = now - config.orphan_older_than_s
    removed = removed_bytes = 0
    for directory in dirs:
        assert directory is not None
        for root, _, names in os.walk(directory):
            for name in names:
                path = os.path.join(root, name)
                if not name.endswith(_TABLE_FILE_SUFFIXES) or path in keep:
                    continue
                try:
                    stat = os.stat(path)
                    if stat.st_mtime > cutoff:
                        continue
                    if not dry_run:
                        os.remove(path)
                except FileNotFoundError:
                    continue
                removed += 1
                removed_bytes += stat.st_size
    return {"orphans_supported": True, "orphan_files_removed": removed,
            "bytes_removed": removed_bytes}


# ---------------------------------------------------------------- all three
def maintain(table: Table, config: MaintenanceConfig, now: float,
             dry_run: bool = False) -> dict[str, Any]:
    """Compact, then expire, then remove orphans; returns what changed.

    ``now`` is wall-clock epoch seconds (snapshot timestamps are wall clock).
    Safe to run while another process appends (conflicts are retried; young
    files are never deleted) and safe to kill at any point: a rerun completes.
    """
    started = time.perf_counter()
    name = _label(table)
    try:
        before = file_stats(table)
        compacted = compact(table, config, dry_run)
        expired = expire_snapshots(table, config, now, dry_run)
        orphans = remove_orphan_files(table, config, now, dry_run)
        after = before if dry_run else file_stats(table)
    except (SQLAlchemyError, OSError) as exc:
        MAINTENANCE_ERRORS.labels(table=name).inc()
        msg = f"maintain {name}"
        raise _wrap_io(msg, exc) from exc
    except TransientError:
        MAINTENANCE_ERRORS.labels(table=name).inc()
        raise
    summary = {"table": name, "dry_run": dry_run,
               "data_files_before": before["data_files"], "data_files_after": after["data_files"],
               "max_files_per_partition_before": before["max_files_per_partition"],
               "max_files_per_partition_after": after["max_files_per_partition"],
               **compacted, **expired, **orphans,
               "seconds": round(time.perf_counter() - started, 4)}
    if not dry_run:
        observe(table, after)
        MAINTENANCE_LAST_RUN.labels(table=name).set(now)
        for effect in ("files_rewritten", "snapshots_expired", "orphan_files_removed",
                       "bytes_removed"):
            MAINTENANCE_EFFECT.labels(table=name, effect=effect).inc(summary[effect])
    return summary


def observe(table: Table, stats: dict[str, int] | None = None) -> None:
    """Set the per-table gauges (snapshots; data files when ``stats`` is given)."""
    name = _label(table)
    ICEBERG_SNAPSHOTS.labels(table=name).set(len(table.metadata.snapshots))
    if stats is not None:
        ICEBERG_DATA_FILES.labels(table=name).set(stats["data_files"])
        ICEBERG_PARTITION_FILES_MAX.labels(table=name).set(stats["max_files_per_partition"])


class Maintainer:
    """The automatic schedule, run by a table's single committer after its commits.

    Guarantees: at most one :func:`maintain` per ``interval_s`` (on
    ``now_getter``, monotonic); never concurrently with that committer's own
    commits (it is called from the committer, between commits). A transient
    failure is logged and counted, and retried at the next interval; anything
    else propagates.
    """

    def __init__(self, config: MaintenanceConfig, *,
                 now_getter: Callable[[], float] = time.monotonic,
                 wall_getter: Callable[[], float] = time.time) -> None:
        self.config = config
        self._now = now_getter
        self._wall = wall_getter
        self._last = self._now()
        self.runs: list[dict[str, Any]] = []
        """Summaries of the runs so far (the newest few), for tests and logs."""

    def after_commit(self, table: Table) -> dict[str, Any] | None:
        """Called once after each successful commit; maintains when the interval passed."""
        observe(table)
        if not self.config.enabled or self._now() - self._last < self.config.interval_s:
            return None
        self._last = self._now()
        try:
            summary = maintain(table, self.config, self._wall())
        except TransientError as exc:
            log.warning("maintenance of %s failed, retrying next interval: %s", table.name(), exc)
            return None
        self.runs = [*self.runs[-9:], summary]
        log.info("maintained %s: %s", summary["table"], summary)
        return summary


def maintain_tables(catalog: Catalog, namespace: str, names: list[str] | None,
                    config: MaintenanceConfig, now: float,
                    dry_run: bool = False) -> dict[str, Any]:
    """:func:`maintain` each named table of ``namespace`` (all of them when ``names`` is None).

    Raises:
        ConfigError: The namespace or a named table does not exist.
        ServiceUnavailable: The catalog cannot be read.
    """
    try:
        existing = sorted(ident[-1] for ident in catalog.list_tables(namespace))
    except NoSuchNamespaceError as exc:
        msg = f"no Iceberg namespace {namespace!r} (nothing has been written yet?)"
        raise ConfigError(msg) from exc
    except (SQLAlchemyError, OSError) as exc:
        msg = f"list tables of {namespace}"
        raise _wrap_io(msg, exc) from exc
    unknown = sorted(set(names or ()) - set(existing))
    if unknown:
        msg = f"no such table in {namespace}: {', '.join(unknown)}; tables: {', '.join(existing)}"
        raise ConfigError(msg)
    results = {}
    for name in names or existing:
        try:
            table = catalog.load_table((namespace, name))
        except (SQLAlchemyError, OSError) as exc:
            msg = f"load {namespace}.{name}"
            raise _wrap_io(msg, exc) from exc
        results[name] = maintain(table, config, now, dry_run)
    return {"namespace": namespace, "dry_run": dry_run, "tables": results}
