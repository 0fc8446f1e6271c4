"""Freshness under load: ingest → visible in Redis while producing at a steady rate.

A live ``kappa run`` (its own topic and outputs, recovery off) with ``/metrics``
on a free port; ``kappa produce --rate R --pregenerate`` writes for ``seconds`` with record
timestamps on the wall clock (every record is generated and encoded before the
timed phase, so the load generator takes little of the CPU the flow is measured
on; the records and their timestamps are the same as without it); then the flow drains and the
``kappa_freshness_seconds`` histogram (observed by the Redis sink per written
entity: write done minus the newest record timestamp in the window) is read.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families

from bench.stack import cli_env
from kappa.procs import free_port, port_open
from kappa.produce import ensure_topics
from kappa.settings import Settings


def _scrape(port: int) -> dict[str, Any]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    buckets: list[tuple[float, float]] = []
    consumed = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "kappa_freshness_seconds_bucket":
                buckets.append((float(s.labels["le"]), s.value))
            elif s.name == "kappa_events_consumed_total":
                consumed += s.value
    return {"buckets": sorted(buckets), "consumed": consumed}


def _ready(port: int) -> bool:
    """Whether the live run answers ``/ready`` with 200 (503 or no answer: not yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:  # connection refused, or HTTPError for a 503
        return False


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' ``histogram_quantile``: linear inside the bucket holding rank q."""
    if not buckets or buckets[-1][1] == 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound  # beyond the last finite bucket: a lower bound
            width = count - lower_count
            return lower_bound + (bound - lower_bound) * ((rank - lower_count) / width if width else 1)
        lower_bound, lower_count = bound, count
    return None


def _free_port_run(count: int) -> int:
    """A base port with ``count`` consecutive ports free a moment ago."""
    for _ in range(100):
        base = free_port()
        if base + count <= 65_536 and all(not port_open(base + i) for i in range(1, count)):
            return base
    msg = f"no {count} consecutive free ports found"
    raise RuntimeError(msg)


def _scrape_all(ports: list[int]) -> dict[str, Any]:
    """``_scrape`` summed over the processes of one run (same bucket bounds in each)."""
    scrapes = [_scrape(p) for p in ports]
    bounds = scrapes[0]["buckets"]
    buckets = [(le, sum(s["buckets"][i][1] for s in scrapes if s["buckets"]))
               for i, (le, _) in enumerate(bounds)]
    return {"buckets": buckets, "consumed": sum(s["consumed"] for s in scrapes)}


def measure_freshness(settings: Settings, rate: int = 20_000, seconds: int = 60,
                      processes: int = 1) -> dict[str, Any]:
    """Produce ``rate`` events/s for ``seconds`` into a live run; freshness p50/p99 and lag.

    ``processes > 1`` runs ``kappa run --processes N`` (its own topic and outputs):
    process i serves ``/metrics`` on the base port + i, and their histograms are summed.
    """
    tag = "fresh" if processes == 1 else f"fresh{processes}"
    target = replace(settings, topic=f"{settings.topic}_{tag}", namespace=tag, redis_prefix=tag)
    ensure_topics(target)
    port = _free_port_run(processes)
    ports = [port + i for i in range(processes)]
    env = cli_env(target, KAPPA_METRICS_PORT=str(port), KAPPA_RECOVERY="0",
                  KAPPA_NAMESPACE=tag, KAPPA_REDIS_PREFIX=tag)
    live = subprocess.Popen([sys.executable, "-m", "kappa.cli", "run", "--processes",
                             str(processes)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        # Produce only once the flow is /ready (built, sinks open, every partition
        # polled): events produced while it still starts up would measure the
        # start-up, not the steady state (measured: a first run's p99 was 2-3x).
        deadline = time.monotonic() + 90
        while not all(_ready(p) for p in ports):
            if live.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"live run did not become ready: "
                                 f"{live.stderr.read().decode()[-2000:]}"
                                 if live.stderr else "live run did not become ready")
            time.sleep(0.25)
        events = rate * seconds
        produced = subprocess.run(
            [sys.executable, "-m", "kappa.cli", "produce", "--events", str(events), "--rate",
             str(rate), "--users", "100000", "--items", "10000", "--seed", "2", "--no-progress",
             "--pregenerate"],
            env=env, capture_output=True, check=True)
        summary = orjson.loads(produced.stdout)
        done_at = time.monotonic()
        drained = False
        while time.monotonic() < done_at + 120:
            if _scrape_all(ports)["consumed"] >= events:
                drained = True
                break
            time.sleep(0.5)
        drain_s = time.monotonic() - done_at
        time.sleep(2.0)  # the last flush interval
        buckets = _scrape_all(ports)["buckets"]
    finally:
        live.send_signal(signal.SIGTERM)
        try:
            live.wait(timeout=60)
        except subprocess.TimeoutExpired:
            live.kill()
    return {"target_rate": rate, "seconds": seconds, "processes": processes,
            "produced_events_per_s": summary.get("events_per_s"),
            "producer_start_late_ms": summary.get("start_late_ms"),
            "drained": drained, "drain_after_produce_s": round(drain_s, 2),
            "observations": buckets[-1][1] if buckets else 0,
            "p50_s": histogram_quantile(0.5, buckets), "p99_s": histogram_quantile(0.99, buckets)}
