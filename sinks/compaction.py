"""Compaction: rewrite partitions of many small files as few large ones, in one commit.

pyiceberg 0.12 has no ``rewrite_data_files``; this is ours, built from
pyiceberg's parts: the scan planner (``plan_files``), its file reader
(``ArrowScan``), its writer (``_dataframe_to_data_files``, private but the one
``append`` uses) and its overwrite snapshot producer (``delete_data_file`` /
``append_data_file``: one OVERWRITE snapshot replacing exactly those files).
See ``sinks.maintenance`` for the schedule and the other upkeep steps.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyiceberg.exceptions import CommitFailedException, ValidationException
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.io.pyarrow import ArrowScan, _dataframe_to_data_files
from pyiceberg.table import FileScanTask, Table, TableProperties
from sqlalchemy.exc import SQLAlchemyError

from kappa.errors import ServiceUnavailable, TransientError
from sinks.ledger import COVERAGE_PROPERTY

if TYPE_CHECKING:
    from pyiceberg.manifest import DataFile

    from sinks.maintenance import MaintenanceConfig

MAINTENANCE_PROPERTY = "kappa.maintenance"
_CARRIED_SKIP = {"kappa.rows"}
_SMALL_SHARE = 0.75
"""A data file below this share of ``target_file_bytes`` (on disk) counts as small."""


# ------------------------------------------------------------------ inspection
def _live_tasks(table: Table) -> list[FileScanTask]:
    return list(table.scan().plan_files()) if table.current_snapshot() else []


def _groups(tasks: Iterable[FileScanTask]) -> dict[tuple[int, str], list[FileScanTask]]:
    groups: dict[tuple[int, str], list[FileScanTask]] = defaultdict(list)
    for task in tasks:
        groups[(task.file.spec_id, repr(task.file.partition))].append(task)
    return groups


def file_stats(table: Table) -> dict[str, int]:
    """Live data files of the current snapshot: total and the most in one partition."""
    groups = _groups(_live_tasks(table))
    return {"data_files": sum(len(g) for g in groups.values()),
            "max_files_per_partition": max((len(g) for g in groups.values()), default=0)}


def carried_properties(table: Table) -> dict[str, str]:
    """The ``kappa.*`` summary entries a maintenance commit must carry forward.

    Taken from the newest snapshot with ``kappa.coverage`` (the one
    ``read_coverage`` would return), so the new snapshot answers the same.
    """
    for snapshot in coverage_chain(table):
        props = snapshot.summary.additional_properties if snapshot.summary else {}
        if props.get(COVERAGE_PROPERTY):
            return {k: v for k, v in props.items()
                    if k.startswith("kappa.") and k not in _CARRIED_SKIP}
    return {}


def coverage_chain(table: Table) -> Iterator[Any]:
    """Current snapshot, then parents, up to and including the first with coverage."""
    snapshot = table.current_snapshot()
    while snapshot is not None:
        yield snapshot
        summary = snapshot.summary
        if summary and summary.additional_properties.get(COVERAGE_PROPERTY):
            return
        parent = snapshot.parent_snapshot_id
        snapshot = table.snapshot_by_id(parent) if parent is not None else None



# ---------------------------------------------------------------- compaction
def _plan(table: Table, config: MaintenanceConfig) -> list[list[FileScanTask]]:
    """Per partition of the current spec, its small delete-free files, if too many."""
    small = config.target_file_bytes * _SMALL_SHARE
    spec_id = table.metadata.default_spec_id
    plan = []
    for (group_spec, _), tasks in sorted(_groups(_live_tasks(table)).items()):
        picked = [t for t in tasks if t.file.file_size_in_bytes < small and not t.delete_files]
        if group_spec == spec_id and len(picked) > config.compact_when_files_over:
            plan.append(sorted(picked, key=lambda t: t.file.file_path))
    return plan


def _no_retry_view(table: Table, **properties: str) -> Table:
    """The same table with extra *local* properties; nothing is written to the catalog.

    pyiceberg's transaction retry rebases a conflicting snapshot onto the new
    head with the summary it was built with; for compaction that summary holds
    the coverage of the *old* head, so we turn that retry off and retry
    ourselves with a fresh coverage. The target file size steers the writer.
    """
    metadata = table.metadata.model_copy(
        update={"properties": {**table.metadata.properties, **properties}})
    return Table(table.name(), metadata, table.metadata_location, table.io, table.catalog,
                 config=table.config)


def _rewrite(table: Table, tasks: list[FileScanTask], config: MaintenanceConfig,
             write_uuid: uuid.UUID) -> list[DataFile]:
    data = ArrowScan(table.metadata, table.io, table.schema(), AlwaysTrue()).to_table(tasks)
    disk = sum(t.file.file_size_in_bytes for t in tasks)
    # pyiceberg bin-packs by in-memory bytes; scale so files land near the on-disk target.
    memory_target = max(1, int(data.nbytes * config.target_file_bytes / max(disk, 1)))
    view = _no_retry_view(table, **{TableProperties.WRITE_TARGET_FILE_SIZE_BYTES:
                                    str(memory_target)})
    return list(_dataframe_to_data_files(view.metadata, data, table.io, write_uuid))


def _fault_pause_before_compaction_commit(table: Table) -> None:
    """Chaos-test hook: hold a compaction after its files are written, before it commits.

    Active only with ``KAPPA_FAULT_COMPACT_PAUSE_S``; touches
    ``KAPPA_FAULT_COMPACT_MARKER`` first so a test knows when to kill.
    """
    pause = os.environ.get("KAPPA_FAULT_COMPACT_PAUSE_S")
    if pause:
        marker = os.environ.get("KAPPA_FAULT_COMPACT_MARKER")
        if marker:
            Path(marker).write_text(str(table.name()))
        time.sleep(float(pause))


def compact(table: Table, config: MaintenanceConfig, dry_run: bool = False, *,
            sleep: Callable[[float], None] = time.sleep,
            rng: random.Random | None = None) -> dict[str, Any]:
    """Rewrite partitions with too many small files as few large ones, in ONE commit.

    Guarantees: the commit replaces exactly the files read (row-level equal:
    the same rows, nothing else touched) and carries the newest
    ``kappa.coverage`` as of its own parent, so ``read_coverage`` answers the
    same before and after. A crash before the commit leaves the table as it
    was (the new files are orphans); a conflict is retried with jittered
    backoff, reusing the written files while the replaced ones are still live.

    Raises:
        TransientError: Still conflicting after ``max_commit_attempts``.
        ServiceUnavailable: The catalog or warehouse is unreachable.
    """
    rng = rng or random.Random()
    try:
        plan = _plan(table, config)
        result = {"partitions_compacted": len(plan),
                  "files_rewritten": sum(len(g) for g in plan), "files_written": 0}
        if not plan or dry_run:
            return result
        write_uuid = uuid.uuid4()
        old = [t.file for group in plan for t in group]
        new = [f for group in plan for f in _rewrite(table, group, config, write_uuid)]
        result["files_written"] = len(new)
        _fault_pause_before_compaction_commit(table)
        for attempt in range(1, config.max_commit_attempts + 1):
            view = _no_retry_view(table, **{TableProperties.COMMIT_NUM_RETRIES: "0"})
            properties = {**carried_properties(table), MAINTENANCE_PROPERTY: "compact"}
            try:
                with view.transaction() as tx, \
                        tx.update_snapshot(snapshot_properties=properties).overwrite() as rewrite:
                    for data_file in old:
                        rewrite.delete_data_file(data_file)
                    for data_file in new:
                        rewrite.append_data_file(data_file)
                table.refresh()
                return result
            except (CommitFailedException, ValidationException) as exc:
                if attempt == config.max_commit_attempts:
                    msg = f"compaction of {table.name()} still conflicts: {exc}".splitlines()[0]
                    raise TransientError(msg) from exc
                cap = min(config.backoff_max_s, config.backoff_base_s * 2 ** attempt)
                sleep(rng.uniform(0, cap))
                table.refresh()
                live = {t.file.file_path for t in _live_tasks(table)}
                if not all(f.file_path in live for f in old):
                    # Someone else rewrote these files; ours become orphans. Start over.
                    return compact(table, config, sleep=sleep, rng=rng)
        raise AssertionError  # pragma: no cover - the loop returns or raises
    except (SQLAlchemyError, OSError) as exc:
        msg = f"cannot compact {table.name()}: {exc}".splitlines()[0]
        raise ServiceUnavailable(msg) from exc
