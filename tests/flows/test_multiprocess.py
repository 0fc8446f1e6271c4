"""`kappa run --processes 2` (one Bytewax cluster of two processes) gives exactly the
outputs of a one-process run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from flows.views import DEFAULT_VIEWS
from kappa.generator import GeneratorConfig
from kappa.produce import produce
from kappa.settings import Settings
from sinks.iceberg import open_catalog
from tests.kafka_util import redis_docs

pytestmark = pytest.mark.integration

KEYS = {"log": ("partition", "offset"), "events": ("partition", "offset"),
        "quarantine": ("partition", "offset"),
        **{v.table: (v.entity, "window_start") for v in DEFAULT_VIEWS}}


def rows(settings: Settings, namespace: str, table: str) -> dict[tuple[Any, ...], Any]:
    scanned = open_catalog(settings.catalog_uri, settings.warehouse).load_table(
        f"{namespace}.{table}").scan().to_arrow().to_pylist()
    keyed = {tuple(r[k] for k in KEYS[table]): r for r in scanned}
    assert len(keyed) == len(scanned), f"{namespace}.{table} has duplicate rows"
    return keyed


def test_two_processes_equal_one(settings: Settings, tmp_path: Path) -> None:
    produce(settings, GeneratorConfig(events=20_000, users=1_000, items=100, seed=8,
                                      events_per_sim_second=50.0))
    base = dict(os.environ, **settings.to_env(), KAPPA_METRICS_PORT="0",
                KAPPA_SNAPSHOT_INTERVAL_S="2")
    summaries = {}
    for name, extra in (("one", []), ("two", ["--processes", "2"])):
        proc = subprocess.run([sys.executable, "-m", "kappa.cli", "run", "--bounded", *extra],
                              env=dict(base, KAPPA_NAMESPACE=name, KAPPA_REDIS_PREFIX=name),
                              capture_output=True, timeout=600)
        assert proc.returncode == 0, proc.stderr.decode()[-3000:]
        summaries[name] = orjson.loads(proc.stdout)
    assert summaries["two"]["processes"] == 2
    shares = summaries["two"]["per_process"]
    assert len(shares) == 2 and sum(s["consumed"] for s in shares) == 20_000
    assert max(s["seconds"] for s in shares) == summaries["two"]["seconds"]
    assert summaries["two"]["consumed"] == summaries["one"]["consumed"] == 20_000
    for table in KEYS:
        assert rows(settings, "two", table) == rows(settings, "one", table), table
    assert redis_docs(settings.require_redis(), "two") == redis_docs(settings.require_redis(),
                                                                    "one")
