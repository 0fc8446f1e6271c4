"""The local stack on real processes: Tansu broker, redis-server, SQLite catalog."""

from __future__ import annotations

import json
import socket
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from pyiceberg.catalog.sql import SqlCatalog

from kappa import procs, stack
from kappa.errors import KappaError
from kappa.settings import Settings

pytestmark = pytest.mark.integration


def _env(home: Path) -> dict[str, str]:
    return {"KAPPA_HOME": str(home), "KAPPA_TOPIC": "ev", "KAPPA_PARTITIONS": "3"}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A stack home whose processes are always stopped, whatever the test did."""
    monkeypatch.delenv("KAPPA_BROKER_PORT", raising=False)
    monkeypatch.delenv("KAPPA_REDIS_PORT", raising=False)
    path = tmp_path / "kappa"
    yield path
    stack.down(Settings.from_env(_env(path)))


@pytest.fixture
def settings(home: Path) -> Settings:
    return Settings.from_env(_env(home))


def _state(home: Path) -> dict:
    return json.loads((home / "stack.json").read_text())


def test_up_starts_records_and_is_idempotent(home: Path, settings: Settings) -> None:
    assert settings.bootstrap_servers is None
    first = stack.up(settings)

    state = _state(home)
    assert set(state) == {"broker", "redis", "started_at"}
    for name in ("broker", "redis"):
        entry = state[name]
        assert set(entry) == {"pid", "port", "log", "proc"}
        assert procs.pid_alive(entry["pid"]) and procs.port_open(entry["port"])
        assert entry["port"] not in (9092, 6379)
        assert Path(entry["log"]).parent == home / "logs"
        assert first["services"][name]["reused"] is False
    assert (home / "catalog.db").exists() and (home / "warehouse").is_dir()

    fresh = Settings.from_env(_env(home))
    assert fresh.bootstrap_servers == f"127.0.0.1:{state['broker']['port']}"
    assert fresh.redis_url == f"redis://127.0.0.1:{state['redis']['port']}/0"
    assert first["endpoints"]["bootstrap_servers"] == fresh.bootstrap_servers
    metadata = AdminClient({"bootstrap.servers": fresh.bootstrap_servers}).list_topics(timeout=10)
    assert len(metadata.topics["ev"].partitions) == 3
    assert len(metadata.topics["ev.quarantine"].partitions) == 3
    catalog = SqlCatalog("kappa", uri=fresh.catalog_uri, warehouse=fresh.warehouse)
    assert ("kappa",) in catalog.list_namespaces()

    second = stack.up(fresh)
    assert _state(home) == state
    assert all(second["services"][n]["reused"] for n in ("broker", "redis"))
    assert second["started_at"] == first["started_at"]


def test_status_reports_true_end_offsets_and_table_rows(home: Path, settings: Settings) -> None:
    stack.up(settings)
    live = Settings.from_env(_env(home))
    delivered: Counter[int] = Counter()

    def on_delivery(err: object, msg: object) -> None:
        assert err is None
        delivered[msg.partition()] += 1  # type: ignore[attr-defined]

    # Lingering makes multi-record batches: the broker's high watermark then
    # stops at the last batch's base offset + 1, well short of the log end.
    producer = Producer({"bootstrap.servers": live.bootstrap_servers, "linger.ms": 20})
    for i in range(1234):
        producer.produce("ev", key=f"user-{i % 97}", value=b"x" * 20, on_delivery=on_delivery)
    assert producer.flush(15) == 0
    assert sum(delivered.values()) == 1234 and len(delivered) > 1

    catalog = SqlCatalog("kappa", uri=live.catalog_uri, warehouse=live.warehouse)
    data = pa.table({"id": pa.array([1, 2, 3, 4, 5], pa.int64())})
    catalog.create_table("kappa.small", schema=data.schema).append(data)
    catalog.create_table("kappa.empty", schema=data.schema)

    report = stack.status(settings)  # bootstrap unset: found through stack.json
    json.dumps(report)
    assert report["services"]["broker"]["up"] and report["services"]["redis"]["up"]
    assert report["endpoints"]["bootstrap_servers"] == live.bootstrap_servers
    ev = report["topics"]["ev"]
    assert "error" not in ev
    ends = {p["partition"]: p["end_offset"] for p in ev["partitions"]}
    assert ends == {p: delivered.get(p, 0) for p in range(3)}
    assert ev["end_offset_total"] == 1234
    assert report["topics"]["ev.quarantine"]["end_offset_total"] == 0
    assert not any(name.startswith("__") for name in report["topics"])
    assert report["tables"]["kappa.small"]["rows"] == 5
    assert report["tables"]["kappa.empty"]["rows"] == 0
    assert report["settings"]["topic"] == "ev"


def test_status_survives_dead_services_and_up_restarts_them(
    home: Path, settings: Settings
) -> None:
    report = stack.status(settings)
    assert report["services"]["broker"] == {"pid": None, "port": None, "up": False}
    assert "error" in report["topics"] and "error" in report["tables"]

    stack.up(settings)
    before = _state(home)
    procs.stop_pid(before["broker"]["pid"])
    report = stack.status(Settings.from_env(_env(home)))
    assert report["services"]["broker"]["up"] is False
    assert report["services"]["redis"]["up"] is True
    assert isinstance(report["topics"]["error"], str)
    assert report["tables"] == {}

    again = stack.up(settings)
    after = _state(home)
    assert again["services"]["broker"]["reused"] is False
    assert after["broker"]["pid"] != before["broker"]["pid"]
    assert after["redis"] == before["redis"]


def test_down_stops_only_recorded_pids(home: Path, settings: Settings, tmp_path: Path) -> None:
    other = procs.start_redis(procs.free_port(), tmp_path / "other", tmp_path / "other.log")
    try:
        stack.up(settings)
        state = _state(home)
        result = stack.down(settings)
        assert sorted(s["pid"] for s in result["stopped"]) == sorted(
            state[n]["pid"] for n in ("broker", "redis")
        )
        for name in ("broker", "redis"):
            assert not procs.pid_alive(state[name]["pid"])
        assert procs.pid_alive(other.pid) and procs.port_open(other.port)
        assert not (home / "stack.json").exists()
        assert (home / "catalog.db").exists() and (home / "warehouse").is_dir()
        assert "in memory" in result["note"]

        assert stack.down(settings)["stopped"] == []

        # A stale or edited record naming a foreign process (pid reuse) never
        # gets it stopped or reused: the recorded start identity must match.
        for forged in ({}, {"proc": "bogus:1"}):
            entry = {"pid": other.pid, "port": other.port, "log": "x", **forged}
            (home / "stack.json").write_text(json.dumps({"redis": entry}))
            assert stack.status(settings)["services"]["redis"]["up"] is False
            assert stack.down(settings)["stopped"] == []
            assert procs.pid_alive(other.pid) and procs.port_open(other.port)
        (home / "stack.json").write_text(json.dumps({"redis": entry}))
        assert stack.up(settings)["services"]["redis"]["pid"] != other.pid
        assert procs.pid_alive(other.pid)
    finally:
        procs.stop_pid(other.pid)


def test_up_honours_env_ports(home: Path, settings: Settings, monkeypatch: pytest.MonkeyPatch,
                              ) -> None:
    broker_port, redis_port = procs.free_port(), procs.free_port()
    monkeypatch.setenv("KAPPA_BROKER_PORT", str(broker_port))
    monkeypatch.setenv("KAPPA_REDIS_PORT", str(redis_port))
    stack.up(settings)
    state = _state(home)
    assert (state["broker"]["port"], state["redis"]["port"]) == (broker_port, redis_port)


def test_up_fails_in_one_line_and_leaves_nothing_running(home: Path, settings: Settings) -> None:
    broker_port = procs.free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(KappaError) as info:
            stack.up(settings, broker_port=broker_port, redis_port=busy.getsockname()[1])
    assert "already in use" in str(info.value) and "\n" not in str(info.value)
    assert not procs.port_open(broker_port)
    assert not (home / "stack.json").exists()
