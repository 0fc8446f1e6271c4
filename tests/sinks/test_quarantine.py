"""DLQ sink against the real (Tansu) broker."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace

import bytewax.operators as op
import pytest
from bytewax.dataflow import Dataflow
from bytewax.testing import TestingSource, run_main
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Message, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from flows.records import Quarantined, RawRecord
from kappa.errors import ConfigError
from kappa.settings import Settings
from sinks.quarantine import QuarantineDLQConfig, QuarantineDLQSink, dlq_headers

T0 = 1_700_000_000_000


def create_topic(bootstrap: str, name: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(name, num_partitions=1,
                                                replication_factor=1)]).values():
        future.result(timeout=15)


def consume_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0) -> list[Message]:
    """Read partition 0 from the beginning until EOF after ``expected`` messages."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"g_{uuid.uuid4().hex}",
                         "enable.partition.eof": True, "enable.auto.commit": False,
                         "session.timeout.ms": 6000})
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    out: list[Message] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            eof = False
            for msg in consumer.consume(100, 0.2):
                if msg.error() is None:
                    out.append(msg)
                elif msg.error().code() == KafkaError._PARTITION_EOF:
                    eof = True
                else:
                    raise AssertionError(msg.error())
            if eof and len(out) >= expected:
                break
    finally:
        consumer.close()
    return out


def items() -> list[tuple[str, list[Quarantined]]]:
    a = RawRecord("src", 2, 41, T0, b"u1", b"\x00\x00\x00\x00\x07garbage", (("trace", b"t1"),))
    b = RawRecord("src", 0, 7, T0 + 5, None, b"not avro", ())
    c = RawRecord("src", 1, 3, T0 + 9, b"u3", None, ())
    return [
        ("2", [Quarantined(a, "late", "ts is 120s older than ingest", 7)]),
        ("0", [Quarantined(b, "undecodable", "no magic byte")]),
        ("1", [Quarantined(c, "oversize", "value is empty")]),
    ]


def run_sink(config: QuarantineDLQConfig, batches: list[tuple[str, list[Quarantined]]]) -> None:
    flow = Dataflow("dlq_sink_test")
    op.output("dlq_out", op.input("inp", flow, TestingSource(batches)), QuarantineDLQSink(config))
    run_main(flow)


def test_dlq_sink_round_trip(bootstrap: str, settings: Settings) -> None:
    dlq = settings.quarantine_topic
    create_topic(bootstrap, dlq)
    config = replace(QuarantineDLQConfig.from_settings(settings), source_partitions=3)
    run_sink(config, items())

    msgs = consume_all(bootstrap, dlq, 3)
    assert len(msgs) == 3
    by_partition = {dict(m.headers())["kappa.source.partition"]: m for m in msgs}
    first, second, third = by_partition[b"2"], by_partition[b"0"], by_partition[b"1"]
    assert first.key() == b"u1" and first.value() == b"\x00\x00\x00\x00\x07garbage"
    assert first.timestamp()[1] == T0
    assert first.headers() == [
        ("kappa.reason", b"late"), ("kappa.detail", b"ts is 120s older than ingest"),
        ("kappa.source.topic", b"src"), ("kappa.source.partition", b"2"),
        ("kappa.source.offset", b"41"), ("kappa.schema_id", b"7"), ("trace", b"t1")]
    assert second.key() is None and second.value() == b"not avro"
    assert second.timestamp()[1] == T0 + 5
    assert dict(second.headers())["kappa.reason"] == b"undecodable"
    assert "kappa.schema_id" not in dict(second.headers())
    assert third.value() is None and third.timestamp()[1] == T0 + 9
    assert dict(third.headers())["kappa.source.offset"] == b"3"


def test_producer_config_is_idempotent_lz4() -> None:
    config = QuarantineDLQConfig(kafka={"bootstrap.servers": "x:1", "linger.ms": 5}, topic="d")
    pc = config.producer_config()
    assert pc["enable.idempotence"] is True and pc["compression.type"] == "lz4"
    assert pc["linger.ms"] == 5


def test_config_validation() -> None:
    with pytest.raises(ConfigError):
        QuarantineDLQConfig(kafka={}, topic="d")
    with pytest.raises(ConfigError):
        QuarantineDLQConfig(kafka={"bootstrap.servers": "x:1"}, topic="bad topic")


def test_headers_without_schema_id() -> None:
    q = Quarantined(RawRecord("s", 0, 1, T0, None, b"x"), "duplicate", "seen e1")
    assert [k for k, _ in dlq_headers(q)] == ["kappa.reason", "kappa.detail",
                                             "kappa.source.topic", "kappa.source.partition",
                                             "kappa.source.offset"]


def test_unreachable_broker_is_one_clear_error() -> None:
    from kappa.errors import ServiceUnavailable
    from kappa.procs import free_port

    config = QuarantineDLQConfig(kafka={"bootstrap.servers": f"127.0.0.1:{free_port()}"},
                                 topic="dlq", flush_timeout_s=10.0)
    with pytest.raises(ServiceUnavailable):
        QuarantineDLQSink(config).build_part("dlq_out", "0", None)


def test_replayed_records_are_produced_once(bootstrap: str, settings: Settings) -> None:
    """A restart re-emits its last epoch: the sink reads the DLQ tail and skips it."""
    dlq = settings.quarantine_topic
    create_topic(bootstrap, dlq)
    config = replace(QuarantineDLQConfig.from_settings(settings), source_partitions=1)
    recs = [Quarantined(RawRecord("src", 0, i, T0 + i, b"k", b"v"), "late", "x")
            for i in range(10)]
    run_sink(config, [("0", recs[:6])])
    run_sink(config, [("0", recs[3:8])])  # replay overlaps 3..5
    run_sink(config, [("0", recs)])
    msgs = consume_all(bootstrap, dlq, 10)
    offsets = [int(dict(m.headers())["kappa.source.offset"]) for m in msgs]
    assert offsets == list(range(10))
