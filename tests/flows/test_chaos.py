"""Crash and outage tests on real components: kill -9 mid-run (once during an Iceberg
commit) and a frozen Redis must leave exactly what an uninterrupted run leaves."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from flows.views import DEFAULT_VIEWS
from kappa.generator import GeneratorConfig
from kappa.procs import Service, free_port, start_redis, stop_pid
from kappa.produce import produce
from kappa.settings import Settings
from sinks.iceberg import open_catalog
from tests.kafka_util import read_all, redis_docs

pytestmark = pytest.mark.integration

EVENTS = 200_000
WORKLOAD = GeneratorConfig(events=EVENTS, users=5_000, items=500, seed=11,
                           events_per_sim_second=200.0)
NATURAL_KEYS = {"log": ("partition", "offset"), "events": ("partition", "offset"),
                "quarantine": ("partition", "offset"),
                **{v.table: (v.entity, "window_start") for v in DEFAULT_VIEWS}}


def env_for(settings: Settings, topic: str, name: str, redis_url: str | None = None,
            **extra: str) -> dict[str, str]:
    return {**os.environ, **settings.to_env(), "KAPPA_TOPIC": topic,
            "KAPPA_REDIS_URL": redis_url or settings.require_redis(), "KAPPA_NAMESPACE": name,
            "KAPPA_REDIS_PREFIX": name, "KAPPA_METRICS_PORT": "0",
            "KAPPA_SNAPSHOT_INTERVAL_S": "1", **extra}


def start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "kappa.cli", "run", "--bounded"], env=env,
                            stdout=subprocess.DEVNULL, stderr=log.open("ab"))


def finish(env: dict[str, str], log: Path) -> None:
    proc = start(env, log)
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]


def table_rows(settings: Settings, namespace: str, table: str) -> dict[tuple[Any, ...], Any]:
    catalog = open_catalog(settings.catalog_uri, settings.warehouse)
    rows = catalog.load_table(f"{namespace}.{table}").scan().to_arrow().to_pylist()
    keyed: dict[tuple[Any, ...], Any] = {}
    for row in rows:
        key = tuple(row[k] for k in NATURAL_KEYS[table])
        assert key not in keyed, f"{namespace}.{table}: duplicate row {key}"
        row.pop("topic", None)
        keyed[key] = row
    return keyed


def assert_same_outputs(settings: Settings, base: str, other: str, base_redis: str,
                        other_redis: str) -> None:
    for table in NATURAL_KEYS:
        expected = table_rows(settings, base, table)
        assert table_rows(settings, other, table) == expected, table
    assert redis_docs(other_redis, other) == redis_docs(base_redis, base)


def assert_dlq_exactly_once(settings: Settings, topic: str, quarantined: int) -> None:
    msgs = read_all(settings.require_bootstrap(), f"{topic}.quarantine")
    keys = Counter((dict(m.headers())["kappa.source.partition"],
                    dict(m.headers())["kappa.source.offset"]) for m in msgs)
    assert max(keys.values()) == 1, "a quarantined record reached the DLQ twice"
    assert len(msgs) == quarantined


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, bootstrap: str,
          redis_server: Service) -> dict[str, Any]:
    """The same seeded workload in three topics, and an uninterrupted run over the first."""
    home = tmp_path_factory.mktemp("chaos")
    settings = Settings(home=home, topic="unused", bootstrap_servers=bootstrap,
                        redis_url=f"redis://127.0.0.1:{redis_server.port}/2",
                        catalog_uri=f"sqlite:///{home / 'catalog.db'}",
                        warehouse=f"file://{home / 'warehouse'}")
    summary = {}
    for topic in ("c_base", "c_kill", "c_outage"):
        summary = produce(Settings(**{**settings.__dict__, "topic": topic}), WORKLOAD)
    finish(env_for(settings, "c_base", "base"), home / "base.log")
    quarantined = EVENTS - summary["good"]
    return {"settings": settings, "home": home, "quarantined": quarantined}


def test_kill_9_three_times_then_identical(world: dict[str, Any]) -> None:
    settings, home = world["settings"], world["home"]
    log = home / "kill.log"
    rnd = random.Random(5)
    env = env_for(settings, "c_kill", "killed")
    kills = 0
    for run, point in enumerate(("random", "commit", "random")):
        # Every run marks its first Iceberg commit, so kills are timed by progress
        # (the run is past start-up and writing), not by a wall-clock guess that a
        # faster flow outruns. "commit" holds that commit open and kills inside it.
        marker = home / f"committing-{run}"
        pause = "3" if point == "commit" else "0"
        proc = start(dict(env, KAPPA_FAULT_COMMIT_PAUSE_S=pause,
                          KAPPA_FAULT_COMMIT_MARKER=str(marker)), log)
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.exists(), "no Iceberg commit started"
        if point == "random":
            time.sleep(rnd.uniform(0.1, 3.0))
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    assert kills == 3
    finish(env, log)
    assert_same_outputs(settings, "base", "killed", settings.require_redis(),
                        settings.require_redis())
    assert_dlq_exactly_once(settings, "c_kill", world["quarantined"])


def frozen(pid: int, seconds: float, proc: subprocess.Popen[bytes], what: str) -> None:
    """SIGSTOP a service: it stops answering but keeps its data, like a network partition."""
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
        assert proc.poll() is None, f"the flow died while {what} was unreachable"
    finally:
        os.kill(pid, signal.SIGCONT)


def catalog_locked(db: Path, seconds: float, proc: subprocess.Popen[bytes]) -> None:
    """Hold an exclusive lock on the SQLite catalog: every commit fails meanwhile."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        time.sleep(seconds)
        assert proc.poll() is None, "the flow died while the catalog was locked"
        conn.execute("COMMIT")
    finally:
        conn.close()


def test_outages_redis_catalog_broker_then_identical(world: dict[str, Any], tmp_path: Path,
                                                    broker: Service) -> None:
    """Redis frozen 10 s, the catalog locked 12 s, the broker frozen 5 s — in one run."""
    settings, home = world["settings"], world["home"]
    own = start_redis(free_port(), tmp_path / "redis", tmp_path / "redis.log")
    url = f"redis://127.0.0.1:{own.port}/0"
    try:
        log = home / "outage.log"
        proc = start(env_for(settings, "c_outage", "outage", redis_url=url), log)
        time.sleep(5)
        assert proc.poll() is None
        frozen(own.pid, 10, proc, "Redis")
        catalog_locked(home / "catalog.db", 12, proc)
        frozen(broker.pid, 5, proc, "the broker")
        assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
        text = log.read_text()
        assert "Redis write failed" in text
        assert "cannot commit to Iceberg table" in text or "cannot open Iceberg table" in text
        assert_same_outputs(settings, "base", "outage", settings.require_redis(), url)
        assert_dlq_exactly_once(settings, "c_outage", world["quarantined"])
    finally:
        stop_pid(own.pid)
