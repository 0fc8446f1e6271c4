"""End to end on real components: produce a seeded workload, run `kappa run --bounded`
as a subprocess, and compare Redis and every Iceberg table with the reference."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from flows.validate import REASONS
from flows.views import DEFAULT_VIEWS
from kappa.generator import GeneratorConfig
from kappa.produce import produce
from kappa.settings import Settings
from schemas.registry import FileRegistry
from schemas.serde import DecodeError, Decoder
from sinks.iceberg import open_catalog
from sinks.redis_documents import read_features
from tests.kafka_util import read_all
from tests.reference import Rec, reference_online, reference_validate, reference_windows

pytestmark = pytest.mark.integration

EVENTS = 50_000


def run_bounded(settings: Settings, namespace: str, prefix: str) -> None:
    env = dict(os.environ, **settings.to_env(), KAPPA_NAMESPACE=namespace,
               KAPPA_REDIS_PREFIX=prefix, KAPPA_METRICS_PORT="0")
    proc = subprocess.run([sys.executable, "-m", "kappa.cli", "run", "--bounded"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def iso_ms(text: str) -> int:
    return ms(datetime.fromisoformat(text.replace("Z", "+00:00")))


def ms(value: Any) -> int:
    return (value - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def iceberg_rows(settings: Settings, namespace: str, table: str) -> list[dict[str, Any]]:
    catalog = open_catalog(settings.catalog_uri, settings.warehouse)
    return catalog.load_table(f"{namespace}.{table}").scan().to_arrow().to_pylist()


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory, bootstrap: str,
             redis_server: Any) -> dict[str, Any]:
    home: Path = tmp_path_factory.mktemp("pipeline")
    settings = Settings(home=home, topic="it_user_events", bootstrap_servers=bootstrap,
                        redis_url=f"redis://127.0.0.1:{redis_server.port}/1",
                        catalog_uri=f"sqlite:///{home / 'catalog.db'}",
                        warehouse=f"file://{home / 'warehouse'}")
    summary = produce(settings, GeneratorConfig(events=EVENTS, users=2_000, items=300, seed=42,
                                                events_per_sim_second=40.0))
    run_bounded(settings, "kappa", "kappa")
    msgs = read_all(bootstrap, settings.topic)
    decoder = Decoder(FileRegistry())
    recs = []
    for m in msgs:
        event, reason = None, None
        try:
            event, _ = decoder.decode(m.value())
        except DecodeError as exc:
            reason = exc.reason
        recs.append(Rec(m.partition(), m.offset(), m.timestamp()[1],
                        len(m.value() or b"") + len(m.key() or b""), event, reason))
    counted, reasons = reference_validate(recs)
    return {"settings": settings, "summary": summary, "recs": recs, "counted": counted,
            "reasons": reasons}


def test_counts_add_up_and_every_reason_occurs(workload: dict[str, Any]) -> None:
    settings, counted, reasons = workload["settings"], workload["counted"], workload["reasons"]
    assert len(workload["recs"]) == EVENTS
    assert len(counted) + len(reasons) == EVENTS
    assert set(reasons.values()) == set(REASONS)
    assert len(iceberg_rows(settings, "kappa", "log")) == EVENTS
    events = iceberg_rows(settings, "kappa", "events")
    assert len(events) == len(counted)
    assert {(e["partition"], e["offset"]) for e in events} == {
        (e["partition"], e["offset"]) for e in counted}
    quarantine = iceberg_rows(settings, "kappa", "quarantine")
    assert {(q["partition"], q["offset"]): q["reason"] for q in quarantine} == reasons
    dlq = read_all(settings.require_bootstrap(), settings.quarantine_topic)
    assert len(dlq) == len(reasons)
    assert Counter(dict(m.headers())["kappa.reason"].decode() for m in dlq) == Counter(
        reasons.values())


@pytest.mark.parametrize("view", DEFAULT_VIEWS, ids=lambda v: v.name)
def test_iceberg_history_equals_reference(workload: dict[str, Any], view: Any) -> None:
    rows = iceberg_rows(workload["settings"], "kappa", view.table)
    got = {(r[view.entity], ms(r["window_start"]), ms(r["window_end"])):
           {f: r[f] for f in view.feature_names} for r in rows}
    assert len(got) == len(rows), "a window was written twice"
    assert got == reference_windows(view, workload["counted"])


@pytest.mark.parametrize("view", DEFAULT_VIEWS, ids=lambda v: v.name)
def test_redis_equals_reference(workload: dict[str, Any], view: Any) -> None:
    settings = workload["settings"]
    expected = reference_online(view, workload["counted"])
    client = redis.Redis.from_url(settings.require_redis())
    got = read_features(client, "kappa", view, sorted(expected))
    for row in got:
        start, end, features = expected[row["entity"]]
        assert row["status"] == "ok"
        assert row["final"] is True
        assert (iso_ms(row["window_start"]), iso_ms(row["window_end"])) == (start, end)
        assert row["features"] == features
    assert len(list(client.scan_iter(match=f"kappa:{view.name}:*", count=1000))) == len(expected)


def test_second_run_into_fresh_outputs_is_identical(workload: dict[str, Any]) -> None:
    settings = workload["settings"]
    run_bounded(settings, "kappa_again", "again")
    for table in ["log", "events", "quarantine", *(v.table for v in DEFAULT_VIEWS)]:
        first = iceberg_rows(settings, "kappa", table)
        second = iceberg_rows(settings, "kappa_again", table)
        key = sorted if table != "log" else sorted
        assert key(map(repr, first)) == key(map(repr, second)), table
    client = redis.Redis.from_url(settings.require_redis())
    for view in DEFAULT_VIEWS:
        a = {k.split(b":", 1)[1]: client.hget(k, "we") for k in
             client.scan_iter(match=f"kappa:{view.name}:*", count=1000)}
        b = {k.split(b":", 1)[1]: client.hget(k, "we") for k in
             client.scan_iter(match=f"again:{view.name}:*", count=1000)}
        assert a == b, view.name


def test_finished_bounded_outputs_are_final(workload: dict[str, Any]) -> None:
    """Re-running on the same outputs is a no-op; new records there are a clear error."""
    settings = workload["settings"]
    env = dict(os.environ, **settings.to_env(), KAPPA_METRICS_PORT="0")
    again = subprocess.run([sys.executable, "-m", "kappa.cli", "run", "--bounded"], env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert orjson.loads(again.stdout)["already_complete"] is True
    produce(settings, GeneratorConfig(events=10, users=5, items=5, seed=99))
    grown = subprocess.run([sys.executable, "-m", "kappa.cli", "run", "--bounded"], env=env,
                           capture_output=True, text=True, timeout=300)
    assert grown.returncode == 1
    assert "finalized" in grown.stderr and "Traceback" not in grown.stderr
