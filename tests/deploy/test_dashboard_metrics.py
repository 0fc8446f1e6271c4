"""The Grafana dashboard and the alert rules query only metrics the app really exports.

A live ``kappa run`` (real broker, redis-server, SQLite catalog) with
``KAPPA_METRICS_PORT`` on a free port processes a small workload with bad records, and a
``kappa serve`` answers a lookup; both ``/metrics`` pages are scraped and every
``kappa_*`` name in deploy/grafana/dashboards/kappa.json and deploy/prometheus/alerts.yml
must be one of the exported series names (counter ``_total``, histogram
``_bucket``/``_sum``/``_count`` suffixes derived from the ``# TYPE`` lines).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from kappa.generator import GeneratorConfig
from kappa.procs import free_port
from kappa.produce import produce
from kappa.settings import Settings
from tests.deploy.conftest import DEPLOY

pytestmark = pytest.mark.integration

REPO = DEPLOY.parent
PENDING_METRICS = {"kappa_consumer_lag_records"}
"""Defined in flows/health.py; exported by ``kappa run`` once flows/run.py serves flows.health
(the wiring patch of the deploy report). Until then they are allowed, afterwards required."""
SUFFIXES = {"counter": ["_total", "_created"], "histogram": ["_bucket", "_sum", "_count", "_created"],
            "gauge": [""], "summary": ["", "_sum", "_count", "_created"], "info": ["_info"],
            "untyped": [""]}


def scrape(port: int) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()


def exported_names(text: str) -> set[str]:
    names: set[str] = set()
    for line in text.splitlines():
        m = re.match(r"# TYPE (\S+) (\S+)", line)
        if m:
            name, kind = m.groups()
            if kind == "counter":  # the text format names counters with or without _total
                name = name.removesuffix("_total")
            names |= {name + suffix for suffix in SUFFIXES[kind]}
    return names


def sampled_names(text: str) -> set[str]:
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}


def queried_names() -> dict[str, set[str]]:
    dash = json.loads((DEPLOY / "grafana/dashboards/kappa.json").read_text())
    rules = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())
    pattern = re.compile(r"\b(kappa_[a-z0-9_]+)\b")
    return {
        "dashboard": {n for p in dash["panels"] for t in p["targets"] for n in pattern.findall(t["expr"])},
        "alerts": {n for g in rules["groups"] for r in g["rules"] for n in pattern.findall(r["expr"])},
    }


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except OSError:
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def wired() -> bool:
    """Whether flows/run.py serves flows/health.py (the wiring patch is applied)."""
    text = (REPO / "flows" / "run.py").read_text()
    return "from flows import health" in text or "flows.health" in text


def probe(port: int, path: str) -> int:
    try:
        return int(urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2).status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_dashboard_and_alerts_query_exported_metrics(settings: Settings, tmp_path: Path) -> None:
    now_ms = time.time_ns() // 1_000_000
    produce(settings, GeneratorConfig(events=1500, users=30, items=10, seed=11, bad_rate=0.05,
                                      start_ms=now_ms - 10_000, events_per_sim_second=300.0))
    flow_port, api_port = free_port(), free_port()
    env = dict(os.environ, **settings.to_env(), KAPPA_METRICS_PORT=str(flow_port),
               KAPPA_COMMIT_INTERVAL_S="1", KAPPA_SNAPSHOT_INTERVAL_S="1")
    flow = subprocess.Popen([sys.executable, "-m", "kappa.cli", "run"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    api = subprocess.Popen([sys.executable, "-m", "kappa.cli", "serve", "--host", "127.0.0.1",
                            "--port", str(api_port)], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        required = {"kappa_events_consumed_total", "kappa_events_valid_total",
                    "kappa_events_quarantined_total", "kappa_windows_emitted_total",
                    "kappa_sink_write_seconds_bucket", "kappa_sink_rows_total",
                    "kappa_freshness_seconds_bucket", "kappa_partition_ingest_clock_ms",
                    "kappa_window_watermark_ms", "kappa_open_windows"}
        flow_text = str(wait_for(lambda: (t := scrape(flow_port)) and required <= sampled_names(t)
                                 and t, 60, f"samples of {sorted(required)}"))
        if wired():  # the flow's port also answers the probes once flows.health is served
            assert probe(flow_port, "/health") == 200
            wait_for(lambda: probe(flow_port, "/ready") == 200, 30, "/ready after catching up")
            flow_text = scrape(flow_port)
        wait_for(lambda: urllib.request.urlopen(
            f"http://127.0.0.1:{api_port}/views", timeout=2).status == 200, 30, "the API")
        api_text = scrape(api_port)
    finally:
        stop(flow)
        stop(api)
    exported = exported_names(flow_text) | exported_names(api_text)
    allowed = exported | (set() if wired() else PENDING_METRICS)
    for where, names in queried_names().items():
        assert names, where
        missing = names - allowed
        assert not missing, f"{where} queries metrics the app does not export: {sorted(missing)}"
    if not wired():
        from prometheus_client import REGISTRY, generate_latest

        import flows.health  # noqa: F401 - registers the pending metrics in this process

        assert PENDING_METRICS <= exported_names(generate_latest(REGISTRY).decode())
