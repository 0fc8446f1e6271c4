"""flows/health.py probes and kappa/logs.py JSON logs."""

from __future__ import annotations

import io
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, Counter

from flows.health import HealthConfig, HealthServer, HealthState, serve
from kappa.errors import ConfigError
from kappa.logs import setup_logging


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def get(server: HealthServer, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=2) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def state(clock: Clock) -> HealthState:
    return HealthState(HealthConfig(stall_after_s=30, max_lag=100), now_getter=clock)


@pytest.fixture
def server(state: HealthState) -> Iterator[HealthServer]:
    registry = CollectorRegistry()
    Counter("kappa_probe_test", "A metric only this registry has.", registry=registry).inc(3)
    srv = serve(0, host="127.0.0.1", state=state, registry=registry)
    yield srv
    srv.close()


def test_liveness_follows_beats(server: HealthServer, state: HealthState, clock: Clock) -> None:
    assert get(server, "/health")[0] == 200  # within the grace period after start
    clock.now += 31
    status, body = get(server, "/health")
    assert status == 503 and json.loads(body)["status"] == "stalled"
    state.beat()
    assert get(server, "/health")[0] == 200
    clock.now += 29
    assert get(server, "/health")[0] == 200


def test_readiness_needs_every_partition_within_the_lag_threshold(
        server: HealthServer, state: HealthState, clock: Clock) -> None:
    state.beat()
    status, body = get(server, "/ready")
    assert status == 503 and "no partition" in json.loads(body)["status"]
    state.set_lag(0, 5, "t")
    state.set_lag(1, 500, "t")
    status, body = get(server, "/ready")
    doc = json.loads(body)
    assert status == 503 and doc["status"] == "catching up" and doc["behind"] == {"t[1]": 500}
    state.set_lag(1, 100, "t")
    state.set_lag(2, -3, "t")  # a watermark behind the position counts as caught up
    status, body = get(server, "/ready")
    assert status == 200 and json.loads(body)["lag"] == {"t[0]": 5, "t[1]": 100, "t[2]": 0}
    clock.now += 31  # stalled: not ready either
    assert get(server, "/ready")[0] == 503


def test_metrics_and_unknown_paths(server: HealthServer) -> None:
    status, body = get(server, "/metrics")
    assert status == 200 and b"kappa_probe_test_total 3.0" in body
    assert get(server, "/nope")[0] == 404


def test_lag_gauge_is_exported() -> None:
    from prometheus_client import REGISTRY

    HealthState().set_lag(3, 42, "gauge_topic")
    value = REGISTRY.get_sample_value("kappa_consumer_lag_records",
                                      {"topic": "gauge_topic", "partition": "3"})
    assert value == 42


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        HealthConfig(stall_after_s=0)
    with pytest.raises(ValueError):
        HealthConfig(max_lag=-1)


def test_json_logs_one_object_per_line() -> None:
    stream = io.StringIO()
    try:
        assert setup_logging({"KAPPA_LOG_FORMAT": "json", "KAPPA_LOG_LEVEL": "debug"},
                             stream=stream) == "json"
        setup_logging({"KAPPA_LOG_FORMAT": "json"}, stream=stream)  # idempotent: one handler
        log = logging.getLogger("kappa.test")
        log.info("committed %d rows\nto %s", 5, "log", extra={"table": "log"})
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("failed")
        lines = stream.getvalue().splitlines()
        assert len(lines) == 2
        first, second = (json.loads(line) for line in lines)
        assert first["msg"] == "committed 5 rows\nto log" and first["table"] == "log"
        assert first["level"] == "info" and first["logger"] == "kappa.test"
        assert first["ts"].endswith("+00:00")
        assert second["level"] == "error" and "RuntimeError: boom" in second["exc"]
    finally:
        root = logging.getLogger()
        for handler in [h for h in root.handlers if h.get_name() == "kappa-root"]:
            root.removeHandler(handler)
        root.setLevel(logging.WARNING)


def test_log_settings_are_validated() -> None:
    with pytest.raises(ConfigError):
        setup_logging({"KAPPA_LOG_FORMAT": "xml"})
    with pytest.raises(ConfigError):
        setup_logging({"KAPPA_LOG_LEVEL": "LOUD"})
    assert not [h for h in logging.getLogger().handlers if h.get_name() == "kappa-root"]
