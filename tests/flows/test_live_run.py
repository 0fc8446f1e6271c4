"""`kappa run` in live mode: open windows reach Redis within seconds (final: false),
metrics are served, tables commit on their interval with no new rows, SIGTERM stops it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest
import redis

from kappa.generator import GeneratorConfig
from kappa.procs import free_port
from kappa.produce import produce
from kappa.settings import Settings
from sinks.iceberg import open_catalog

pytestmark = pytest.mark.integration


def wait_for(predicate, timeout_s: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_live_run_serves_fresh_open_windows(settings: Settings, tmp_path: Path) -> None:
    now_ms = time.time_ns() // 1_000_000
    summary = produce(settings, GeneratorConfig(events=3000, users=50, items=20, seed=3,
                                                start_ms=now_ms - 10_000,
                                                events_per_sim_second=300.0))
    port = free_port()
    env = dict(os.environ, **settings.to_env(), KAPPA_METRICS_PORT=str(port),
               KAPPA_COMMIT_INTERVAL_S="1")
    proc = subprocess.Popen([sys.executable, "-m", "kappa.cli", "run"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        client = redis.Redis.from_url(settings.require_redis())
        keys = wait_for(lambda: list(client.scan_iter(match="kappa:user_activity_1m:*")), 60,
                        "open windows in Redis")
        doc = orjson.loads(client.hget(keys[0], "v"))
        assert doc["final"] is False
        wait_for(lambda: metric(port, "kappa_events_consumed_total") == 3000, 30,
                 "all records consumed")
        valid = summary["good"]
        assert metric(port, "kappa_events_valid_total") == valid
        catalog = open_catalog(settings.catalog_uri, settings.warehouse)

        def events_committed() -> bool:
            try:
                table = catalog.load_table("kappa.events")
            except Exception:
                return False
            snap = table.current_snapshot()
            return snap is not None and int(snap.summary["total-records"]) == valid

        wait_for(events_committed, 30, "events committed by the interval tick")
        assert metric(port, "kappa_freshness_seconds_count") > 0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise


def test_sigterm_drains_and_the_next_run_resumes(settings: Settings, tmp_path: Path) -> None:
    """First SIGTERM: finish the epoch, commit, snapshot, exit 0. Restart: resume, no re-read."""
    now_ms = time.time_ns() // 1_000_000
    config = GeneratorConfig(events=2000, users=40, items=10, seed=4, start_ms=now_ms - 10_000,
                             events_per_sim_second=200.0)
    first = produce(settings, config)
    port = free_port()
    env = dict(os.environ, **settings.to_env(), KAPPA_METRICS_PORT=str(port),
               KAPPA_SNAPSHOT_INTERVAL_S="2")

    def run_until_consumed(n: int) -> dict:
        proc = subprocess.Popen([sys.executable, "-m", "kappa.cli", "run"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            wait_for(lambda: _safe_metric(port, "kappa_events_consumed_total") >= n, 60,
                     f"{n} records consumed")
            time.sleep(0.5)
        finally:
            proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err.decode()[-2000:]
        return orjson.loads(out)

    summary = run_until_consumed(2000)
    assert summary["stopped_by_signal"] is True and summary["consumed"] == 2000
    catalog = open_catalog(settings.catalog_uri, settings.warehouse)
    log_rows = catalog.load_table("kappa.log").scan().to_arrow().num_rows
    assert log_rows == 2000, "the drain did not commit everything consumed"

    more = produce(settings, GeneratorConfig(events=500, users=40, items=10, seed=5,
                                             start_ms=now_ms, events_per_sim_second=200.0))
    again = run_until_consumed(500)
    assert again["resumed"] is True
    assert again["consumed"] == 500, "the restart re-read records it had already processed"
    assert catalog.load_table("kappa.log").scan().to_arrow().num_rows == 2500
    events = catalog.load_table("kappa.events").scan().to_arrow()
    assert events.num_rows == first["good"] + more["good"]


def _safe_metric(port: int, name: str) -> float:
    try:
        return metric(port, name)
    except OSError:
        return 0.0
