"""Backfill by replay (the Kappa invariant): a replay of the log — from Kafka or from
the Iceberg archive — gives exactly the live run's features; versions verify,
promote atomically and drop cleanly."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from confluent_kafka.admin import AdminClient

from flows.views import DEFAULT_VIEWS, Tumbling
from kappa.generator import GeneratorConfig
from kappa.produce import produce
from kappa.settings import Settings
from replay.versions import current_version
from sinks.iceberg import open_catalog
from tests.kafka_util import read_all, redis_docs
from tests.reference import Rec, reference_validate, reference_windows

pytestmark = pytest.mark.integration

EVENTS = 30_000
TOPIC = "rp_events"


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    return {**os.environ, **settings.to_env(), "KAPPA_TOPIC": TOPIC, "KAPPA_METRICS_PORT": "0",
            **extra}


def kappa(settings: Settings, *args: str, check: bool = True, **extra: str) -> Any:
    proc = subprocess.run([sys.executable, "-m", "kappa.cli", *args],
                          env=env_for(settings, **extra), capture_output=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr.decode()[-3000:]
        return orjson.loads(proc.stdout)
    return proc


def features(settings: Settings, namespace: str, view: Any) -> dict[tuple[Any, ...], Any]:
    table = open_catalog(settings.catalog_uri, settings.warehouse).load_table(
        f"{namespace}.{view.table}")
    return {(r[view.entity], r["window_start"], r["window_end"]): tuple(
        r[f] for f in view.feature_names) for r in table.scan().to_arrow().to_pylist()}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, bootstrap: str,
          redis_server: Any) -> dict[str, Any]:
    home: Path = tmp_path_factory.mktemp("replay")
    settings = Settings(home=home, topic=TOPIC, bootstrap_servers=bootstrap,
                        redis_url=f"redis://127.0.0.1:{redis_server.port}/3",
                        catalog_uri=f"sqlite:///{home / 'catalog.db'}",
                        warehouse=f"file://{home / 'warehouse'}")
    redis.Redis.from_url(settings.require_redis()).flushdb()
    summary = produce(settings, GeneratorConfig(events=EVENTS, users=800, items=100, seed=21,
                                                events_per_sim_second=40.0))
    # the live run and a full replay run at the same time: separate outputs, separate state
    live = subprocess.Popen([sys.executable, "-m", "kappa.cli", "run", "--bounded"],
                            env=env_for(settings), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    full = kappa(settings, "replay", "--version", "v2", "--no-progress")
    out, err = live.communicate(timeout=600)
    assert live.returncode == 0, err.decode()[-3000:]
    return {"settings": settings, "summary": summary, "full": full}


def counted_events(settings: Settings) -> list[dict[str, Any]]:
    from schemas.registry import FileRegistry
    from schemas.serde import DecodeError, Decoder

    decoder = Decoder(FileRegistry())
    recs = []
    for m in read_all(settings.require_bootstrap(), TOPIC):
        try:
            event, reason = decoder.decode(m.value())[0], None
        except DecodeError as exc:
            event, reason = None, exc.reason
        recs.append(Rec(m.partition(), m.offset(), m.timestamp()[1],
                        len(m.value() or b"") + len(m.key() or b""), event, reason))
    return reference_validate(recs)[0]


def expected_rows(view: Any, counted: list[dict[str, Any]]) -> dict[tuple[Any, ...], Any]:
    return {(e, datetime.fromtimestamp(s / 1000, UTC), datetime.fromtimestamp(w / 1000, UTC)):
            tuple(f[n] for n in view.feature_names)
            for (e, s, w), f in reference_windows(view, counted).items()}


def test_live_outputs_equal_the_reference_despite_a_concurrent_replay(world: dict) -> None:
    settings = world["settings"]
    counted = counted_events(settings)
    for view in DEFAULT_VIEWS:
        assert features(settings, "kappa", view) == expected_rows(view, counted), view.name


def test_full_replay_equals_live(world: dict) -> None:
    settings, full = world["settings"], world["full"]
    assert full["consumed"] == EVENTS and full["plan"]["records"] == EVENTS
    for view in DEFAULT_VIEWS:
        assert features(settings, "kappa_v2", view) == features(settings, "kappa", view), view.name
    assert redis_docs(settings.require_redis(), "kappa@v2") == redis_docs(
        settings.require_redis(), "kappa")
    # Data profiles and quality dimensions replay too (mean/stddev/psi up to float rounding).
    live, replayed = profile_rows(settings, "kappa"), profile_rows(settings, "kappa_v2")
    assert live and len(replayed) == len(live)
    loose = ("mean", "stddev", "psi")
    for a, b in zip(live, replayed, strict=True):
        assert {k: v for k, v in a.items() if k not in loose} == {
            k: v for k, v in b.items() if k not in loose}
        assert all(a[k] == b[k] or abs(a[k] - b[k]) <= 1e-9 * max(1.0, abs(a[k])) for k in loose
                   if a[k] is not None), a


def profile_rows(settings: Settings, namespace: str) -> list[dict[str, Any]]:
    table = open_catalog(settings.catalog_uri, settings.warehouse).load_table(
        f"{namespace}.profiles")
    return sorted(table.scan().to_arrow().to_pylist(),
                  key=lambda r: (r["window_start"], r["scope"], r["field"]))


def test_sub_range_replay_equals_live_inside_the_range(world: dict) -> None:
    settings = world["settings"]
    first = datetime.fromtimestamp(world["summary"]["first_record_ts"] / 1000, UTC)
    start, end = first + timedelta(minutes=2), first + timedelta(minutes=13)
    out = kappa(settings, "replay", "--version", "part", "--from", start.isoformat(),
                "--to", end.isoformat(), "--no-progress")
    assert 0 < out["consumed"] < EVENTS
    margin = timedelta(minutes=2)  # lateness + out-of-orderness at both edges
    for view in DEFAULT_VIEWS:
        if not isinstance(view.window, Tumbling):
            continue  # sessions reach across the edges; 1 h windows do not fit in 11 min
        def inside(rows: dict) -> dict:
            return {k: v for k, v in rows.items()
                    if k[1] >= start + margin and k[2] <= end - margin}
        live = inside(features(settings, "kappa", view))
        assert live, view.name
        assert inside(features(settings, "kappa_part", view)) == live, view.name


def test_verify_promote_drop(world: dict) -> None:
    settings = world["settings"]
    client = redis.Redis.from_url(settings.require_redis())
    report = kappa(settings, "versions", "verify", "v2")
    assert report["ok"] is True and report["views"]["user_activity_1m"]["compared"] > 0
    listed = kappa(settings, "versions", "list")
    assert {v["version"] for v in listed["versions"]} >= {"live", "v2", "part"}
    assert kappa(settings, "versions", "promote", "v2") == {"current": "v2", "previous": "live"}
    assert current_version(client, base_namespace="kappa", base_prefix="kappa").name == "v2"
    user = next(iter(redis_docs(settings.require_redis(), "kappa@v2"))).split(":", 1)[1]
    got = kappa(settings, "features", "get", "user_session", user)
    assert got[0]["status"] == "ok"
    refused = kappa(settings, "versions", "drop", "v2", check=False)
    assert refused.returncode == 1 and b"current" in refused.stderr
    kappa(settings, "versions", "promote", "live")
    dropped = kappa(settings, "versions", "drop", "v2")
    assert dropped["redis_keys"] > 0 and "features_user_session" in dropped["tables"]
    assert not redis_docs(settings.require_redis(), "kappa@v2")
    catalog = open_catalog(settings.catalog_uri, settings.warehouse)
    assert ("kappa_v2",) not in catalog.list_namespaces()


EXTRA_VIEWS = """
from flows.views import Feature, FeatureView, Tumbling

