"""Find the first offset at or after a time, on brokers that cannot answer it.

``offsets_for_times`` is the Kafka way, and it is used when the broker gives a
real answer; the local Tansu broker answers 0 for every time, so this falls back
to a binary search over record timestamps with a consumer (a handful of single
record fetches per partition). The search assumes non-decreasing record
timestamps within a partition (LogAppendTime, or our generator); with
CreateTime from skewed producers it finds *a* boundary, and a replay then
relies on the deterministic lateness rule for the records around it.
"""

from __future__ import annotations

import time

from confluent_kafka import Consumer, KafkaError, TopicPartition

from kappa.errors import ServiceUnavailable


def seek_consumer(kafka: dict[str, str], group: str = "kappa-seek") -> Consumer:
    """A consumer tuned for single-record probes.

    The broker holds a fetch up to ``fetch.wait.max.ms`` (500 ms by default)
    after every re-assign; a probe wants its one record now.
    """
    conf = {"group.id": group, "enable.auto.commit": "false", "enable.partition.eof": "true",
            "fetch.wait.max.ms": "10", **kafka}
    return Consumer(conf)


def _timestamp_at(consumer: Consumer, topic: str, partition: int, offset: int,
                  timeout_s: float) -> int | None:
    """Record timestamp at ``offset`` (or the next record), ``None`` at the log end."""
    consumer.assign([TopicPartition(topic, partition, offset)])
    while True:
        msgs = consumer.consume(1, timeout_s)
        if not msgs:
            msg = f"no answer reading {topic}[{partition}] at offset {offset}"
            raise ServiceUnavailable(msg)
        record = msgs[0]
        err = record.error()
        if err is None:
            return int(record.timestamp()[1])
        if err.code() == KafkaError._PARTITION_EOF:
            return None
        msg_text = f"reading {topic}[{partition}]: {err}"
        raise ServiceUnavailable(msg_text)


def log_end(consumer: Consumer, topic: str, partition: int, timeout_s: float = 5.0) -> int:
    """The true end offset (the local broker's high watermark can be one batch short)."""
    low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition),
                                               timeout=timeout_s)
    consumer.assign([TopicPartition(topic, partition, max(low, high - 1))])
    end = max(low, high)
    deadline = time.monotonic() + timeout_s
    while True:
        # consume(n, t) waits for n records until t: keep t short and loop.
        msgs = consumer.consume(1000, 0.1)
        if not msgs:
            if time.monotonic() > deadline:
                msg = f"no answer reading the end of {topic}[{partition}]"
                raise ServiceUnavailable(msg)
            continue
        for m in msgs:
            err = m.error()
            if err is None:
                end = max(end, (m.offset() or 0) + 1)
            elif err.code() == KafkaError._PARTITION_EOF:
                return end
            else:
                msg = f"reading {topic}[{partition}]: {err}"
                raise ServiceUnavailable(msg)


def offset_for_time(consumer: Consumer, topic: str, partition: int, ts_ms: int,
                    timeout_s: float = 5.0) -> int:
    """First offset whose record timestamp is >= ``ts_ms`` (the log end when none is)."""
    asked = consumer.offsets_for_times([TopicPartition(topic, partition, ts_ms)],
                                       timeout=timeout_s)[0]
    low, _ = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
    end = log_end(consumer, topic, partition, timeout_s)
    if asked.offset > low:  # a real answer (Tansu says 0 for everything)
        return min(asked.offset, end)
    lo, hi = low, end
    while lo < hi:
        mid = (lo + hi) // 2
        ts = _timestamp_at(consumer, topic, partition, mid, timeout_s)
        if ts is None or ts >= ts_ms:
            hi = mid
        else:
            lo = mid + 1
    return lo
