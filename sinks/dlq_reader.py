"""Bounded reads of Kafka topics, and the dead-letter records they hold.

The DLQ topic ``<topic>.quarantine`` is the source of truth for the quarantine
commands (the Iceberg ``quarantine`` table is per output version and keeps no
original headers). Every read is bounded by the true end offsets taken when it
starts, so a flow that keeps quarantining cannot make a command run forever.
Reads assign partitions (no group membership, no commits): they are invisible
to consumer groups and cost no rebalance.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient

from kappa.errors import ConfigError, ServiceUnavailable
from kappa.settings import Settings
from replay.offsets import seek_consumer
from sinks.quarantine import DETAIL, REASON, SCHEMA_ID, SOURCE_OFFSET, SOURCE_PARTITION, SOURCE_TOPIC

REDRIVEN = "kappa.redriven"
REDRIVE_OF = "kappa.redrive.of"
TIMEOUT_S = 10.0
METADATA_TIMEOUT_S = 5.0
"""How long an unreachable broker may take to be reported (a live one answers in ms)."""

_QUIET = logging.getLogger("kappa.redrive.kafka")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False  # librdkafka's connect noise must not break one-line errors
_PROVENANCE = frozenset({REASON, DETAIL, SOURCE_TOPIC, SOURCE_PARTITION, SOURCE_OFFSET, SCHEMA_ID})

Origin = tuple[int, int]
"""A quarantined record's identity: (source partition, source offset) on its topic."""


def quiet(kafka: Mapping[str, str]) -> dict[str, Any]:
    """Client config whose librdkafka logs go nowhere (errors surface as exceptions)."""
    return {**kafka, "logger": _QUIET}


def topic_partitions(kafka: Mapping[str, str], topic: str, *,
                     required: bool = True) -> list[int]:
    """Partition ids of ``topic`` ([] when missing and not ``required``).

    Lists *all* topics instead of asking for ``topic``: the local broker creates a
    topic that a metadata request names, and a typo must not create one.

    Raises:
        ServiceUnavailable: The broker cannot be reached.
        ConfigError: ``topic`` does not exist and is ``required``.
    """
    admin = AdminClient(quiet(kafka))
    try:
        topics = admin.list_topics(timeout=METADATA_TIMEOUT_S).topics
    except KafkaException as exc:
        msg = f"cannot reach Kafka at {kafka.get('bootstrap.servers')}: {exc.args[0]}"
        raise ServiceUnavailable(msg) from exc
    info = topics.get(topic)
    if info is None or info.error is not None or not info.partitions:
        if not required:
            return []
        msg = f"topic {topic!r} does not exist on {kafka.get('bootstrap.servers')}"
        raise ConfigError(msg)
    return sorted(info.partitions)


def message_headers(m: Message) -> list[tuple[str, bytes | None]]:
    """A record's headers in order, values as bytes."""
    raw = m.headers() or []
    pairs = raw.items() if isinstance(raw, dict) else raw
    return [(n, v.encode() if isinstance(v, str) else v) for n, v in pairs]


def open_consumer(kafka: Mapping[str, str], group: str) -> Consumer:
    """A bounded reader (assign, no group membership, no commits).

    An offset that retention already deleted reads from the earliest one left,
    never from the end (librdkafka's default), which would skip everything.
    """
    return seek_consumer({**quiet(kafka), "auto.offset.reset": "earliest"}, group=group)


def end_offsets(consumer: Consumer, topic: str, partitions: Iterable[int],
                timeout_s: float = TIMEOUT_S) -> dict[int, int]:
    """True end offset of each partition, now: ``replay.offsets.log_end`` for all at once.

    Reads from one below the high watermark to end of partition, since the local
    broker's watermark can be one batch short of the log end.
    """
    ends: dict[int, int] = {}
    starts: list[TopicPartition] = []
    for p in partitions:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
        ends[p] = max(low, high)
        starts.append(TopicPartition(topic, p, max(low, high - 1)))
    if not starts:
        return ends
    consumer.assign(starts)
    todo = set(ends)
    deadline = time.monotonic() + timeout_s
    while todo:
        msgs = consumer.consume(1000, 0.02)
        if not msgs and time.monotonic() > deadline:
            msg = f"no answer reading the end of {topic} partitions {sorted(todo)}"
            raise ServiceUnavailable(msg)
        for m in msgs:
            p, err = m.partition() or 0, m.error()
            if err is None:
                ends[p] = max(ends[p], (m.offset() or 0) + 1)
            elif err.code() == KafkaError._PARTITION_EOF:
                todo.discard(p)
            else:
                msg = f"reading {topic}[{p}]: {err}"
                raise ServiceUnavailable(msg)
    return ends


