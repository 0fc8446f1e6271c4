from __future__ import annotations

import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient

from kappa.cli import main
from kappa.errors import ServiceUnavailable
from kappa.generator import GeneratorConfig, generate
from kappa.procs import free_port
from kappa.produce import ensure_topics, pregenerate, produce
from kappa.settings import Settings


def _consume_all(bootstrap: str, topic: str, partitions: int) -> list[tuple[bytes, bytes, int, int]]:
    """Every record of ``topic``; reads to EOF on each partition (Tansu's watermark lies)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{topic}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: list[tuple[bytes, bytes, int, int]] = []
    at_eof: set[int] = set()
    deadline = time.monotonic() + 60
    try:
        while len(at_eof) < partitions and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=0.2):
                err = msg.error()
                if err is not None:
                    assert err.code() == KafkaError._PARTITION_EOF, err
                    at_eof.add(msg.partition())
                    continue
                at_eof.discard(msg.partition())
                out.append((msg.key(), msg.value(), msg.timestamp()[1], msg.partition()))
    finally:
        consumer.close()
    assert len(at_eof) == partitions, "did not reach the end of every partition"
    return out


def test_produce_roundtrip(settings: Settings, bootstrap: str) -> None:
    config = GeneratorConfig(events=5000, users=200, items=100, seed=3)
    summary = produce(settings, config, rate=None, progress=False)
    assert summary["topic"] == settings.topic
    assert (summary["produced"], summary["partitions"]) == (5000, settings.partitions)
    assert summary["good"] + summary["late"] + summary["duplicate"] + sum(summary["bad"].values()) == 5000
    assert sum(summary["by_reason"].values()) == 5000 - summary["good"]
    expected = list(generate(config))
    assert summary["first_record_ts"] == expected[0].timestamp_ms
    assert summary["last_record_ts"] == expected[-1].timestamp_ms

    got = _consume_all(bootstrap, settings.topic, settings.partitions)
    assert len(got) == 5000
    assert sorted((k, v, ts) for k, v, ts, _ in got) == sorted(
        (r.key, r.value, r.timestamp_ms) for r in expected
    )
    partition_of: dict[bytes, int] = {}
    for key, _, _, partition in got:  # same key, same partition
        assert partition_of.setdefault(key, partition) == partition

    metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=5).topics
    assert len(metadata[settings.topic].partitions) == settings.partitions
    assert settings.quarantine_topic in metadata


def test_ensure_topics_is_idempotent(settings: Settings) -> None:
    first = ensure_topics(settings)
    assert first == {
        settings.topic: settings.partitions,
        settings.quarantine_topic: settings.partitions,
    }
    assert ensure_topics(settings) == first


def test_rate_throttles(settings: Settings) -> None:
    started = time.monotonic()
    summary = produce(settings, GeneratorConfig(events=2000), rate=2000.0, progress=True)
    assert summary["produced"] == 2000
    assert time.monotonic() - started >= 0.9


def test_pregenerated_records_are_the_generated_ones_sent_from_start_ms(settings: Settings) -> None:
    config = GeneratorConfig(events=3000, users=50, seed=4, events_per_sim_second=3000.0)
    planned, records = pregenerate(config)
    assert planned.start_ms is not None and planned.start_ms > time.time() * 1000
    assert [(r.key, r.value, r.timestamp_ms) for r in records] == [
        (r.key, r.value, r.timestamp_ms) for r in generate(planned)]
    summary = produce(settings, planned, rate=3000.0, records=records)
    assert time.time() * 1000 >= planned.start_ms + 900  # paced after the planned start
    assert summary["produced"] == 3000
    assert summary["first_record_ts"] == records[0].timestamp_ms
    assert 0 <= summary["start_late_ms"] < 1000


def test_unreachable_broker(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, bootstrap_servers=f"127.0.0.1:{free_port()}")
    with pytest.raises(ServiceUnavailable, match="unreachable") as info:
        produce(settings, GeneratorConfig(events=10))
    assert "\n" not in str(info.value)


def test_pregenerate_needs_a_rate(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["produce", "--events", "10", "--pregenerate"]) != 0
    assert capsys.readouterr().err.strip() == "kappa: error: --pregenerate needs --rate and no --start-ms"
