"""The redrive ledger: which quarantined records were re-published, so each is re-published once.

Where it lives: a one-partition Kafka topic ``<topic>.redrives`` beside the
source topic and its DLQ ``<topic>.quarantine``, created with
``cleanup.policy=compact`` and keyed by intent id. Not an Iceberg table,
because

* a redrive is a Kafka-to-Kafka operation on one *topic*; Iceberg namespaces
  belong to output versions (a replay gets ``kappa_v2``), so a table would sit
  in the wrong scope and make a redrive depend on the catalog too;
* the ledger then shares the DLQ's failure domain, ACLs and lifetime: whoever
  may read the DLQ and write the topic may redrive, nothing else must be up;
* compaction keeps the latest record per intent forever, and a ``done`` record
  repeats its intent's items, so the retained ledger is complete.

Protocol, per chunk of records (at most ``CHUNK`` so one ledger record stays far
below ``message.max.bytes``):

1. write an ``open`` intent: its items (source and DLQ coordinates) and the
   source partitions' true end offsets now (read to end of partition as
   ``replay.offsets.log_end`` does: the local broker's high watermark can be a
   batch short), and wait for the ack;
2. produce the records, each with ``kappa.redrive.of=<topic>/<partition>/<offset>``;
3. write the intent again as ``done`` with the items that were delivered.

A crash anywhere leaves either no intent (nothing produced), or an ``open`` one.
The next run *reconciles* every open intent: every record it produced is at or
after the recorded end offsets, so reading the source topic from there to its
current end and collecting ``kappa.redrive.of`` headers tells exactly which
items made it. Those are written as ``done``; the rest are simply not in the
ledger and are redriven by the run's own selection and ``--fix`` (a rerun of
the same command produces exactly the missing ones; a different command never
re-applies a fix the operator has since changed).

Not fenced: two redrives of the *same* records running at the same moment can
both produce them. A redrive is an operator's command; run one per topic at a time.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import orjson
from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
)
from confluent_kafka.admin import AdminClient, NewTopic

from kappa.errors import ConfigError, KappaError, ServiceUnavailable, TerminalError
from kappa.produce import create_topics
from sinks.dlq_reader import (
    REDRIVE_OF,
    TIMEOUT_S,
    Origin,
    end_offsets,
    message_headers,
    open_consumer,
    quiet,
    read_range,
    topic_partitions,
)

LEDGER_SUFFIX = ".redrives"
CHUNK = 1000
"""Records per intent: 1000 items are ~30 KB of JSON, far below a 1 MB message."""

Item = tuple[int, int, int, int]
"""(source partition, source offset, DLQ partition, DLQ offset)."""


def ledger_topic(topic: str) -> str:
    """The ledger of ``topic``'s redrives."""
    return f"{topic}{LEDGER_SUFFIX}"


def origin_text(topic: str, partition: int, offset: int) -> str:
    """The ``kappa.redrive.of`` header value."""
    return f"{topic}/{partition}/{offset}"


@dataclass(frozen=True, kw_only=True)
class Intent:
    """One chunk of a redrive, as written to the ledger."""

    id: str
    state: str
    """``open`` (written before producing) or ``done`` (items are on the topic)."""
    created_ms: int
    ends: dict[int, int] = field(default_factory=dict)
    """Source partitions' true end offsets before anything of this intent was produced."""
    items: tuple[Item, ...] = ()

    def origins(self) -> set[Origin]:
        """The source coordinates this intent covers."""
        return {(i[0], i[1]) for i in self.items}

    def encode(self) -> bytes:
        """The ledger record's value."""
        return orjson.dumps({"v": 1, "id": self.id, "state": self.state,
                             "created_ms": self.created_ms,
                             "ends": {str(p): o for p, o in self.ends.items()},
                             "items": [list(i) for i in self.items]})

    @classmethod
    def decode(cls, value: bytes) -> Intent:
        """Parse a ledger record's value."""
        doc = orjson.loads(value)
        return cls(id=doc["id"], state=doc["state"], created_ms=doc["created_ms"],
                   ends={int(p): int(o) for p, o in doc["ends"].items()},
                   items=tuple((int(a), int(b), int(c), int(d)) for a, b, c, d in doc["items"]))


class Publisher:
    """The idempotent producer of redriven records and ledger entries; every send is checked."""

    def __init__(self, kafka: Mapping[str, str]) -> None:
        config = {**quiet(kafka), "enable.idempotence": True, "acks": "all", "linger.ms": 5,
                  "compression.type": "lz4", "message.timeout.ms": 30_000}
        try:
            self._producer = Producer(config)
        except KafkaException as exc:
            msg = f"invalid Kafka producer config: {exc}"
            raise ConfigError(msg) from exc
        self._failures: list[KafkaError] = []

    def _on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self._failures.append(err)

    def send(self, topic: str, *, partition: int, key: bytes | None, value: bytes | None,
             headers: Sequence[tuple[str, bytes | None]], timestamp_ms: int = 0) -> None:
        """Queue one record (``timestamp_ms`` 0: librdkafka stamps now)."""
        hdrs: list[tuple[str, str | bytes | None]] = list(headers)
        while True:
            try:
                self._producer.produce(topic, value=value, key=key, partition=partition,
                                       headers=hdrs, timestamp=timestamp_ms,
                                       on_delivery=self._on_delivery)
                return
            except BufferError:
                self._producer.poll(0.1)
            except KafkaException as exc:  # e.g. the partition no longer exists
                msg = f"cannot produce to {topic}[{partition}]: {exc.args[0]}"
                raise KappaError(msg) from exc

    def flush(self) -> None:
        """Wait until everything queued is acknowledged.

        Raises:
            ServiceUnavailable: A delivery failed or timed out (nothing is retried
                here: the ledger makes the next run finish the job).
            TerminalError: The producer hit a fatal error.
        """
        pending = self._producer.flush(40.0)
        failures, self._failures = self._failures, []
        if failures or pending:
            first = failures[0] if failures else None
            detail = first.str() if first is not None else "timed out"
            msg = f"{len(failures) + pending} records not delivered: {detail}"
            if first is not None and first.fatal():
                raise TerminalError(msg)
            raise ServiceUnavailable(msg)


