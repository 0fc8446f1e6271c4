"""Redis online store against a real redis-server."""

from __future__ import annotations

import time
from dataclasses import replace

import bytewax.operators as op
import orjson
import pytest
import redis
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
from prometheus_client import REGISTRY

from flows.records import FeatureRow
from flows.views import DEFAULT_VIEWS, USER_ACTIVITY_1M, Feature, FeatureView, Tumbling
from kappa.errors import ConfigError, ServiceUnavailable
from kappa.procs import free_port
from kappa.settings import Settings
from sinks.redis import (
    RedisConfig,
    RedisFeatureSink,
    RedisFeatureWriter,
    redis_client,
)
from sinks.redis_documents import IsoCache, encode_row, feature_key, read_features

VIEW = USER_ACTIVITY_1M
FOREVER = FeatureView(name="forever_1m", entity="user_id", window=Tumbling(size_s=60),
                      features=(Feature(name="event_count", agg="count"),), ttl_s=None)
W = 1_700_000_040_000 // 60_000 * 60_000  # a minute boundary


def row(entity: str = "u1", *, end: int = W + 60_000, seq: int = 1, final: bool = False,
        view: FeatureView = VIEW, count: int = 1, ingest: int = 0) -> FeatureRow:
    features = {f: count for f in view.feature_names}
    return FeatureRow(view=view.name, entity=entity, window_start_ms=end - 60_000,
                      window_end_ms=end, features=features, final=final, seq=seq,
                      last_ingest_ms=ingest)


@pytest.fixture
def config(redis_url: str) -> RedisConfig:
    return RedisConfig.for_views(url=redis_url, views=(*DEFAULT_VIEWS, FOREVER))


@pytest.fixture
def writer(config: RedisConfig) -> RedisFeatureWriter:
    w = RedisFeatureWriter(config)
    yield w
    w.close()


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    c = redis_client(redis_url)
    yield c
    c.close()


def stored(client: redis.Redis, entity: str = "u1", view: FeatureView = VIEW) -> dict:
    return orjson.loads(client.hget(feature_key("kappa", view.name, entity), "v"))


def test_key_layout_and_document(writer: RedisFeatureWriter, client: redis.Redis) -> None:
    assert writer.write([row(seq=3, count=7)]) == 1
    key = f"kappa:{VIEW.name}:u1"
    fields = client.hgetall(key)
    assert fields[b"we"] == str(W + 60_000).encode() and fields[b"seq"] == b"3"
    doc = orjson.loads(fields[b"v"])
    assert doc["view"] == VIEW.name and doc["entity"] == "u1" and doc["final"] is False
    assert doc["window_start_ms"] == W and doc["window_end_ms"] == W + 60_000
    assert doc["window_start"].endswith("Z") and doc["window_start"][:4] == "2023"
    assert doc["features"] == dict.fromkeys(VIEW.feature_names, 7)
    assert doc["written_at_ms"] > 0


def test_write_if_newer(writer: RedisFeatureWriter, client: redis.Redis) -> None:
    assert writer.write([row(end=W + 120_000, seq=2, count=2)]) == 1
    assert writer.write([row(end=W + 60_000, seq=99, count=99)]) == 0  # older window
    assert writer.write([row(end=W + 120_000, seq=2, count=98)]) == 0  # equal seq
    assert writer.write([row(end=W + 120_000, seq=1, count=97)]) == 0  # lower seq
    assert stored(client)["features"]["event_count"] == 2
    assert writer.write([row(end=W + 120_000, seq=3, count=3, final=True)]) == 1
    doc = stored(client)
    assert doc["features"]["event_count"] == 3 and doc["final"] is True
    # A replay of an open, earlier update cannot un-finalise the window ...
    assert writer.write([row(end=W + 120_000, seq=2, count=2, final=False)]) == 0
    assert stored(client)["final"] is True
    # ... and a newer window replaces it.
    assert writer.write([row(end=W + 180_000, seq=1, count=1)]) == 1
    assert stored(client)["window_end_ms"] == W + 180_000


def test_rows_in_one_batch_apply_in_order(writer: RedisFeatureWriter, client: redis.Redis) -> None:
    rows = [row(seq=1, count=1), row(seq=3, count=3), row(seq=2, count=2)]
    assert writer.write(rows) == 2
    assert stored(client)["features"]["event_count"] == 3


