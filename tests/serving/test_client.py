"""FeatureClient against a real redis-server: statuses, selection, versions."""

from __future__ import annotations

import threading

import pytest
import redis

from kappa.errors import ConfigError, ServiceUnavailable
from replay.versions import set_current, version_for
from serving.client import FeatureClient
from serving.core import BadLookup
from tests.serving.conftest import T0, row, write

ACT = "user_activity_1m"
FEATS = {"event_count": 3, "purchase_count": 1, "purchase_amount_sum": 9.5, "distinct_items": 2}


def client_at(url: str, now_ms: int, **kw: object) -> FeatureClient:
    return FeatureClient(redis_url=url, now_ms=lambda: now_ms, **kw)  # type: ignore[arg-type]


def test_ok_missing_and_selection(redis_url: str) -> None:
    write(redis_url, [row(ACT, "u1", T0, **FEATS)])
    with client_at(redis_url, T0 + 5_000) as fc:
        res = fc.get_online_features([f"{ACT}:event_count", f"{ACT}:purchase_amount_sum"],
                                     ["u1", "nobody", "u1"])
    assert res.version == "live"
    assert res.features == [f"{ACT}:event_count", f"{ACT}:purchase_amount_sum"]
    ok, missing, again = res.rows
    assert (ok.entity, ok.status, again.status, missing.status) == ("u1", "ok", "ok", "missing")
    assert ok.views[ACT].features == {"event_count": 3, "purchase_amount_sum": 9.5}
    assert ok.values == {f"{ACT}:event_count": 3, f"{ACT}:purchase_amount_sum": 9.5}
    assert ok.views[ACT].age_s == 5.0 and ok.views[ACT].final is True
    assert ok.views[ACT].window_end == "2026-01-01T00:00:00.000Z"
    assert missing.views[ACT].features == {"event_count": None, "purchase_amount_sum": None}
    assert missing.to_dict()["views"][ACT]["window_end"] is None


def test_stale_by_ttl_and_by_max_age(redis_url: str) -> None:
    write(redis_url, [row(ACT, "u1", T0, **FEATS)])
    with client_at(redis_url, T0 + 86_400_000 + 1) as fc:  # TTL of the view is one day
        stale = fc.get_online_features(ACT, ["u1"]).rows[0]
    assert stale.status == "stale" and stale.views[ACT].features == FEATS  # reported, not hidden
    with client_at(redis_url, T0 + 120_000) as fc:
        assert fc.get_online_features(ACT, ["u1"]).rows[0].status == "ok"
        assert fc.get_online_features(ACT, ["u1"], max_age_s=60).rows[0].status == "stale"
        assert fc.get_online_features(ACT, ["u1"], max_age_s=120).rows[0].status == "ok"
        with pytest.raises(ConfigError):
            fc.get_online_features(ACT, ["u1"], max_age_s=-1)


def test_several_views_worst_status_wins(redis_url: str) -> None:
    write(redis_url, [row(ACT, "u1", T0, **FEATS),
                      row("user_session", "u1", T0, session_event_count=4,
                          session_duration_s=30.0, session_purchase_amount=0.0)])
    with client_at(redis_url, T0) as fc:
        res = fc.get_online_features([f"{ACT}:*", "user_session:session_event_count",
                                      "user_spend_1h:purchase_count"], ["u1"])
    only = res.rows[0]
    assert only.status == "missing"
    assert only.views["user_session"].status == "ok"
    assert only.views["user_session"].features == {"session_event_count": 4}
    assert only.views["user_spend_1h"].status == "missing"
    assert len(only.views[ACT].features) == 4


def test_bad_requests_raise_one_line_errors(redis_url: str) -> None:
    with FeatureClient(redis_url=redis_url) as fc:
        for features in (["nope:x"], [f"{ACT}:nope"], [], "nope"):
            with pytest.raises(BadLookup):
                fc.get_online_features(features, ["u1"])
        with pytest.raises(BadLookup):
            fc.get_online_features(ACT, [""])
        assert fc.get_online_features(ACT, []).rows == []


def test_unreachable_redis_is_service_unavailable() -> None:
    with pytest.raises(ServiceUnavailable):
        FeatureClient(redis_url="redis://127.0.0.1:1/0")


def test_follows_version_pointer(redis_url: str) -> None:
    write(redis_url, [row(ACT, "u1", T0, **FEATS)])
    v2 = version_for("v2", base_namespace="kappa", base_prefix="kappa")
    write(redis_url, [row(ACT, "u1", T0, **dict(FEATS, event_count=99))], prefix=v2.redis_prefix)
    raw = redis.Redis.from_url(redis_url)
    with FeatureClient(redis_url=redis_url) as fc:
        assert fc.get_online_features(ACT, ["u1"]).rows[0].views[ACT].features["event_count"] == 3
        set_current(raw, v2, base_prefix="kappa")
        res = fc.get_online_features(ACT, ["u1"])
        assert (res.version, res.rows[0].views[ACT].features["event_count"]) == ("v2", 99)
        assert fc.current_version().namespace == "kappa_v2"


def test_batch_never_mixes_versions_while_pointer_flips(redis_url: str) -> None:
    entities = [f"u{i}" for i in range(300)]
    v1 = version_for("v1", base_namespace="kappa", base_prefix="kappa")
    v2 = version_for("v2", base_namespace="kappa", base_prefix="kappa")
    for version, count in ((v1, 1), (v2, 2)):
        write(redis_url, [row(ACT, e, T0, **dict(FEATS, event_count=count)) for e in entities],
              prefix=version.redis_prefix)
    raw = redis.Redis.from_url(redis_url)
    set_current(raw, v1, base_prefix="kappa")
    stop = threading.Event()

    def flip() -> None:
        flipper = redis.Redis.from_url(redis_url)
        i = 0
        while not stop.is_set():
            set_current(flipper, (v1, v2)[i % 2], base_prefix="kappa")
            i += 1

    thread = threading.Thread(target=flip)
    thread.start()
    seen = set()
    try:
        with FeatureClient(redis_url=redis_url) as fc:
            for _ in range(200):
                res = fc.get_online_features(f"{ACT}:event_count", entities)
                counts = {r.views[ACT].features["event_count"] for r in res.rows}
                assert counts == {1 if res.version == "v1" else 2}, "a batch mixed versions"
                seen.add(res.version)
    finally:
        stop.set()
        thread.join()
    assert seen == {"v1", "v2"}
