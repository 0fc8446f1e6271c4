"""Dead-letter topic for quarantined records: original bytes plus why and where from.

Each record is produced with its original key, value and timestamp, and headers

* ``kappa.reason``, ``kappa.detail`` — the first validation rule that applied,
* ``kappa.source.topic``, ``kappa.source.partition``, ``kappa.source.offset``,
* ``kappa.schema_id`` — when the writer schema id was known,

followed by the original record's own headers. The producer is idempotent, so
librdkafka's internal retries cannot duplicate or reorder records; it never gives
up on a record (``message.timeout.ms=0``), so a broker outage blocks the flow
instead of losing quarantined data.

Exactly once across restarts: the sink has one Bytewax partition per *source*
partition, writing to DLQ partition ``source % dlq_partitions`` in source-offset
order. On start it reads the tail of that DLQ partition to find the highest
source offset already there and skips everything up to it when the dataflow
replays its last epoch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import KafkaError, KafkaException, Message, Producer, TopicPartition
from typing_extensions import override

from flows.records import Quarantined
from flows.source import list_partitions
from kappa.errors import ConfigError, KappaError, ServiceUnavailable, TerminalError
from kappa.metrics import SINK_ERRORS, SINK_ROWS, SINK_WRITE_SECONDS
from replay.offsets import log_end, seek_consumer

if TYPE_CHECKING:
    from kappa.settings import Settings

log = logging.getLogger(__name__)

SINK_LABEL = "dlq"
REASON = "kappa.reason"
DETAIL = "kappa.detail"
SOURCE_TOPIC = "kappa.source.topic"
SOURCE_PARTITION = "kappa.source.partition"
SOURCE_OFFSET = "kappa.source.offset"
SCHEMA_ID = "kappa.schema_id"

_PRODUCER_DEFAULTS: dict[str, str | int | bool] = {
    "enable.idempotence": True,
    "compression.type": "lz4",
    "linger.ms": 20,
    "acks": "all",
    "message.timeout.ms": 0,
}


@dataclass(frozen=True, kw_only=True)
class QuarantineDLQConfig:
    """What the DLQ sink needs.

    Attributes:
        kafka: librdkafka client config (``bootstrap.servers``, SASL/TLS, ...);
            overrides the idempotent/lz4/linger defaults where it sets them.
        topic: The dead-letter topic (by default ``<source topic>.quarantine``).
        flush_timeout_s: How long one batch may take to be acknowledged.
    """

    kafka: Mapping[str, str | int | bool]
    topic: str
    source_partitions: int = 1
    """Partitions of the source topic: one sink partition each."""
    flush_timeout_s: float = 30.0
    producer_overrides: Mapping[str, str | int | bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if "bootstrap.servers" not in self.kafka:
            msg = "DLQ sink needs bootstrap.servers in its Kafka config"
            raise ConfigError(msg)
        if not self.topic or any(c.isspace() for c in self.topic):
            msg = f"DLQ topic must be non-empty without spaces, got {self.topic!r}"
            raise ConfigError(msg)
        if self.flush_timeout_s <= 0:
            msg = "flush_timeout_s must be > 0"
            raise ConfigError(msg)

    @classmethod
    def from_settings(cls, settings: Settings) -> QuarantineDLQConfig:
        """Client config (bootstrap, SASL/TLS) and ``<topic>.quarantine`` from the settings."""
        return cls(kafka=settings.kafka_client_config(), topic=settings.quarantine_topic,
                   source_partitions=settings.partitions)

    def producer_config(self) -> dict[str, str | int | bool]:
        """Idempotent, lz4, lingering producer settings merged with the client config."""
        return {**_PRODUCER_DEFAULTS, **self.kafka, **self.producer_overrides}


def dlq_headers(item: Quarantined) -> list[tuple[str, bytes]]:
    """Provenance headers first, then the original record's headers."""
    rec = item.record
    headers = [
        (REASON, item.reason.encode()),
        (DETAIL, item.detail.encode()),
        (SOURCE_TOPIC, rec.topic.encode()),
        (SOURCE_PARTITION, str(rec.partition).encode()),
        (SOURCE_OFFSET, str(rec.offset).encode()),
    ]
    if item.schema_id is not None:
        headers.append((SCHEMA_ID, str(item.schema_id).encode()))
    headers.extend(rec.headers)
    return headers


def last_source_offset(config: QuarantineDLQConfig, dlq_partition: int,
                       source_partition: int, *, timeout_s: float = 10.0) -> int:
    """Highest ``kappa.source.offset`` of ``source_partition`` in a DLQ partition (-1: none).

    Reads the partition's tail in growing windows, so it costs one small read
    when the DLQ partition holds only this source partition's records.
    """
    kafka = {k: str(v) for k, v in config.kafka.items()}
    consumer = seek_consumer(kafka, group=f"kappa-dlq-scan-{config.topic}")
    try:
        end = log_end(consumer, config.topic, dlq_partition, timeout_s)
        window = 256
        stop = end
        while stop > 0:
            start = max(0, stop - window)
            best = _scan(consumer, config.topic, dlq_partition, start, stop, source_partition,
                         timeout_s)
            if best >= 0:
                return best
            stop = start
            window *= 4
        return -1
    finally:
        consumer.close()