def test_large_write_takes_several_pipelines_in_order(config: RedisConfig,
                                                      client: redis.Redis) -> None:
    """A final close's millions of rows go out ``pipeline_rows`` at a time, order kept."""
    writer = RedisFeatureWriter(replace(config, pipeline_rows=3, chunk_size=2))
    try:
        rows = [row(f"u{i}", seq=1) for i in range(7)]
        rows += [row("u1", seq=5, count=5), row("u1", seq=4, count=4), row("u6", seq=2, count=2)]
        client.config_resetstat()
        assert writer.write(rows) == 9
        assert stored(client, "u1")["features"]["event_count"] == 5
        assert stored(client, "u6")["features"]["event_count"] == 2
        stats = client.info("commandstats")
        assert stats["cmdstat_evalsha"]["calls"] == 7  # slices of 3, 3, 3, 1 rows; <= 2 per call
    finally:
        writer.close()


def test_ttl_set_on_write_and_none_means_forever(writer: RedisFeatureWriter,
                                                 client: redis.Redis) -> None:
    writer.write([row()])
    ttl = client.ttl(feature_key("kappa", VIEW.name, "u1"))
    assert VIEW.ttl_s is not None and VIEW.ttl_s - 5 <= ttl <= VIEW.ttl_s
    key = feature_key("kappa", FOREVER.name, "u1")
    client.hset(key, mapping={"we": 0, "seq": 0, "v": b"{}"})
    client.expire(key, 100)
    assert writer.write([row(view=FOREVER)]) == 1
    assert client.ttl(key) == -1  # PERSISTed, never EXPIRE 0


def test_config_from_settings(settings: Settings) -> None:
    config = RedisConfig.from_settings(settings, DEFAULT_VIEWS, prefix="kappa_v2")
    assert config.url == settings.redis_url and config.prefix == "kappa_v2"
    assert config.ttls[VIEW.name] == VIEW.ttl_s


def test_ttl_zero_is_rejected(redis_url: str) -> None:
    with pytest.raises(ConfigError):
        RedisConfig(url=redis_url, ttls={"v": 0})