VIEWS = (FeatureView(name="user_cart_10m", entity="user_id", window=Tumbling(size_s=600),
                     features=(Feature(name="cart_count", agg="count",
                                       where=frozenset({"add_to_cart"})),
                               Feature(name="items_carted", agg="distinct", field="item_id")),
                     ttl_s=3600),)
"""


def test_a_new_view_is_backfilled_into_the_live_version_and_served(world: dict,
                                                                   tmp_path: Path) -> None:
    settings = world["settings"]
    (tmp_path / "extra_views.py").write_text(EXTRA_VIEWS)
    extra = {"KAPPA_VIEWS_MODULE": "extra_views",
             "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    out = kappa(settings, "replay", "--version", "live", "--views", "user_cart_10m",
                "--no-progress", **extra)
    assert out["backfill_into_existing"] is True
    import sys as _sys

    from flows.views import load_views, views_by_name

    _sys.path.insert(0, str(tmp_path))
    try:
        view = views_by_name(load_views("extra_views"))["user_cart_10m"]
    finally:
        _sys.path.remove(str(tmp_path))
    assert features(settings, "kappa", view) == expected_rows(view, counted_events(settings))
    user = next(e for (e, _, _) in features(settings, "kappa", view))
    got = kappa(settings, "features", "get", "user_cart_10m", user, **extra)
    assert got[0]["status"] == "ok" and "cart_count" in got[0]["features"]
    again = kappa(settings, "replay", "--version", "live", "--views", "user_activity_1m",
                  "--no-progress", check=False, **extra)
    assert again.returncode == 1 and b"already has view" in again.stderr


def test_replay_beyond_retention_reads_the_archive(world: dict) -> None:
    """Runs last: deletes the topic, then replays everything from the Iceberg log."""
    settings = world["settings"]
    admin = AdminClient({"bootstrap.servers": settings.require_bootstrap()})
    for future in admin.delete_topics([TOPIC], operation_timeout=10).values():
        future.result()
    out = kappa(settings, "replay", "--version", "arch", "--no-progress")
    assert out["plan"]["iceberg"] and not out["plan"]["kafka"], out["plan"]
    assert out["consumed"] == EVENTS
    for view in DEFAULT_VIEWS:
        assert features(settings, "kappa_arch", view) == features(settings, "kappa", view), \
            view.name
    shipped = {v.name for v in DEFAULT_VIEWS}
    live = {k: v for k, v in redis_docs(settings.require_redis(), "kappa").items()
            if k.split(":", 1)[0] in shipped}  # the live version also has a backfilled view
    assert redis_docs(settings.require_redis(), "kappa@arch") == live
