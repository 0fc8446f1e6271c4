"""``kappa quarantine list|show|redrive`` on the real broker, Redis and an Iceberg SQLite catalog.

The end-to-end test produces a workload in which some purchases carry a lower-case
currency (quarantined as ``invalid_value``) and some events are late, runs the
flow bounded, redrives both kinds, runs the flow again into new outputs and
checks the features against the brute-force reference: the fixed events count
exactly once, the redriven late events are late again, and a second redrive
produces nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from confluent_kafka import Producer

from flows.records import Quarantined, RawRecord
from flows.views import DEFAULT_VIEWS
from kappa.cli import main
from kappa.generator import GeneratorConfig, generate
from kappa.procs import Service, free_port
from kappa.produce import ensure_topics
from kappa.settings import Settings
from schemas.registry import FileRegistry
from schemas.serde import Decoder, encode
from sinks.dlq_reader import Selection, read_quarantine
from sinks.iceberg import open_catalog
from sinks.quarantine import dlq_headers
from sinks.redrive import Prepared, Redriver, list_quarantine, redrive
from sinks.redrive_ledger import Ledger
from tests.kafka_util import read_all
from tests.reference import Rec, reference_validate, reference_windows

pytestmark = pytest.mark.integration

LATENESS_S = 600
EVENTS = 2000
BROKEN = 25
FIX = "def fix(event):\n    event['currency'] = event['currency'].upper()\n    return event\n"


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    return {**os.environ, **settings.to_env(), "KAPPA_METRICS_PORT": "0",
            "KAPPA_ALLOWED_LATENESS_S": str(LATENESS_S), "KAPPA_SNAPSHOT_INTERVAL_S": "1",
            **extra}


def kappa(settings: Settings, *args: str, **extra: str) -> Any:
    proc = subprocess.run([sys.executable, "-m", "kappa.cli", *args],
                          env=env_for(settings, **extra), capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return orjson.loads(proc.stdout)


def headers(m: Any) -> dict[str, bytes]:
    return dict(m.headers() or ())


def features(settings: Settings, namespace: str, view: Any) -> dict[tuple[Any, ...], Any]:
    table = open_catalog(settings.catalog_uri, settings.warehouse).load_table(
        f"{namespace}.{view.table}")
    return {(r[view.entity], r["window_start"], r["window_end"]): tuple(
        r[f] for f in view.feature_names) for r in table.scan().to_arrow().to_pylist()}


def expected(view: Any, msgs: list[Any]) -> dict[tuple[Any, ...], Any]:
    decoder = Decoder(FileRegistry())
    recs = [Rec(m.partition(), m.offset(), m.timestamp()[1],
                len(m.value() or b"") + len(m.key() or b""), decoder.decode(m.value())[0])
            for m in msgs]
    counted = reference_validate(recs, lateness_ms=LATENESS_S * 1000)[0]
    return {(e, datetime.fromtimestamp(s / 1000, UTC), datetime.fromtimestamp(w / 1000, UTC)):
            tuple(f[n] for n in view.feature_names)
            for (e, s, w), f in reference_windows(view, counted).items()}


def produce_workload(settings: Settings) -> dict[str, Any]:
    """Generated events near now; BROKEN good purchases get a lower-case currency."""
    ensure_topics(settings)
    registry = FileRegistry()
    decoder = Decoder(registry)
    config = GeneratorConfig(events=EVENTS, users=60, items=30, seed=11, bad_rate=0.0,
                             late_rate=0.01, dup_rate=0.0,
                             start_ms=time.time_ns() // 1_000_000 - 60_000,
                             events_per_sim_second=200.0, allowed_lateness_s=LATENESS_S,
                             max_out_of_order_s=30)
    producer = Producer({"bootstrap.servers": settings.require_bootstrap(),
                         "enable.idempotence": True, "linger.ms": 10})
    broken: dict[str, dict[str, Any]] = {}
    late = 0
    for n, rec in enumerate(generate(config)):
        value = rec.value
        late += rec.kind == "late"
        if rec.kind == "good" and len(broken) < BROKEN and n % 5 == 0:
            event, schema_id = decoder.decode(value)
            if event["event_type"] == "purchase" and event["currency"]:
                value = encode(dict(event, currency=event["currency"].lower()),
                               registry.get(schema_id))
                broken[event["event_id"]] = event
        producer.produce(settings.topic, value, rec.key, timestamp=rec.timestamp_ms)
    assert producer.flush(30) == 0
    assert len(broken) == BROKEN and late > 0
    return {"broken": broken, "late": late}


def user_totals(settings: Settings, namespace: str) -> dict[str, tuple[int, float]]:
    view = next(v for v in DEFAULT_VIEWS if v.name == "user_activity_1m")
    out: dict[str, tuple[int, float]] = {}
    for (user, _, _), row in features(settings, namespace, view).items():
        f = dict(zip(view.feature_names, row, strict=True))
        count, total = out.get(user, (0, 0.0))
        out[user] = (count + f["purchase_count"], total + f["purchase_amount_sum"])
    return out


@pytest.fixture
def e2e(tmp_path: Path, bootstrap: str, redis_server: Service) -> Settings:
    settings = Settings(home=tmp_path, topic=f"rd_{uuid.uuid4().hex[:8]}",
                        bootstrap_servers=bootstrap,
                        redis_url=f"redis://127.0.0.1:{redis_server.port}/7",
                        catalog_uri=f"sqlite:///{tmp_path / 'catalog.db'}",
                        warehouse=f"file://{tmp_path / 'warehouse'}")
    redis.Redis.from_url(settings.require_redis()).flushdb()
    return settings


def test_redrive_end_to_end(e2e: Settings, tmp_path: Path) -> None:
    settings = e2e
    work = produce_workload(settings)
    first = kappa(settings, "run", "--bounded")
    assert first["quarantined"] == {"invalid_value": BROKEN, "late": work["late"]}

    listed = kappa(settings, "quarantine", "list", "--limit", "5")
    assert listed["by_reason"] == {"invalid_value": BROKEN, "late": work["late"]}
    assert len(listed["records"]) == 5 and listed["truncated"] and listed["redriven"] == 0
    listed = kappa(settings, "quarantine", "list", "--reason", "invalid_value",
                   "--from", "earliest", "--to", "now")
    assert listed["matched"] == BROKEN and listed["by_reason"] == {"invalid_value": BROKEN}
    one = listed["records"][0]
    shown = kappa(settings, "quarantine", "show",
                  f"{one['source']['partition']}:{one['source']['offset']}")
    assert shown["reason"] == "invalid_value" and "currency" in shown["detail"]
    event = shown["payload"]["decoded"]
    assert event["event_id"] in work["broken"] and event["currency"].islower()
    assert ["kappa.reason", "invalid_value"] in shown["headers"]
    by_dlq = kappa(settings, "quarantine", "show", "--dlq",
                   f"{one['dlq']['partition']}:{one['dlq']['offset']}")
    assert by_dlq["payload"] == shown["payload"]

    fix = tmp_path / "fix.py"
    fix.write_text(FIX)
    started_ms = time.time_ns() // 1_000_000
    out = kappa(settings, "quarantine", "redrive", "--reason", "invalid_value", "--fix", str(fix))
    assert (out["matched"], out["redriven"], out["already_redriven"]) == (BROKEN, BROKEN, 0)
    assert out["fix_errors"] == out["skipped_by_fix"] == out["will_be_late"] == 0
    late = kappa(settings, "quarantine", "redrive", "--reason", "late")  # no fix: bytes as-is
    assert late["redriven"] == late["will_be_late"] == work["late"]
    again = kappa(settings, "quarantine", "redrive", "--reason", "invalid_value", "--fix", str(fix))
    assert (again["redriven"], again["already_redriven"]) == (0, BROKEN)

    msgs = read_all(settings.require_bootstrap(), settings.topic)
    redriven = [m for m in msgs if headers(m).get("kappa.redriven") == b"1"]
    assert len(redriven) == BROKEN + work["late"]
    assert len({headers(m)["kappa.redrive.of"] for m in redriven}) == len(redriven)
    assert all(m.timestamp()[1] >= started_ms for m in redriven)  # new records, timestamped now

    second = kappa(settings, "run", "--bounded", KAPPA_NAMESPACE="kappa2",
                   KAPPA_REDIS_PREFIX="kappa2")
    # the log is read again from the start: the redriven late events are late once more
    assert second["quarantined"] == {"invalid_value": BROKEN, "late": 2 * work["late"]}

    originals = [m for m in msgs if m not in redriven]
    for view in DEFAULT_VIEWS:
        assert features(settings, "kappa", view) == expected(view, originals), view.name
        assert features(settings, "kappa2", view) == expected(view, msgs), view.name
    before, after = user_totals(settings, "kappa"), user_totals(settings, "kappa2")
    fixed_by_user = Counter(e["user_id"] for e in work["broken"].values())
    for user, (count, total) in after.items():
        old = before.get(user, (0, 0.0))
        assert count - old[0] == fixed_by_user[user], user
        extra = sum(e["amount"] for e in work["broken"].values() if e["user_id"] == user)
        assert total - old[1] == pytest.approx(extra), user

    # the redriven late events are quarantined again as late, as new records
    dlq = read_quarantine(settings, Selection(reasons=frozenset({"late"})))[0]
    late_origins = {f"{settings.topic}/{r.source_partition}/{r.source_offset}".encode()
                    for r in dlq if r.redrive_of is None}
    late_copies = {(m.partition(), m.offset()) for m in redriven
                   if headers(m)["kappa.redrive.of"] in late_origins}
    requarantined = {r.origin for r in dlq if r.redrive_of is not None}
    assert requarantined == late_copies and len(late_copies) == work["late"]
    # ... and a redrive of them needs --include-redriven: no loop through the flow
    loop = kappa(settings, "quarantine", "redrive", "--reason", "late")
    assert (loop["redriven"], loop["already_redriven"], loop["skipped_redrives"]) == (
        0, work["late"], work["late"])


def dlq_record(settings: Settings, producer: Producer, partition: int, offset: int,
               value: bytes, reason: str = "invalid_value") -> None:
    raw = RawRecord(settings.topic, partition, offset, 1_767_225_600_000 + offset,
                    f"u{offset}".encode(), value, (("trace", b"t"),))
    producer.produce(settings.quarantine_topic, value, raw.key, partition=partition,
                     timestamp=raw.timestamp_ms,
                     headers=dlq_headers(Quarantined(raw, reason, "currency 'usd'", 1)))


def seed_dlq(settings: Settings, n: int) -> None:
    ensure_topics(settings)
    producer = Producer({"bootstrap.servers": settings.require_bootstrap()})
    for i in range(n):
        dlq_record(settings, producer, i % 2, i, f"bytes-{i}".encode())
    assert producer.flush(10) == 0


@pytest.mark.parametrize("produced_before_crash", [0, 4, 10])
def test_crash_between_produce_and_done_redrives_only_the_rest(
        settings: Settings, produced_before_crash: int) -> None:
    seed_dlq(settings, 10)
    crashed = Redriver(settings)
    records, _ = read_quarantine(settings, Selection())
    chunk = [p for r in records if isinstance(p := crashed.prepare(r), Prepared)]
    intent = crashed.begin(chunk)
    crashed.publish(chunk[:produced_before_crash])
    crashed.close()  # ... and the intent is never marked done
    assert [i.state for i in Ledger.load(crashed.kafka, settings.topic).intents.values()] == ["open"]
    assert intent.ends == {0: 0, 1: 0}
    assert list_quarantine(settings, Selection(), 100)["open_redrives"] == 1

    out = redrive(settings, Selection())
    assert out["recovered_from_crash"] == produced_before_crash
    assert (out["redriven"], out["already_redriven"]) == (10 - produced_before_crash,
                                                          produced_before_crash)
    msgs = read_all(settings.require_bootstrap(), settings.topic)
    origins = sorted(headers(m)["kappa.redrive.of"] for m in msgs)
    assert origins == sorted(f"{settings.topic}/{i % 2}/{i}".encode() for i in range(10))
    for m in msgs:  # original key, value, headers, partition; marks added
        i = int(headers(m)["kappa.redrive.of"].rsplit(b"/", 1)[1])
        assert (m.partition(), m.key(), m.value()) == (i % 2, f"u{i}".encode(), f"bytes-{i}".encode())
        assert m.headers() == [("trace", b"t"), ("kappa.redriven", b"1"),
                               ("kappa.redrive.of", f"{settings.topic}/{i % 2}/{i}".encode())]
    ledger = Ledger.load(crashed.kafka, settings.topic)
    assert all(i.state == "done" for i in ledger.intents.values())
    assert len(ledger.done_origins()) == 10
    assert redrive(settings, Selection())["already_redriven"] == 10


def test_fix_outcomes_and_dry_run(settings: Settings, tmp_path: Path) -> None:
    ensure_topics(settings)
    registry = FileRegistry()
    base = {"event_id": "e", "user_id": "u1", "event_type": "purchase", "item_id": "i1",
            "amount": 5.0, "currency": "usd", "ts": 1_767_225_600_000, "session_id": "s1",
            "attributes": {}}
    values = [encode(dict(base, event_id=f"e{i}", item_id=f"i{i}"), registry.get(1))
              for i in range(4)] + [b"\x00garbage"]
    producer = Producer({"bootstrap.servers": settings.require_bootstrap()})
    for i, value in enumerate(values):
        dlq_record(settings, producer, 0, i, value)
    assert producer.flush(10) == 0
    fix = tmp_path / "fix.py"
    fix.write_text("def fix(event):\n"
                   "    if event['item_id'] == 'i1': return None\n"
                   "    if event['item_id'] == 'i2': raise ValueError('nope')\n"
                   "    if event['item_id'] == 'i3': return dict(event, currency='us')\n"
                   "    return dict(event, currency='USD')\n")
    dry = redrive(settings, Selection(), fix_path=str(fix), dry_run=True)
    assert (dry["would_redrive"], dry["redriven"], dry["skipped_by_fix"], dry["fix_errors"],
            dry["still_invalid"], dry["undecodable"]) == (1, 0, 1, 1, 1, 1)
    assert Ledger.load(settings.kafka_client_config(), settings.topic).intents == {}
    out = redrive(settings, Selection(), fix_path=str(fix))
    assert out["redriven"] == 1 and {e["outcome"] for e in out["errors"]} == {
        "fix_errors", "still_invalid", "undecodable"}
    (m,) = read_all(settings.require_bootstrap(), settings.topic)
    event, schema_id = Decoder(registry).decode(m.value())
    assert event["currency"] == "USD" and event["event_id"] == "e0"
    assert schema_id == registry.latest().id  # re-encoded with the latest schema


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        code = main(args)
    except SystemExit as exc:  # argparse usage errors
        code = int(exc.code or 0)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kappa: error:"), err
    return code, err[0]


def test_cli_errors_are_one_line(settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    seed_dlq(settings, 1)
    for name, value in {**settings.to_env(), "KAPPA_METRICS_PORT": "0"}.items():
        monkeypatch.setenv(name, value)
    bad = tmp_path / "bad.py"
    bad.write_text("def fix(event):\n    return (\n")
    nofix = tmp_path / "nofix.py"
    nofix.write_text("x = 1\n")
    cases: list[tuple[list[str], int, str]] = [
        (["quarantine", "redrive", "--fix", str(bad)], 1, "SyntaxError"),
        (["quarantine", "redrive", "--fix", str(nofix)], 1, "defines no function fix"),
        (["quarantine", "redrive", "--fix", str(tmp_path / "missing.py")], 1, "--fix"),
        (["quarantine", "list", "--from", "yesterday-ish"], 2, "--from"),
        (["quarantine", "redrive", "--reason", "invalid"], 1, "unknown reason invalid"),
        (["quarantine", "list", "--from", "2026-02-01", "--to", "2026-01-01"], 1, "before"),
        (["quarantine", "show", "0-1"], 2, "PARTITION:OFFSET"),
        (["quarantine", "show", "1:999"], 1, "no quarantined record"),
        (["quarantine", "list", "--topic", "no_such_topic"], 1, "does not exist"),
        (["quarantine", "redrive", "--topic", "no_such_topic"], 1, "does not exist"),
        (["quarantine"], 2, "required"),
    ]
    for args, code, text in cases:
        got, line = run_cli(args, capsys)
        assert (got, text in line) == (code, True), (args, line)
    monkeypatch.setenv("KAPPA_BOOTSTRAP_SERVERS", f"127.0.0.1:{free_port()}")
    got, line = run_cli(["quarantine", "list"], capsys)
    assert got == 1 and "cannot reach Kafka" in line
