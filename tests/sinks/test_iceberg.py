"""Iceberg sink on a real SqlCatalog (SQLite) and local warehouse."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import bytewax.operators as op
import pyarrow as pa
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, cluster_main, run_main
from prometheus_client import REGISTRY
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.transforms import DayTransform

from flows.records import RawRecord, TableRows
from kappa.errors import ConfigError, ServiceUnavailable
from kappa.settings import Settings
from sinks import tables
from sinks.iceberg import IcebergConfig, IcebergSink, TableWriter, open_catalog

T0 = 1_700_000_000_000


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def config(settings: Settings) -> IcebergConfig:
    return replace(IcebergConfig.from_settings(settings), commit_interval_s=10.0,
                   backoff_base_s=0.001, backoff_max_s=0.01)


@pytest.fixture
def catalog(config: IcebergConfig) -> SqlCatalog:
    return open_catalog(config.catalog_uri, config.warehouse)


def log_batch(start: int, n: int, topic: str = "t") -> pa.Table:
    return tables.log_rows([
        RawRecord(topic, i % 3, i, T0 + i * 1000, f"k{i}".encode(), f"v{i}".encode(),
                  (("h", b"1"),))
        for i in range(start, start + n)
    ])


def log_writer(catalog: SqlCatalog, config: IcebergConfig, clock: Clock) -> TableWriter:
    schema, spec = tables.table_spec("log")
    return TableWriter(catalog, config, "log", schema, spec, now_getter=clock)


def snapshots(catalog: SqlCatalog, config: IcebergConfig, name: str) -> list:
    return catalog.load_table((config.namespace, name)).snapshots()


def test_table_created_with_spec_and_exact_ids(catalog: SqlCatalog, config: IcebergConfig) -> None:
    writer = log_writer(catalog, config, Clock())
    table = catalog.load_table((config.namespace, "log"))
    assert table.schema().as_struct() == tables.log_schema().as_struct()
    (field,) = table.spec().fields
    assert isinstance(field.transform, DayTransform)
    assert table.schema().find_field(field.source_id).name == "record_ts"
    assert writer.table.metadata.table_uuid == table.metadata.table_uuid


def test_buffers_and_commits_once_per_interval(catalog: SqlCatalog, config: IcebergConfig) -> None:
    clock = Clock()
    writer = log_writer(catalog, config, clock)
    for i in range(5):
        writer.add(log_batch(i * 10, 10))
        clock.now += 1.0
        assert writer.maybe_commit() == 0
    assert snapshots(catalog, config, "log") == []
    clock.now = 10.0
    writer.add(log_batch(50, 10))
    assert writer.maybe_commit() == 60
    assert writer.maybe_commit() == 0  # nothing buffered: no empty snapshot
    writer.add(log_batch(60, 5))
    clock.now = 15.0
    assert writer.maybe_commit() == 0  # interval counts from the last commit
    clock.now = 20.0
    assert writer.maybe_commit() == 5
    snaps = snapshots(catalog, config, "log")
    assert len(snaps) == 2
    assert [s.summary["kappa.rows"] for s in snaps] == ["60", "5"]
    assert snaps[0].summary["kappa.writer"] == "kappa"
    assert snaps[0].summary["kappa.table"] == "log"
    assert snaps[0].summary["added-records"] == "60"


def test_buffer_limit_forces_commit(catalog: SqlCatalog, config: IcebergConfig) -> None:
    small = replace(config, max_buffer_rows=25)
    writer = log_writer(catalog, small, Clock())
    writer.add(log_batch(0, 20))
    assert writer.maybe_commit() == 0
    writer.add(log_batch(20, 10))
    assert writer.maybe_commit() == 30


def test_empty_tables_never_commit(catalog: SqlCatalog, config: IcebergConfig) -> None:
    clock = Clock()
    writer = log_writer(catalog, config, clock)
    writer.add(tables.log_rows([]))
    clock.now = 100.0
    assert writer.maybe_commit() == 0 and writer.commit() == 0
    assert snapshots(catalog, config, "log") == []


def test_data_read_back_equals_written(catalog: SqlCatalog, config: IcebergConfig) -> None:
    writer = log_writer(catalog, config, Clock())
    written = pa.concat_tables([log_batch(0, 100), log_batch(100, 50)])
    writer.add(log_batch(0, 100))
    writer.add(log_batch(100, 50))
    writer.commit()
    back = catalog.load_table((config.namespace, "log")).scan().to_arrow().sort_by("offset")
    assert back.to_pylist() == written.to_pylist()


@pytest.mark.parametrize("library_retries", [0, 4])
def test_commit_conflict_is_retried_after_refresh(catalog: SqlCatalog, config: IcebergConfig,
                                                  library_retries: int) -> None:
    """A real conflict: a second Table object commits, the writer's is stale.

    With ``commit.retry.num-retries=0`` pyiceberg raises CommitFailedException at
    once and TableWriter's own refresh-and-retry resolves it; with the default (4)
    pyiceberg's cheaper internal retry does. Either way: both appends land once.
    """
    config = replace(config, table_properties={
        "commit.retry.num-retries": str(library_retries), "commit.retry.min-wait-ms": "1"})
    label = {"sink": "iceberg:log"}
    errors_before = REGISTRY.get_sample_value("kappa_sink_errors_total", label) or 0.0
    writer = log_writer(catalog, config, Clock())
    writer.add(log_batch(0, 10))
    writer.commit()
    # A second, independent Table object of the same table commits first ...
    other = catalog.load_table((config.namespace, "log"))
    other.append(log_batch(10, 7), snapshot_properties={"kappa.writer": "other"})
    # ... so the writer's Table object is stale and its next append conflicts.
    writer.add(log_batch(17, 3))
    assert writer.commit() == 3
    errors_after = REGISTRY.get_sample_value("kappa_sink_errors_total", label) or 0.0
    assert errors_after - errors_before == (1 if library_retries == 0 else 0)
    snaps = snapshots(catalog, config, "log")
    assert [s.summary.get("kappa.writer") for s in snaps] == ["kappa", "other", "kappa"]
    back = catalog.load_table((config.namespace, "log")).scan().to_arrow()
    assert sorted(back.column("offset").to_pylist()) == list(range(20))


def test_rows_past_file_bytes_are_written_before_the_commit(catalog: SqlCatalog,
                                                             config: IcebergConfig) -> None:
    """Files are written as rows arrive; the commit appends them all as one snapshot."""
    one = log_batch(0, 40)
    small = replace(config, file_bytes=one.nbytes * 2)
    writer = log_writer(catalog, small, Clock())
    writer.add(one)
    assert writer.pending_files == 0  # under file_bytes: still in memory
    writer.add(log_batch(40, 40))
    written = writer.pending_files
    assert written >= 1 and writer.buffered_rows == 80
    assert snapshots(catalog, config, "log") == []  # written, not committed
    writer.add(log_batch(80, 10))
    assert writer.pending_files == written  # 10 rows stay in memory
    assert writer.commit() == 90
    assert writer.pending_files == 0 and writer.buffered_rows == 0
    (snap,) = snapshots(catalog, config, "log")
    assert snap.summary["added-records"] == "90" and snap.summary["kappa.rows"] == "90"
    table = catalog.load_table((config.namespace, "log"))
    paths = [t.file.file_path for t in table.scan().plan_files()]
    assert len(paths) == len(set(paths)) > written  # the remainder got a file of its own
    back = table.scan().to_arrow().sort_by("offset")
    assert back.column("offset").to_pylist() == list(range(90))


def test_conflict_appends_the_written_files_again(catalog: SqlCatalog,
                                                  config: IcebergConfig) -> None:
    """A commit that conflicts re-appends the files written before it, nothing twice."""
    config = replace(config, file_bytes=1024, table_properties={
        "commit.retry.num-retries": "0", "commit.retry.min-wait-ms": "1"})
    writer = log_writer(catalog, config, Clock())
    writer.add(log_batch(0, 10))
    writer.commit()
    writer.add(log_batch(10, 30))
    assert writer.pending_files >= 1
    other = catalog.load_table((config.namespace, "log"))
    other.append(log_batch(40, 5), snapshot_properties={"kappa.writer": "other"})
    assert writer.commit() == 30
    back = catalog.load_table((config.namespace, "log")).scan().to_arrow()
    assert sorted(back.column("offset").to_pylist()) == list(range(45))


def test_warehouse_outage_while_writing_files_is_waited_out(
        catalog: SqlCatalog, config: IcebergConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    from sinks import writer as writer_module

    real = writer_module.write_files
    failures = [OSError("warehouse gone"), OSError("still gone")]

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if failures:
            raise failures.pop(0)
        return real(*args, **kwargs)

    monkeypatch.setattr(writer_module, "write_files", flaky)
    writer = log_writer(catalog, replace(config, file_bytes=1024), Clock())
    writer.add(log_batch(0, 30))
    assert failures == [] and writer.pending_files >= 1
    assert writer.commit() == 30
    back = catalog.load_table((config.namespace, "log")).scan().to_arrow()
    assert sorted(back.column("offset").to_pylist()) == list(range(30))


def test_open_catalog_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        open_catalog("nosuchdriver://x/y", f"file://{tmp_path}/wh")
    with pytest.raises(ConfigError) as info:
        open_catalog("postgresql+nosuchdriver://u:secret@127.0.0.1:1/db", f"file://{tmp_path}")
    assert "secret" not in str(info.value) and "u:***@" in str(info.value)
    (tmp_path / "db_is_a_dir").mkdir()
    with pytest.raises(ServiceUnavailable) as info:
        open_catalog(f"sqlite:///{tmp_path / 'db_is_a_dir'}", f"file://{tmp_path}/wh")
    assert "\n" not in str(info.value)


def _open_in_lockstep(barrier: Any, base: str, rounds: int) -> list[str]:
    errors = []
    for r in range(rounds):
        barrier.wait()  # every process opens the same brand-new catalog at once
        try:
            open_catalog(f"sqlite:///{base}/c{r}.db", f"file://{base}/wh")
        except ServiceUnavailable as exc:
            errors.append(str(exc))
    return errors


def test_processes_opening_one_new_catalog_at_once_all_succeed(tmp_path: Path) -> None:
    # A live run and a replay started together both create the SQLite catalog's tables;
    # the loser of SqlCatalog's check-then-CREATE must retry, not fail the run.
    # (Without the retry this setup failed 44 of 240 opens.)
    n, rounds = 4, 10
    ctx = get_context("spawn")
    with ctx.Manager() as manager, ProcessPoolExecutor(max_workers=n, mp_context=ctx) as pool:
        barrier = manager.Barrier(n)
        results = list(pool.map(_open_in_lockstep, [barrier] * n, [str(tmp_path)] * n,
                                [rounds] * n))
    assert results == [[]] * n


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError):
        IcebergConfig(catalog_uri="sqlite:///x.db", warehouse="file:///w", commit_interval_s=0)
    with pytest.raises(ConfigError):
        IcebergConfig(catalog_uri="", warehouse="file:///w")


def test_part_fn_maps_each_table_to_its_own_partition(config: IcebergConfig) -> None:
    names = ["quarantine", "log", "events", "features_user_activity_1m", "features_user_session"]
    sink = IcebergSink(config, names)
    parts = sink.list_parts()
    assert parts == sorted(names)
    # Bytewax indexes part_fn(key) modulo the sorted global partition list.
    assert [parts[sink.part_fn(n) % len(parts)] for n in names] == names
    with pytest.raises(ConfigError):
        sink.part_fn("features_nope")
    with pytest.raises(ConfigError):
        IcebergSink(config, ["nope"])


def _flow(items: list[tuple[str, pa.Table]], sink: IcebergSink) -> Dataflow:
    flow = Dataflow("iceberg_sink_test")
    stream = op.input("inp", flow, TestingSource([(n, TableRows(t)) for n, t in items]))
    op.output("iceberg_out", stream, sink)
    return flow


def _items() -> list[tuple[str, pa.Table]]:
    events = [dict(event_id=f"e{i}", user_id=f"u{i % 4}", event_type="page_view",
                   item_id="i1", amount=None, currency=None, ts=T0 + i, session_id="s",
                   attributes={}, channel="web", topic="t", partition=0, offset=i,
                   ingest_ts=T0 + i) for i in range(30)]
    return [
        ("log", log_batch(0, 40)),
        ("events", tables.event_rows(events[:10])),
        ("log", log_batch(40, 20)),
        ("events", tables.event_rows([])),
        ("events", tables.event_rows(events[10:])),
    ]


def test_sink_in_dataflow_one_commit_per_table(catalog: SqlCatalog,
                                               config: IcebergConfig) -> None:
    run_main(_flow(_items(), IcebergSink(config, ["log", "events"])))
    log_snaps = snapshots(catalog, config, "log")
    event_snaps = snapshots(catalog, config, "events")
    assert [s.summary["kappa.rows"] for s in log_snaps] == ["60"]
    assert [s.summary["kappa.rows"] for s in event_snaps] == ["30"]
    events = catalog.load_table((config.namespace, "events")).scan().to_arrow()
    assert sorted(events.column("event_id").to_pylist()) == sorted(f"e{i}" for i in range(30))


def test_sink_on_two_workers_has_one_committer_per_table(catalog: SqlCatalog,
                                                         config: IcebergConfig) -> None:
    tables_ = ["log", "events", "quarantine"]
    cluster_main(_flow(_items(), IcebergSink(config, tables_)), [], 0,
                 worker_count_per_proc=2)
    assert [s.summary["kappa.rows"] for s in snapshots(catalog, config, "log")] == ["60"]
    assert [s.summary["kappa.rows"] for s in snapshots(catalog, config, "events")] == ["30"]
    # Bytewax builds a partition lazily, on its first item: no rows, no table.
    assert not catalog.table_exists((config.namespace, "quarantine"))
