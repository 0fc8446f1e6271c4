"""The Iceberg sink on both SQL catalogs the product supports: SQLite and PostgreSQL.

The PostgreSQL server is private to the session (tests/deploy/services.py); if it cannot
start, these tests fail with the server's log — they never skip.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import bytewax.operators as op
import pyarrow as pa
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main

from flows.records import RawRecord, TableRows
from sinks import tables
from sinks.iceberg import IcebergConfig, IcebergSink, TableWriter, open_catalog
from sinks.ledger import read_coverage
from tests.deploy.services import Postgres

T0 = 1_767_225_600_000


@pytest.fixture(params=["sqlite", "postgresql"])
def config(request: pytest.FixtureRequest, tmp_path: Path) -> IcebergConfig:
    if request.param == "sqlite":
        uri = f"sqlite:///{tmp_path / 'catalog.db'}"
    else:
        pg: Postgres = request.getfixturevalue("postgres")
        uri = pg.create_database(f"cat_{uuid.uuid4().hex[:12]}")
    return IcebergConfig(catalog_uri=uri, warehouse=f"file://{tmp_path / 'warehouse'}",
                         commit_interval_s=10.0, backoff_base_s=0.001, backoff_max_s=0.01)


def log_rows(offsets: range, partition: int = 0) -> pa.Table:
    return tables.log_rows([RawRecord("t", partition, o, T0 + o * 1000, f"k{o}".encode(),
                                      f"v{o}".encode(), (("h", b"1"),)) for o in offsets])


def test_catalog_backend_is_the_one_asked_for(config: IcebergConfig) -> None:
    catalog = open_catalog(config.catalog_uri, config.warehouse)
    assert catalog.engine.dialect.name == config.catalog_uri.split(":")[0].split("+")[0]


def test_table_writer_commits_and_reads_back(config: IcebergConfig) -> None:
    catalog = open_catalog(config.catalog_uri, config.warehouse)
    schema, spec = tables.table_spec("log")
    now = [0.0]
    writer = TableWriter(catalog, config, "log", schema, spec, now_getter=lambda: now[0])
    writer.add(log_rows(range(0, 40)))
    assert writer.maybe_commit() == 0
    now[0] = 10.0
    writer.add(log_rows(range(40, 60)))
    assert writer.maybe_commit() == 60
    # A second, independent writer object commits after the first (a real conflict path).
    other = catalog.load_table((config.namespace, "log"))
    other.append(log_rows(range(60, 70)), snapshot_properties={"kappa.writer": "other"})
    writer.add(log_rows(range(70, 75)))
    assert writer.commit() == 5
    table = open_catalog(config.catalog_uri, config.warehouse).load_table((config.namespace, "log"))
    assert sorted(table.scan().to_arrow().column("offset").to_pylist()) == list(range(75))
    assert [s.summary.get("kappa.writer") for s in table.snapshots()] == ["kappa", "other", "kappa"]


def test_restarted_committer_skips_covered_offsets(config: IcebergConfig) -> None:
    config = replace(config, commit_on_snapshot=True)
    sink = IcebergSink(config, ["log"])

    def run_part(items: list[pa.Table], crash: bool = False) -> None:
        part = sink.build_part("iceberg_out", "log", None)
        part.write_batch([TableRows(t) for t in items])
        if crash:
            return
        part.snapshot()
        part.close()

    run_part([log_rows(range(0, 50)), log_rows(range(0, 20), partition=1)])
    run_part([log_rows(range(30, 80))], crash=True)
    run_part([log_rows(range(30, 80)), log_rows(range(10, 30), partition=1)])
    table = open_catalog(config.catalog_uri, config.warehouse).load_table((config.namespace, "log"))
    got = table.scan().to_arrow().select(["partition", "offset"]).to_pylist()
    assert sorted((r["partition"], r["offset"]) for r in got) == \
        [(0, o) for o in range(80)] + [(1, o) for o in range(30)]
    assert read_coverage(table).offsets == {0: 79, 1: 29}


def test_iceberg_sink_in_a_dataflow(config: IcebergConfig) -> None:
    events = [dict(event_id=f"e{i}", user_id=f"u{i % 4}", event_type="page_view", item_id="i1",
                   amount=None, currency=None, ts=T0 + i, session_id="s", attributes={},
                   channel="web", topic="t", partition=0, offset=i, ingest_ts=T0 + i)
              for i in range(30)]
    items = [("log", log_rows(range(0, 40))), ("events", tables.event_rows(events[:10])),
             ("log", log_rows(range(40, 60))), ("events", tables.event_rows(events[10:]))]
    flow = Dataflow("iceberg_catalogs_test")
    stream = op.input("inp", flow, TestingSource([(n, TableRows(t)) for n, t in items]))
    op.output("iceberg_out", stream, IcebergSink(config, ["log", "events"]))
    run_main(flow)
    catalog = open_catalog(config.catalog_uri, config.warehouse)
    log = catalog.load_table((config.namespace, "log"))
    assert [s.summary["kappa.rows"] for s in log.snapshots()] == ["60"]
    got = catalog.load_table((config.namespace, "events")).scan().to_arrow()
    assert sorted(got.column("event_id").to_pylist()) == sorted(f"e{i}" for i in range(30))