def read_range(consumer: Consumer, topic: str, ranges: Mapping[int, tuple[int, int]],
               timeout_s: float = TIMEOUT_S) -> Iterator[Message]:
    """Every record of ``topic`` in ``[start, end)`` per partition, each partition in order.

    ``start`` may be ``OFFSET_BEGINNING`` (whatever retention left).

    Raises:
        ServiceUnavailable: No progress for ``timeout_s`` or a broker error.
    """
    todo = {p: r for p, r in ranges.items() if r[0] < r[1]}
    if not todo:
        return
    consumer.assign([TopicPartition(topic, p, start) for p, (start, _) in todo.items()])
    deadline = time.monotonic() + timeout_s
    while todo:
        msgs = consumer.consume(1000, 0.02)
        if not msgs and time.monotonic() > deadline:
            msg = f"timed out reading {topic} partitions {sorted(todo)}"
            raise ServiceUnavailable(msg)
        for m in msgs:
            deadline = time.monotonic() + timeout_s
            p = m.partition() or 0
            if p not in todo:
                continue
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    del todo[p]
                    continue
                msg = f"reading {topic}[{p}]: {err}"
                raise ServiceUnavailable(msg)
            offset = m.offset() or 0
            if offset >= todo[p][1]:
                del todo[p]
                continue
            yield m
            if offset + 1 >= todo[p][1]:
                del todo[p]


def text(value: bytes | None) -> Any:
    """Bytes as text when they are UTF-8, else ``{"hex": ...}`` (JSON-able either way)."""
    if value is None:
        return None
    try:
        return value.decode()
    except UnicodeDecodeError:
        return {"hex": value.hex()}


@dataclass(frozen=True, kw_only=True)
class QuarantinedRecord:
    """One DLQ record: where it is, where it came from, why, and its original bytes."""

    dlq_partition: int
    dlq_offset: int
    timestamp_ms: int
    """The original record's timestamp (the DLQ keeps it)."""
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]
    """Every DLQ header: provenance first, then the original record's own."""
    reason: str
    detail: str
    source_topic: str
    source_partition: int
    source_offset: int
    schema_id: int | None

    @classmethod
    def from_message(cls, m: Message) -> QuarantinedRecord:
        """Parse a DLQ record written by ``sinks.quarantine``."""
        headers = message_headers(m)
        first: dict[str, str] = {}
        for name, value in headers:
            if name in _PROVENANCE and name not in first:
                first[name] = (value or b"").decode(errors="replace")
        schema_id = first.get(SCHEMA_ID)
        return cls(dlq_partition=m.partition() or 0, dlq_offset=m.offset() or 0,
                   timestamp_ms=m.timestamp()[1], key=m.key(), value=m.value(), headers=headers,
                   reason=first.get(REASON, ""), detail=first.get(DETAIL, ""),
                   source_topic=first.get(SOURCE_TOPIC, ""),
                   source_partition=int(first.get(SOURCE_PARTITION, "-1")),
                   source_offset=int(first.get(SOURCE_OFFSET, "-1")),
                   schema_id=int(schema_id) if schema_id else None)

    @property
    def origin(self) -> Origin:
        """Identity in the ledger: the source coordinates."""
        return (self.source_partition, self.source_offset)

    @property
    def original_headers(self) -> list[tuple[str, bytes | None]]:
        """The source record's own headers (what followed the provenance block)."""
        skip = len(self.headers)
        for n, (name, _) in enumerate(self.headers):
            if name not in _PROVENANCE:
                skip = n
                break
        return self.headers[skip:]

    @property
    def redrive_of(self) -> str | None:
        """When this record was itself a redrive: what it redrove."""
        for name, value in self.original_headers:
            if name == REDRIVE_OF:
                return (value or b"").decode(errors="replace")
        return None

    def summary(self, redriven: bool) -> dict[str, Any]:
        """The ``list`` row: coordinates, reason, time, key."""
        return {
            "dlq": {"partition": self.dlq_partition, "offset": self.dlq_offset},
            "source": {"topic": self.source_topic, "partition": self.source_partition,
                       "offset": self.source_offset},
            "reason": self.reason, "detail": self.detail,
            "timestamp_ms": self.timestamp_ms,
            "timestamp": datetime.fromtimestamp(self.timestamp_ms / 1000, UTC).isoformat(),
            "key": text(self.key), "redriven": redriven, "redrive_of": self.redrive_of,
        }


