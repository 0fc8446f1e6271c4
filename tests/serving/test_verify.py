"""Verify and point-in-time history on real pipeline output (broker, flow, Redis, Iceberg)."""

from __future__ import annotations

import argparse
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest
import redis

from flows.views import DEFAULT_VIEWS
from kappa.generator import GeneratorConfig
from kappa.produce import produce
from kappa.settings import Settings
from schemas.registry import FileRegistry
from schemas.serde import DecodeError, Decoder
from serving.client import FeatureClient
from serving.commands import cmd_verify
from serving.verify import verify
from sinks.iceberg import open_catalog
from tests.flows.test_pipeline_integration import run_bounded
from tests.kafka_util import read_all
from tests.reference import Rec, reference_validate, reference_windows

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, bootstrap: str,
             redis_server: Any) -> dict[str, Any]:
    home: Path = tmp_path_factory.mktemp("serving_pipeline")
    settings = Settings(home=home, topic="serving_events", bootstrap_servers=bootstrap,
                        redis_url=f"redis://127.0.0.1:{redis_server.port}/3",
                        catalog_uri=f"sqlite:///{home / 'catalog.db'}",
                        warehouse=f"file://{home / 'warehouse'}")
    redis.Redis.from_url(settings.require_redis()).flushdb()
    produce(settings, GeneratorConfig(events=4_000, users=150, items=40, seed=5,
                                      events_per_sim_second=5.0))
    run_bounded(settings, "kappa", "kappa")
    decoder = Decoder(FileRegistry())
    recs = []
    for m in read_all(bootstrap, settings.topic):
        event, reason = None, None
        try:
            event, _ = decoder.decode(m.value())
        except DecodeError as exc:
            reason = exc.reason
        recs.append(Rec(m.partition(), m.offset(), m.timestamp()[1],
                        len(m.value() or b"") + len(m.key() or b""), event, reason))
    counted, _ = reference_validate(recs)
    return {"settings": settings, "counted": counted}


def test_verify_passes_then_catches_a_tampered_value(pipeline: dict[str, Any],
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: Any) -> None:
    settings = pipeline["settings"]
    catalog = open_catalog(settings.catalog_uri, settings.warehouse)
    with FeatureClient.from_settings(settings) as fc:
        report = verify(fc, catalog, sample=60, seed=1)
        assert report["ok"], orjson.dumps(report).decode()[:2000]
        for view in DEFAULT_VIEWS:
            part = report["views"][view.name]
            assert part["compared"] == part["matched"] > 0, view.name
            assert part["open_windows"] == 0  # a bounded run leaves every window final
        key = next(fc.redis.scan_iter(match="kappa:user_spend_1h:*"))
        doc = orjson.loads(fc.redis.hget(key, "v"))
        doc["features"]["purchase_count"] += 1
        fc.redis.hset(key, "v", orjson.dumps(doc))
        open_key = next(fc.redis.scan_iter(match="kappa:user_session:*"))
        doc = orjson.loads(fc.redis.hget(open_key, "v"))
        fc.redis.hset(open_key, "v", orjson.dumps(dict(doc, final=False)))
        report = verify(fc, catalog, sample=1000, seed=1)
    assert not report["ok"] and report["mismatched"] == 1
    [bad] = report["views"]["user_spend_1h"]["mismatches"]
    assert bad["entity"] == key.decode().rsplit(":", 1)[1] and bad["problem"] == "values"
    assert set(bad["features"]) == {"purchase_count"}
    assert report["views"]["user_session"]["open_windows"] == 1
    # the command: same report as JSON, exit code 1 on a mismatch
    for name, value in (("KAPPA_HOME", str(settings.home)), ("KAPPA_REDIS_URL", settings.redis_url),
                        ("KAPPA_CATALOG_URI", settings.catalog_uri),
                        ("KAPPA_WAREHOUSE", settings.warehouse), ("KAPPA_NAMESPACE", "kappa"),
                        ("KAPPA_REDIS_PREFIX", "kappa")):
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as stop:
        cmd_verify(argparse.Namespace(sample=1000, views="user_spend_1h", seed=2))
    assert stop.value.code == 1
    printed = orjson.loads(capsys.readouterr().out)
    assert printed["mismatched"] == 1 and list(printed["views"]) == ["user_spend_1h"]


@pytest.mark.parametrize("view", DEFAULT_VIEWS, ids=lambda v: v.name)
def test_history_on_real_tables_matches_reference(pipeline: dict[str, Any], view: Any) -> None:
    settings = pipeline["settings"]
    windows = reference_windows(view, pipeline["counted"])
    rng = random.Random(view.name)
    entities = sorted({e for e, _, _ in windows})
    ends = sorted({end for _, _, end in windows})
    queries = [(rng.choice(entities), rng.choice(ends) + rng.choice([-1, 0, 1, 59_000]))
               for _ in range(300)]
    entity_df = pa.table({view.entity: [e for e, _ in queries],
                          "timestamp": [datetime.fromtimestamp(t / 1000, tz=UTC) for _, t in queries]})
    with FeatureClient.from_settings(settings) as fc:
        got = fc.get_historical_features(entity_df, view.name)
    for i, (entity, t) in enumerate(queries):
        eligible = [(end, feats) for (e, _, end), feats in windows.items() if e == entity and end <= t]
        want = max(eligible, key=lambda x: x[0])[1] if eligible else None
        if want is not None and view.ttl_s is not None and t - max(eligible)[0] > view.ttl_s * 1000:
            want = None
        for name in view.feature_names:
            value = got.column(f"{view.name}__{name}")[i].as_py()
            assert value == (None if want is None else want[name]), (entity, t, name)
