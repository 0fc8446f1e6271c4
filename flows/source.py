"""Kafka input that emits one item per poll (a ``RawBatch``), not one per record.

Bytewax's own ``KafkaSource`` emits every record as an item, which costs
microseconds per record in the runtime; this source keeps confluent-kafka's
batched ``consume`` and hands the whole poll downstream. It also emits idle
heartbeats so that window clocks move while a partition is caught up, and
ends a bounded run at end of partition (the local broker's high watermark is
not the log end, so a bounded run never stops on the watermark alone).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient

from flows import health
from flows.lifecycle import stop_requested
from flows.records import RawBatch, RawRecord
from kappa.errors import ServiceUnavailable
from kappa.metrics import EVENTS_CONSUMED

log = logging.getLogger(__name__)
_client_log = logging.getLogger("kappa.kafka")
_client_log.addHandler(logging.NullHandler())

_REACHED: dict[tuple[str, int], int] = {}
"""Next offset to read per (topic, partition) read in this process."""


def reached_offsets(topic: str) -> dict[int, int]:
    """Where this process's readers of ``topic`` stopped (next offset per partition)."""
    return {p: o for (t, p), o in _REACHED.items() if t == topic}


@dataclass(frozen=True, kw_only=True)
class SourceConfig:
    """Where and how to read.

    Attributes:
        kafka: librdkafka client config (bootstrap servers, security, ...).
        topic: Source topic.
        bounded: Stop each partition at its end (or at ``end_offsets``).
        start_offsets: First offset per partition when there is no resume state.
        end_offsets: Exclusive stop offset per partition (replays pin these).
        batch_size: Max records per poll.
        idle_heartbeat_s: How often a caught-up partition reports wall time.
    """

    kafka: dict[str, str]
    topic: str
    bounded: bool = False
    start_offsets: dict[int, int] = field(default_factory=dict)
    end_offsets: dict[int, int] | None = None
    batch_size: int = 5000
    poll_timeout_s: float = 0.01
    idle_heartbeat_s: float = 0.2
    group: str | None = None
    """Consumer group id (no group membership is used: partitions are assigned)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            msg = "batch_size must be >= 1"
            raise ValueError(msg)


def list_partitions(kafka: dict[str, str], topic: str, timeout_s: float = 10.0) -> list[int]:
    """Partition ids of ``topic``; one clear error when the broker or topic is missing."""
    admin = AdminClient(cast(dict[str, Any], {**kafka, "logger": _client_log}))
    try:
        meta = admin.list_topics(topic, timeout=timeout_s)
    except Exception as exc:  # KafkaException on timeout / transport failure
        msg = f"cannot reach Kafka at {kafka.get('bootstrap.servers')}: {exc}"
        raise ServiceUnavailable(msg) from exc
    info = meta.topics.get(topic)
    if info is None or info.error is not None or not info.partitions:
        msg = f"topic {topic!r} does not exist on {kafka.get('bootstrap.servers')}"
        raise ServiceUnavailable(msg)
    return sorted(info.partitions)


class _PartitionReader(StatefulSourcePartition[RawBatch, int]):
    def __init__(self, config: SourceConfig, partition: int, partitions: int,
                 offset: int) -> None:
        self._config = config
        self._partition = partition
        self._partitions = partitions
        self._offset = offset
        if offset >= 0:
            _REACHED[(config.topic, partition)] = offset
        self._stop = None if config.end_offsets is None else config.end_offsets.get(partition, 0)
        conf = {
            "group.id": config.group or f"kappa-{config.topic}",
            "enable.auto.commit": "false",
            "enable.partition.eof": "true",
            "auto.offset.reset": "earliest",
            "fetch.min.bytes": "1",
            "fetch.wait.max.ms": "100",
            "session.timeout.ms": "6000",
            # librdkafka prefetches up to 64 MiB per partition by default. The flow
            # decodes ~5x slower than a fetch arrives, so a deep queue is only memory:
            # 16 MiB per partition held ~150 MB of a 1M-event run's peak RSS. 2 MiB is
            # two fetches (max.partition.fetch.bytes is 1 MiB), so the next fetch lands
            # while one is consumed: at 1 MiB two processes stalled on every refill
            # (31k vs 41k events/s), at 2 MiB they run as fast as at 16 MiB.
            "queued.min.messages": str(config.batch_size),
            "queued.max.messages.kbytes": "2048",
            # With the queue full, librdkafka postpones the partition's next fetch by
            # this much (default 1000 ms): a 2 MiB queue drains sooner than that, so the
            # reader starved, and the end of a partition (EOF) came 1.09 s after its
            # last record instead of 0.11 s (measured on the local broker).
            "fetch.queue.backoff.ms": "10",
        }
        conf.update(config.kafka)
        self._consumer = Consumer(conf)
        self._consumer.assign([TopicPartition(config.topic, partition, offset)])
        self._eof = self._stop is not None and offset >= self._stop
        self._done = False
        self._idle_since: float | None = None
        self._at_end = False
        """At the log end (EOF seen, no record since): only then is the partition idle."""
        self._last_heartbeat = 0.0
        self._counter = EVENTS_CONSUMED.labels(config.topic)
        self._next_lag_at = 0.0

    def next_batch(self) -> list[RawBatch]:
        if self._done or stop_requested():
            raise StopIteration
        if self._eof and self._config.bounded:
            self._done = True
            _REACHED.setdefault((self._config.topic, self._partition), max(self._offset, 0))
            return []
        cfg = self._config
        # consume() waits for a *full* batch until its timeout, and every partition
        # reader runs on the worker's one thread: while records flow, take what
        # librdkafka has prefetched without waiting, and wait briefly only when
        # the last poll found nothing.
        msgs = self._consumer.consume(cfg.batch_size,
                                      cfg.poll_timeout_s if self._idle_since is not None else 0)
        records: list[RawRecord] = []
        topic, part, stop = cfg.topic, self._partition, self._stop
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    self._at_end = True
                    self._eof = True
                    continue
                log.warning("kafka error on %s[%d]: %s", topic, part, err)
                continue
            offset = msg.offset() or 0
            if stop is not None and offset >= stop:
                self._eof = True
                break
            self._at_end = False
            headers = cast(list[tuple[str, bytes]] | None, msg.headers())
            records.append(RawRecord(topic, part, offset, msg.timestamp()[1], msg.key(),
                                     msg.value(), tuple(headers) if headers else ()))
        now = time.time()
        health.beat()
        if now >= self._next_lag_at:
            self._report_lag(now)
        if records:
            self._offset = records[-1].offset + 1
            _REACHED[(topic, part)] = self._offset
            if stop is not None and self._offset >= stop:
                self._eof = True
            self._idle_since = None
            self._counter.inc(len(records))
            return [RawBatch(topic, part, self._partitions, records, int(now * 1000))]
        if self._idle_since is None:
            self._idle_since = now
        # Only a partition known to be at its end is idle: an empty poll before the
        # first fetch answers must not move the clock to wall time.
        if (not cfg.bounded and self._at_end
                and now - self._last_heartbeat >= cfg.idle_heartbeat_s):
            self._last_heartbeat = now
            return [RawBatch(topic, part, self._partitions, [], int(now * 1000), idle=True)]
        return []

    def _report_lag(self, now: float) -> None:
        """Lag = high watermark - next offset, from librdkafka's cache (no request), at most 1/s.

        The local broker's watermark can trail the log end by one batch, so the lag
        is clamped at 0; on Apache Kafka it is exact.
        """
        self._next_lag_at = now + 1.0
        try:
            low, high = self._consumer.get_watermark_offsets(
                TopicPartition(self._config.topic, self._partition), cached=True)
        except Exception:  # noqa: BLE001 - a missing cache entry is not an error here
            return
        if high >= 0:
            position = self._offset if self._offset >= 0 else max(low, 0)
            health.set_lag(self._partition, high - position, self._config.topic)

    def next_awake(self) -> datetime | None:
        if self._idle_since is None or self._config.bounded:
            return None
        return datetime.now(UTC) + timedelta(milliseconds=20)

    def snapshot(self) -> int:
        return self._offset

    def close(self) -> None:
        self._consumer.close()


class KafkaBatchSource(FixedPartitionedSource[RawBatch, int]):
    """One Bytewax partition per Kafka partition; resume state is the next offset."""

    def __init__(self, config: SourceConfig) -> None:
        self._config = config

    def list_parts(self) -> list[str]:
        """Every partition of the topic, on every worker (Bytewax assigns them)."""
        return [str(p) for p in list_partitions(self._config.kafka, self._config.topic)]

    def build_part(self, step_id: str, for_part: str, resume_state: int | None
                   ) -> _PartitionReader:
        """Open a reader at the resume offset, else the configured start."""
        partition = int(for_part)
        partitions = len(self.list_parts())
        offset = resume_state if resume_state is not None else self._config.start_offsets.get(
            partition, OFFSET_BEGINNING)
        return _PartitionReader(self._config, partition, partitions, offset)