@dataclass(frozen=True, kw_only=True)
class Selection:
    """Which quarantined records a command is about (time: record timestamp, ``[from, to)``)."""

    reasons: frozenset[str] | None = None
    from_ms: int | None = None
    to_ms: int | None = None

    def matches(self, rec: QuarantinedRecord) -> bool:
        """Whether ``rec`` is selected."""
        return ((self.reasons is None or rec.reason in self.reasons)
                and (self.from_ms is None or rec.timestamp_ms >= self.from_ms)
                and (self.to_ms is None or rec.timestamp_ms < self.to_ms))


def read_quarantine(settings: Settings, selection: Selection | None = None,
                    ) -> tuple[list[QuarantinedRecord], dict[int, int]]:
    """The selected DLQ records, one per source record, in source order; and the ends read to.

    Raises:
        ConfigError: The DLQ topic does not exist.
        ServiceUnavailable: The broker cannot be reached.
    """
    kafka = settings.kafka_client_config()
    dlq = settings.quarantine_topic
    partitions = topic_partitions(kafka, dlq)
    consumer = open_consumer(kafka, f"kappa-quarantine-{settings.topic}")
    seen: dict[tuple[str, int, int], QuarantinedRecord] = {}
    try:
        ends = end_offsets(consumer, dlq, partitions)
        for m in read_range(consumer, dlq, {p: (OFFSET_BEGINNING, e) for p, e in ends.items()}):
            rec = QuarantinedRecord.from_message(m)
            if selection is None or selection.matches(rec):
                # The DLQ sink writes each source record once; a copy (e.g. a rebuilt
                # DLQ) is the same quarantined record, so keep the first.
                seen.setdefault((rec.source_topic, *rec.origin), rec)
    finally:
        consumer.close()
    records = sorted(seen.values(), key=lambda r: (r.source_topic, r.origin))
    return records, ends


def find_record(settings: Settings, partition: int, offset: int, *, dlq: bool = False
                ) -> tuple[QuarantinedRecord, list[dict[str, int]]]:
    """One quarantined record by source coordinates (or DLQ ones), and any other DLQ copies.

    Raises:
        ConfigError: No such record in the DLQ.
    """
    kafka = settings.kafka_client_config()
    topic = settings.quarantine_topic
    partitions = topic_partitions(kafka, topic)
    consumer = open_consumer(kafka, f"kappa-quarantine-{settings.topic}")
    found: list[QuarantinedRecord] = []
    try:
        if dlq:
            if partition in partitions:
                end = end_offsets(consumer, topic, [partition])[partition]
                rng = {partition: (offset, min(offset + 1, end))}
                found = [QuarantinedRecord.from_message(m) for m in read_range(consumer, topic, rng)]
        else:
            # The DLQ sink writes source partition p to DLQ partition p % n: look there first.
            home = partition % len(partitions)
            for part in [home] + [p for p in partitions if p != home]:
                end = end_offsets(consumer, topic, [part])[part]
                found = [r for r in map(QuarantinedRecord.from_message,
                                        read_range(consumer, topic, {part: (OFFSET_BEGINNING, end)}))
                         if r.source_topic == settings.topic and r.origin == (partition, offset)]
                if found:
                    break
    finally:
        consumer.close()
    if not found:
        where = f"DLQ {topic}" if dlq else f"{settings.topic}"
        msg = f"no quarantined record at {where} partition {partition} offset {offset}"
        raise ConfigError(msg)
    others = [{"partition": r.dlq_partition, "offset": r.dlq_offset} for r in found[1:]]
    return found[0], others
