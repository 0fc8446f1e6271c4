"""Seek by time against the real local broker (whose offsets_for_times answers 0)."""

from __future__ import annotations

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from replay.offsets import log_end, offset_for_time, seek_consumer


def test_offset_for_time_binary_search(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result()
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    base = 1_767_225_600_000
    for i in range(1000):
        producer.produce(topic, value=b"x", timestamp=base + i * 10)
    producer.flush()
    consumer = seek_consumer({"bootstrap.servers": bootstrap})
    try:
        assert log_end(consumer, topic, 0) == 1000
        assert offset_for_time(consumer, topic, 0, base) == 0
        assert offset_for_time(consumer, topic, 0, base + 5) == 1
        assert offset_for_time(consumer, topic, 0, base + 5_000) == 500
        assert offset_for_time(consumer, topic, 0, base + 9_990) == 999
        assert offset_for_time(consumer, topic, 0, base + 10**9) == 1000
    finally:
        consumer.close()