def test_5000_rows_in_few_round_trips(writer: RedisFeatureWriter, client: redis.Redis) -> None:
    rows = [row(f"u{i}", seq=1) for i in range(5000)]
    client.config_resetstat()
    assert writer.write(rows) == 5000
    stats = client.info("commandstats")
    evals = sum(v["calls"] for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval"))
    assert evals == 10  # 500 rows per script call, all in one pipeline
    assert "cmdstat_hget" not in stats and "cmdstat_get" not in stats
    assert client.dbsize() == 5000


def test_script_flush_is_survived(writer: RedisFeatureWriter, client: redis.Redis) -> None:
    writer.write([row(seq=1)])
    client.script_flush()
    assert writer.write([row(seq=2)]) == 1


def test_killed_connection_mid_stream_loses_no_row(writer: RedisFeatureWriter,
                                                   client: redis.Redis) -> None:
    writer.write([row("u0", seq=1)])
    # The writer's pooled connection dies between writes (server restart, idle kill):
    # the next write must still land every row, once.
    client.client_kill_filter(_type="normal", skipme=True)
    rows = [row(f"u{i}", seq=2) for i in range(1200)]
    assert writer.write(rows) == 1200
    assert client.dbsize() == 1200
    assert writer.write(rows) == 0  # a resend is a no-op


def test_read_features_statuses(writer: RedisFeatureWriter, client: redis.Redis) -> None:
    writer.write([row("u1", seq=2, count=5, final=True), row("u2", count=1)])
    now = W + 60_000 + 30_000
    client.config_resetstat()
    out = read_features(client, "kappa", VIEW, ["u1", "nobody", "u2"], now_ms=now)
    assert [r["status"] for r in out] == ["ok", "missing", "ok"]
    assert out[0]["features"]["event_count"] == 5 and out[0]["final"] is True
    assert out[0]["window_end"] == "2023-11-14T22:15:00.000Z"
    assert out[0]["age_s"] == 30.0
    assert out[1] == {"view": VIEW.name, "entity": "nobody", "status": "missing",
                      "features": None, "window_start": None, "window_end": None,
                      "final": None}
    assert client.info("commandstats")["cmdstat_hget"]["calls"] == 3


def test_freshness_observed_for_written_rows(writer: RedisFeatureWriter) -> None:
    def count() -> float:
        return REGISTRY.get_sample_value("kappa_freshness_seconds_count") or 0.0

    before = count()
    ingest = time.time_ns() // 1_000_000 - 200
    writer.write([row("a", ingest=ingest), row("b", ingest=ingest), row("c", ingest=0)])
    assert count() - before == 2
    writer.write([row("a", ingest=ingest)])  # rejected (same seq): not observed
    assert count() - before == 2


def test_freshness_is_timed_at_each_chunks_reply(config: RedisConfig) -> None:
    # A fake clock one second further on every read: rows of later chunks must be
    # observed later (each chunk at its own reply), so they fall in several buckets.
    ticks = iter(range(10**12, 10**12 + 10**6, 1000))
    writer = RedisFeatureWriter(replace(config, chunk_size=1), now_ms=lambda: next(ticks))
    bounds = ("1.0", "1.5", "2.0", "3.0", "5.0", "10.0", "30.0", "60.0", "+Inf")

    def buckets() -> list[float]:
        return [REGISTRY.get_sample_value("kappa_freshness_seconds_bucket", {"le": b}) or 0.0
                for b in bounds]

    before = buckets()
    writer.write([row(e, ingest=10**12) for e in ("a", "b", "c", "d")])
    added = [a - b for a, b in zip(buckets(), before, strict=True)]
    per_bucket = [added[0], *(hi - lo for lo, hi in zip(added, added[1:], strict=False))]
    assert added[-1] == 4
    assert sum(1 for n in per_bucket if n) > 1, per_bucket
    writer.close()


def test_unreachable_redis_raises_after_bounded_retries(redis_url: str) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(ServiceUnavailable, match="cannot reach Redis at"):
        redis_client(dead)
    label = {"sink": "redis"}
    before = REGISTRY.get_sample_value("kappa_sink_errors_total", label) or 0.0
    config = RedisConfig(url=dead, ttls={VIEW.name: 60}, max_retries=2, backoff_s=0.0)
    writer = RedisFeatureWriter(config, client=redis.Redis.from_url(dead))
    with pytest.raises(ServiceUnavailable, match="after 3 attempts"):
        writer.write([row()])
    after = REGISTRY.get_sample_value("kappa_sink_errors_total", label) or 0.0
    assert after - before == 3


def test_password_is_masked(redis_url: str) -> None:
    port = free_port()
    with pytest.raises(ServiceUnavailable) as info:
        redis_client(f"redis://user:hunter2@127.0.0.1:{port}/0")
    assert "hunter2" not in str(info.value)


def test_sink_in_dataflow(config: RedisConfig, client: redis.Redis) -> None:
    flushes = [[row("u1", seq=1), row("u2", seq=1)], [row("u1", seq=2, count=9)], []]
    flow = Dataflow("redis_sink_test")
    op.output("redis_out", op.input("inp", flow, TestingSource(flushes)),
              RedisFeatureSink(config))
    run_main(flow)
    out = read_features(client, "kappa", VIEW, ["u1", "u2"])
    assert [r["features"]["event_count"] for r in out] == [9, 1]


def test_a_values_tuple_row_encodes_like_its_dict_row() -> None:
    """Final rows from a close carry their values tuple and names, not a dict."""
    names = ("event_count", "purchase_amount_sum")
    by_name = FeatureRow(view=USER_ACTIVITY_1M.name, entity="u1", window_start_ms=60_000,
                         window_end_ms=120_000, features={"event_count": 3,
                                                          "purchase_amount_sum": 9.5},
                         final=True, seq=7)
    by_tuple = by_name._replace(features=(3, 9.5), names=names)
    assert by_tuple.feature_map() == by_name.feature_map() == by_name.features
    iso = IsoCache()
    assert encode_row(by_tuple, 1, iso) == encode_row(by_name, 1, iso)
    with pytest.raises(ValueError, match="zip"):
        by_name._replace(features=(3,), names=names).feature_map()
