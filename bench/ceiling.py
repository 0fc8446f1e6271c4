"""The ceiling: consume + Avro decode of the whole topic in one process, no Bytewax.

    python -m bench.ceiling   (normally run by ``make bench``)

What a Python pipeline on confluent-kafka and fastavro cannot beat: the same
consumer settings and the same ``schemas.serde.Decoder`` the flow uses, every
record decoded, nothing else. Undecodable records count (they are consumed too).
"""

from __future__ import annotations

import os
import time
from typing import Any

from confluent_kafka import Consumer, KafkaError, TopicPartition

from flows.source import list_partitions
from kappa.settings import Settings
from replay.offsets import log_end, seek_consumer
from schemas.registry import SUBJECT, open_registry
from schemas.serde import Decoder


def measure_ceiling(settings: Settings, batch: int = 5000) -> dict[str, Any]:
    """Read every partition from the start to its true end, decoding each value."""
    kafka = settings.kafka_client_config()
    partitions = list_partitions(kafka, settings.topic)
    probe = seek_consumer(kafka, group="kappa-bench-ceiling-probe")
    try:
        ends = {p: log_end(probe, settings.topic, p) for p in partitions}
    finally:
        probe.close()
    registry = open_registry(settings.schema_registry_url)
    decode = Decoder(registry, registry.latest(SUBJECT)).decode
    consumer = Consumer({**kafka, "group.id": "kappa-bench-ceiling", "enable.auto.commit": False,
                         "enable.partition.eof": True, "fetch.max.bytes": 52_428_800,
                         "max.partition.fetch.bytes": 10_485_760})
    todo = {p for p in partitions if ends[p] > 0}
    consumed = decoded = 0
    cpu0, started = os.times(), time.perf_counter()
    consumer.assign([TopicPartition(settings.topic, p, 0) for p in todo])
    try:
        while todo:
            for m in consumer.consume(batch, 0.05):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        todo.discard(m.partition() or 0)
                        continue
                    raise RuntimeError(str(err))
                consumed += 1
                try:
                    decode(m.value() or b"")
                    decoded += 1
                except Exception:  # noqa: BLE001 - bad records are part of the workload
                    pass
                if (m.offset() or 0) + 1 >= ends[m.partition() or 0]:
                    todo.discard(m.partition() or 0)
    finally:
        consumer.close()
    seconds = time.perf_counter() - started
    cpu = os.times()
    return {"consumed": consumed, "decoded": decoded, "seconds": round(seconds, 3),
            "cpu_seconds": round(cpu.user - cpu0.user + cpu.system - cpu0.system, 3),
            "events_per_s": round(consumed / seconds, 1)}
