"""Profiles on the real stack: an injected amount halving alerts within one profile window,
profiles do not depend on batching or sharding, and ``kappa quality report`` reads them."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from kappa.generator import GeneratorConfig
from kappa.produce import produce
from kappa.settings import Settings
from sinks.iceberg import open_catalog

pytestmark = pytest.mark.integration

TOPIC = "pf_events"
EVENTS = 30_000  # 25 min: the shifted window closes by time, not by the end of input
START = 1_767_225_600_000  # 2026-01-01T00:00:00Z, a profile window boundary
WINDOW = 300_000
SHIFT = START + 3 * WINDOW  # amounts halve from the fourth window on


def env_for(settings: Settings, name: str, **extra: str) -> dict[str, str]:
    return {**os.environ, **settings.to_env(), "KAPPA_TOPIC": TOPIC, "KAPPA_METRICS_PORT": "0",
            "KAPPA_NAMESPACE": name, "KAPPA_REDIS_PREFIX": name, **extra}


def kappa(settings: Settings, name: str, *args: str, **extra: str) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run([sys.executable, "-m", "kappa.cli", *args],
                          env=env_for(settings, name, **extra), capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return proc


def profiles(settings: Settings, namespace: str) -> list[dict[str, Any]]:
    table = open_catalog(settings.catalog_uri, settings.warehouse).load_table(
        f"{namespace}.profiles")
    rows = table.scan().to_arrow().to_pylist()
    return sorted(rows, key=lambda r: (r["window_start"], r["scope"], r["field"]))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, bootstrap: str,
          redis_server: Any) -> dict[str, Any]:
    home: Path = tmp_path_factory.mktemp("profiles")
    settings = Settings(home=home, topic=TOPIC, bootstrap_servers=bootstrap,
                        redis_url=f"redis://127.0.0.1:{redis_server.port}/5",
                        catalog_uri=f"sqlite:///{home / 'catalog.db'}",
                        warehouse=f"file://{home / 'warehouse'}")
    summary = produce(settings, GeneratorConfig(
        events=EVENTS, users=400, items=100, seed=3, start_ms=START, events_per_sim_second=20.0,
        amount_scale=0.5, scale_from_ms=SHIFT))
    kappa(settings, "a", "run", "--bounded")
    # Same log, other poll sizes and shard count: profiles must not change.
    kappa(settings, "b", "run", "--bounded", KAPPA_BATCH_SIZE="97", KAPPA_SHARDS="3")
    return {"settings": settings, "summary": summary, "home": home}


def test_quality_counts_add_up_to_what_was_produced(world: dict[str, Any]) -> None:
    rows = profiles(world["settings"], "a")
    quality = [r for r in rows if r["field"] == "_quality"]
    assert sum(r["consumed"] for r in quality) == EVENTS
    assert sum(r["valid"] for r in quality) == world["summary"]["good"]
    reasons: dict[str, int] = {}
    for r in quality:
        for reason, n in orjson.loads(r["reasons"]).items():
            reasons[reason] = reasons.get(reason, 0) + n
    assert reasons == world["summary"]["by_reason"]
    assert all(0.0 <= r[d] <= 1.0 for r in quality
               for d in ("completeness", "validity", "uniqueness", "timeliness"))
    assert {r["scope"] for r in rows} == {"events", "user_activity_1m", "user_spend_1h",
                                          "user_session", "item_popularity_5m"}


def test_injected_halving_alerts_within_one_window(world: dict[str, Any]) -> None:
    rows = profiles(world["settings"], "a")
    amount = {int(r["window_start"].timestamp() * 1000): r["psi"] for r in rows
              if r["scope"] == "events" and r["field"] == "amount"}
    before = [v for s, v in amount.items() if START < s < SHIFT]
    assert before and all(v is not None and v < 0.25 for v in before), amount
    assert amount[SHIFT] is not None and amount[SHIFT] > 0.25, amount


def test_profiles_do_not_depend_on_batching_or_sharding(world: dict[str, Any]) -> None:
    a, b = profiles(world["settings"], "a"), profiles(world["settings"], "b")
    assert len(a) == len(b)
    loose = ("mean", "stddev", "psi")
    for ra, rb in zip(a, b, strict=True):
        assert {k: v for k, v in ra.items() if k not in loose} == {
            k: v for k, v in rb.items() if k not in loose}
        for k in loose:
            if ra[k] is None or rb[k] is None:
                assert ra[k] is rb[k], (ra["scope"], ra["field"], k)
            else:
                assert math.isclose(ra[k], rb[k], rel_tol=1e-9, abs_tol=1e-12), (ra, rb, k)


def test_quality_report_json_table_plot_and_pinned_reference(world: dict[str, Any]) -> None:
    settings, home = world["settings"], world["home"]
    plot = home / "drift.png"
    report = orjson.loads(kappa(settings, "a", "quality", "report", "--plot", str(plot)).stdout)
    assert report["quality"]["consumed"] == EVENTS and report["plot"] == str(plot)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shift_iso = datetime.fromtimestamp(SHIFT / 1000, tz=UTC).isoformat().replace("+00:00", "Z")
    assert {"scope": "events", "field": "amount", "window_start": shift_iso} in [
        {k: a[k] for k in ("scope", "field", "window_start")} for a in report["alerts"]]
    assert report["drift"]["events"]["amount"]["drifted_windows"] >= 1
    assert set(report["drift"]) >= {"events", "user_spend_1h"}

    table = kappa(settings, "a", "quality", "report", "--format", "table", "--no-plot").stdout.decode()
    assert "overall" in table and "events" in table and "amount" in table

    first = datetime.fromtimestamp(START / 1000, tz=UTC).isoformat()
    pinned = orjson.loads(kappa(settings, "a", "quality", "report", "--no-plot",
                                "--reference", first).stdout)
    assert pinned["reference"].startswith("2026-01-01T00:00:00")
    assert pinned["drift"]["events"]["amount"]["last_psi"] > 0.25  # halved vs the first window

    bad = subprocess.run([sys.executable, "-m", "kappa.cli", "quality", "report", "--no-plot"],
                         env=env_for(settings, "nosuchns"), capture_output=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.decode().count("\n") == 1
    assert "no profiles table" in bad.stderr.decode()
