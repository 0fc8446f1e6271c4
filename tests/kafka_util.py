"""Test helpers that read real outputs: a topic to its true end, Redis feature documents."""

from __future__ import annotations

from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient


def read_all(bootstrap: str, topic: str, timeout_s: float = 60.0) -> list:
    """Every record of ``topic``, partition by partition in offset order."""
    import time

    meta = AdminClient({"bootstrap.servers": bootstrap}).list_topics(topic, timeout=10)
    parts = sorted(meta.topics[topic].partitions)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{topic}",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    done: set[int] = set()
    out = []
    deadline = time.monotonic() + timeout_s
    while len(done) < len(parts):
        if time.monotonic() > deadline:
            raise TimeoutError(f"did not reach the end of {topic}")
        for msg in consumer.consume(5000, 0.2):
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    done.add(msg.partition())
                    continue
                raise RuntimeError(str(msg.error()))
            out.append(msg)
    consumer.close()
    return out


def redis_docs(url: str, prefix: str) -> dict[str, object]:
    """Every feature document under ``prefix`` (minus its write time), keyed ``view:entity``."""
    import orjson
    import redis

    client = redis.Redis.from_url(url)
    out = {}
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        doc = orjson.loads(client.hget(key, "v"))
        doc.pop("written_at_ms")
        out[key.decode()[len(prefix) + 1:]] = doc
    client.close()
    return out