def _scan(consumer: Any, topic: str, partition: int, start: int, stop: int,
          source_partition: int, timeout_s: float) -> int:
    consumer.assign([TopicPartition(topic, partition, start)])
    best = -1
    position = start
    deadline = time.monotonic() + timeout_s
    want = str(source_partition).encode()
    while position < stop:
        msgs = consumer.consume(1000, 0.1)
        if not msgs:
            if time.monotonic() > deadline:
                msg = f"timed out reading DLQ topic {topic}[{partition}]"
                raise ServiceUnavailable(msg)
            continue
        for m in msgs:
            if m.error() is not None:
                if m.error().code() == KafkaError._PARTITION_EOF:
                    return best
                msg = f"reading DLQ topic {topic}[{partition}]: {m.error()}"
                raise ServiceUnavailable(msg)
            position = m.offset() + 1
            if m.offset() >= stop:
                return best
            headers = dict(m.headers() or ())
            if headers.get(SOURCE_PARTITION) == want:
                best = max(best, int(headers[SOURCE_OFFSET]))
    return best


class _DLQPartition(StatefulSinkPartition[list[Quarantined], None]):
    """One source partition's quarantined records, each produced exactly once."""

    def __init__(self, config: QuarantineDLQConfig, source_partition: int,
                 dlq_partition: int) -> None:
        self._config = config
        self._dlq_partition = dlq_partition
        try:
            self._producer = Producer(config.producer_config())
        except KafkaException as exc:
            msg = f"invalid DLQ producer config: {exc}"
            raise ConfigError(msg) from exc
        self._failures: list[KafkaError] = []
        self._pending = 0
        """Records produced since the last acknowledged epoch."""
        self._written = last_source_offset(config, dlq_partition, source_partition)

    def _on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self._failures.append(err)

    def _produce(self, item: Quarantined) -> None:
        rec = item.record
        headers: list[tuple[str, str | bytes | None]] = list(dlq_headers(item))
        while True:
            try:
                # timestamp 0 lets librdkafka stamp "now" (the record had none).
                self._producer.produce(self._config.topic, key=rec.key, value=rec.value,
                                       partition=self._dlq_partition, headers=headers,
                                       timestamp=max(rec.timestamp_ms, 0),
                                       on_delivery=self._on_delivery)
                return
            except BufferError:
                # Local queue full: serve delivery callbacks until there is room.
                self._producer.poll(0.1)

    @override
    def write_batch(self, values: list[list[Quarantined]]) -> None:
        """Hand every record not yet in the DLQ to the producer (acknowledged at the epoch end).

        Waiting for acknowledgements per batch would cost a broker round trip per
        poll (measured: a fifth of a bounded run's wall time); ``snapshot`` waits
        once per epoch instead, before Bytewax commits the epoch's input offsets.
        """
        records = [q for batch in values for q in batch if q.record.offset > self._written]
        if not records:
            return
        try:
            for item in records:
                self._produce(item)
                self._producer.poll(0)
        except KafkaException as exc:
            SINK_ERRORS.labels(sink=SINK_LABEL).inc()
            msg = f"cannot produce to DLQ topic {self._config.topic}: {exc}"
            raise ServiceUnavailable(msg) from exc
        self._written = records[-1].record.offset
        self._pending += len(records)

    def _drain(self) -> None:
        """Wait until every produced record is acknowledged.

        A broker outage blocks here (logged, counted) until the broker is back.

        Raises:
            ServiceUnavailable: A delivery failed (retriable on restart).
            TerminalError: The producer hit a fatal error (e.g. fenced, unauthorized).
        """
        if not self._pending and not self._failures:
            return
        started = time.perf_counter()
        try:
            pending = self._producer.flush(self._config.flush_timeout_s)
            while pending:
                SINK_ERRORS.labels(sink=SINK_LABEL).inc()
                log.warning("DLQ topic %s: %d records not acknowledged yet; still waiting",
                            self._config.topic, pending)
                pending = self._producer.flush(self._config.flush_timeout_s)
        except KafkaException as exc:
            SINK_ERRORS.labels(sink=SINK_LABEL).inc()
            msg = f"cannot produce to DLQ topic {self._config.topic}: {exc}"
            raise ServiceUnavailable(msg) from exc
        failures, self._failures = self._failures, []
        if failures:
            SINK_ERRORS.labels(sink=SINK_LABEL).inc()
            raise _delivery_error(self._config.topic, 0, failures)
        SINK_WRITE_SECONDS.labels(sink=SINK_LABEL).observe(time.perf_counter() - started)
        SINK_ROWS.labels(sink=SINK_LABEL).inc(self._pending)
        self._pending = 0

    @override
    def snapshot(self) -> None:
        """Acknowledge the epoch's records; resume state lives in the DLQ topic itself.

        (see ``last_source_offset``): what landed there is skipped on a restart.
        """
        self._drain()
        return None

    @override
    def close(self) -> None:
        self._drain()


def _delivery_error(topic: str, pending: int, failures: list[KafkaError]) -> KappaError:
    first = failures[0] if failures else None
    detail = f"; first error: {first.str()}" if first is not None else ""
    msg = (f"DLQ topic {topic}: {len(failures)} deliveries failed, "
           f"{pending} unacknowledged{detail}")
    if first is not None and first.fatal():
        return TerminalError(msg)
    return ServiceUnavailable(msg)


class QuarantineDLQSink(FixedPartitionedSink[list[Quarantined], None]):
    """Items are ``(str(source_partition), list[Quarantined])``; one partition per source one."""

    def __init__(self, config: QuarantineDLQConfig) -> None:
        self._config = config
        self._dlq_partitions: int | None = None

    @override
    def list_parts(self) -> list[str]:
        return [str(p) for p in range(self._config.source_partitions)]

    @override
    def part_fn(self, item_key: str) -> int:
        # Bytewax sorts part names as strings; map the key to its own part exactly.
        return sorted(self.list_parts()).index(item_key)

    @override
    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _DLQPartition:
        if self._dlq_partitions is None:
            self._dlq_partitions = len(list_partitions(
                {k: str(v) for k, v in self._config.kafka.items()}, self._config.topic))
        source = int(for_part)
        return _DLQPartition(self._config, source, source % self._dlq_partitions)