class Ledger:
    """The redrives of one source topic: done origins, and intents a crash left open."""

    def __init__(self, kafka: Mapping[str, str], topic: str, intents: dict[str, Intent]) -> None:
        self.kafka = dict(kafka)
        self.topic = topic
        self.intents = intents

    @classmethod
    def load(cls, kafka: Mapping[str, str], topic: str) -> Ledger:
        """Read the whole ledger (the latest record per intent wins); empty when it is missing."""
        name = ledger_topic(topic)
        intents: dict[str, Intent] = {}
        partitions = topic_partitions(kafka, name, required=False)
        if partitions:
            consumer = open_consumer(kafka, f"kappa-redrive-ledger-{topic}")
            try:
                ends = end_offsets(consumer, name, partitions)
                ranges = {p: (OFFSET_BEGINNING, e) for p, e in ends.items()}
                for m in read_range(consumer, name, ranges):
                    value = m.value()
                    if value:
                        intent = Intent.decode(value)
                        intents[intent.id] = intent
            finally:
                consumer.close()
        return cls(kafka, topic, intents)

    def done_origins(self) -> set[Origin]:
        """Every origin a finished intent re-published."""
        return {o for i in self.intents.values() if i.state == "done" for o in i.origins()}

    def open_intents(self) -> list[Intent]:
        """Intents whose run stopped between writing them and marking them done."""
        return [i for i in self.intents.values() if i.state == "open"]

    def ensure_topic(self) -> None:
        """Create the ledger topic (one partition, compacted) when missing."""
        name = ledger_topic(self.topic)
        if topic_partitions(self.kafka, name, required=False):
            return
        admin = AdminClient(quiet(self.kafka))
        new = NewTopic(name, num_partitions=1, replication_factor=-1,
                       config={"cleanup.policy": "compact"})
        try:
            create_topics(admin, [new], TIMEOUT_S)
        except TimeoutError as exc:
            msg = f"cannot create ledger topic {name}: the broker did not answer"
            raise ServiceUnavailable(msg) from exc
        deadline = time.monotonic() + TIMEOUT_S
        while not topic_partitions(self.kafka, name, required=False):
            if time.monotonic() > deadline:
                msg = f"ledger topic {name} did not appear after creation"
                raise ServiceUnavailable(msg)
            time.sleep(0.1)

    def write(self, publisher: Publisher, intent: Intent) -> None:
        """Append ``intent`` and wait for the acknowledgement."""
        publisher.send(ledger_topic(self.topic), partition=0, key=intent.id.encode(),
                       value=intent.encode(), headers=[])
        publisher.flush()
        self.intents[intent.id] = intent

    def begin(self, publisher: Publisher, consumer: Consumer, items: list[Item]) -> Intent:
        """Record the intent to produce ``items`` (pinning the source ends first)."""
        ends = end_offsets(consumer, self.topic, sorted({i[0] for i in items}))
        intent = Intent(id=uuid.uuid4().hex, state="open", created_ms=time.time_ns() // 1_000_000,
                        ends=ends, items=tuple(items))
        self.write(publisher, intent)
        return intent

    def finish(self, publisher: Publisher, intent: Intent, delivered: set[Origin]) -> Intent:
        """Mark ``intent`` done with the items that are on the topic."""
        done = Intent(id=intent.id, state="done", created_ms=intent.created_ms, ends=intent.ends,
                      items=tuple(i for i in intent.items if (i[0], i[1]) in delivered))
        self.write(publisher, done)
        return done

    def find_produced(self, consumer: Consumer, intents: list[Intent]) -> set[Origin]:
        """Origins of ``intents`` that are on the source topic (reconciliation scan).

        Reads each partition once, from the lowest recorded end offset to its end now.
        """
        wanted: dict[int, int] = {}
        for intent in intents:
            for p, o in intent.ends.items():
                wanted[p] = min(o, wanted.get(p, o))
        ends = end_offsets(consumer, self.topic, wanted)
        ranges = {p: (start, ends[p]) for p, start in wanted.items()}
        prefix = f"{self.topic}/".encode()
        found: set[Origin] = set()
        for m in read_range(consumer, self.topic, ranges):
            for name, value in message_headers(m):
                if name == REDRIVE_OF and value and value.startswith(prefix):
                    part, _, off = value[len(prefix):].partition(b"/")
                    found.add((int(part), int(off)))
        covered = {o for i in intents for o in i.origins()}
        return found & covered
