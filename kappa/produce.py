"""``kappa produce``: create the topics and write a generated workload to Kafka.

Records keep the generator's simulated ingest time as their Kafka timestamp
(``CreateTime``) and the user id as key, so the flow's lateness rule and
partitioning see exactly what the generator intended. The producer is
idempotent (no duplicates from retries: the only duplicates on the topic are
the ones the workload asked for), and every delivery is checked before
``produce`` returns.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from tqdm import tqdm

from kappa.errors import KappaError, ServiceUnavailable
from kappa.generator import (
    BAD_KINDS,
    GeneratedRecord,
    GeneratorConfig,
    expected_reason,
    generate,
)
from kappa.settings import Settings

_LOG = logging.getLogger("kappa.kafka")
_LOG.addHandler(logging.NullHandler())
_TIMEOUT_S = 3.0
_CHUNK = 1000


def _admin(settings: Settings) -> AdminClient:
    config: dict[str, Any] = {
        **settings.kafka_client_config(),
        "socket.timeout.ms": int(_TIMEOUT_S * 1000),
        "logger": _LOG,
    }
    return AdminClient(config)


def _unreachable(settings: Settings, exc: Exception) -> ServiceUnavailable:
    reason = exc.args[0].str() if exc.args and isinstance(exc.args[0], KafkaError) else exc
    msg = f"Kafka broker at {settings.bootstrap_servers} is unreachable: {reason}"
    return ServiceUnavailable(msg)


def ensure_topics(settings: Settings) -> dict[str, int]:
    """Create the event topic and its quarantine topic when missing; idempotent.

    Both get ``settings.partitions`` partitions. Existing topics are left as
    they are (partitions cannot always be added later, and never silently).

    Returns:
        ``{topic: partition count}`` for both topics as they now exist.

    Raises:
        ServiceUnavailable: The broker cannot be reached within a few seconds.
        KappaError: The broker refused to create a topic.
    """
    admin = _admin(settings)
    wanted = [settings.topic, settings.quarantine_topic]
    try:
        existing = admin.list_topics(timeout=_TIMEOUT_S).topics
    except KafkaException as exc:
        raise _unreachable(settings, exc) from exc
    missing = [
        NewTopic(name, num_partitions=settings.partitions, replication_factor=-1)
        for name in wanted
        if name not in existing
    ]
    if missing:
        try:
            create_topics(admin, missing)
        except TimeoutError as exc:
            raise _unreachable(settings, exc) from exc
    return _partition_counts(admin, settings, wanted)


def create_topics(admin: AdminClient, topics: list[NewTopic], timeout_s: float = _TIMEOUT_S) -> None:
    """Create ``topics``; one that exists already (another creator won) is fine.

    Raises:
        KappaError: The broker refused to create a topic.
        TimeoutError: The broker did not answer in time.
    """
    for name, future in admin.create_topics(topics, operation_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s * 2)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if isinstance(error, KafkaError) and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            msg = f"cannot create topic {name}: {error.str() if error else exc}"
            raise KappaError(msg) from exc


def _partition_counts(admin: AdminClient, settings: Settings, names: list[str]) -> dict[str, int]:
    """Partition counts, waiting briefly for new topics' metadata to appear."""
    deadline = time.monotonic() + _TIMEOUT_S * 2
    while True:
        try:
            topics = admin.list_topics(timeout=_TIMEOUT_S).topics
        except KafkaException as exc:
            raise _unreachable(settings, exc) from exc
        counts = {n: len(topics[n].partitions) for n in names if n in topics}
        if all(counts.get(n) for n in names) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if len(counts) != len(names):
        msg = f"topics {sorted(set(names) - set(counts))} did not appear after creation"
        raise KappaError(msg)
    return counts


class _Deliveries:
    """Delivery-report sink: with ``delivery.report.only.error`` it sees failures only."""

    def __init__(self) -> None:
        self.failed = 0
        self.first_error: str | None = None

    def __call__(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self.failed += 1
            if self.first_error is None:
                self.first_error = err.str()


def _producer(settings: Settings, deliveries: _Deliveries) -> Producer:
    config: dict[str, Any] = {
        **settings.kafka_client_config(),
        "enable.idempotence": True,
        "linger.ms": 20,
        "batch.size": 1_000_000,
        "batch.num.messages": 10_000,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 200_000,
        "queue.buffering.max.kbytes": 512 * 1024,
        "message.max.bytes": 4 * 1024 * 1024,
        "message.timeout.ms": 60_000,
        "delivery.report.only.error": True,
        "on_delivery": deliveries,
        "logger": _LOG,
    }
    return Producer(config)


def pregenerate(config: GeneratorConfig, *, margin: float = 1.5,
                now_ms: int | None = None) -> tuple[GeneratorConfig, list[GeneratedRecord]]:
    """The whole workload, generated before producing starts, stamped to start after that.

    A real-time run (``--rate``) on the host it measures shares the CPU with the
    flow under test; generating and Avro-encoding a record costs several times
    what sending it does. Doing all of it up front leaves only the sends in the
    timed phase, as load generators such as ``kafka-producer-perf-test`` do.
    Record timestamps still follow the wall clock: ``start_ms`` is set past the
    time generation takes, estimated from a probe of the same workload.

    Returns:
        The config actually generated (its ``start_ms``) and its records, in order.
    """
    probe = min(config.events, 5000)
    began = time.perf_counter()
    deque(generate(replace(config, events=probe, start_ms=0)), maxlen=0)
    per_record_s = (time.perf_counter() - began) / probe
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    start_ms = now + int((1.0 + per_record_s * config.events * margin) * 1000)
    planned = replace(config, start_ms=start_ms)
    return planned, list(generate(planned))


def produce(
    settings: Settings,
    config: GeneratorConfig,
    *,
    rate: float | None = None,
    progress: bool = False,
    records: list[GeneratedRecord] | None = None,
) -> dict[str, Any]:
    """Generate ``config.events`` records and write them to ``settings.topic``.

    Args:
        settings: Broker and topic; topics are created first if missing.
        config: The workload.
        rate: Real-time throttle in events per second (None: as fast as possible).
        progress: Show a tqdm bar on stderr.
        records: ``config``'s records generated already (:func:`pregenerate`); with a
            rate, sending starts at ``config.start_ms`` on the wall clock.

    Returns:
        JSON-able summary: topic, partitions, produced, good, late, duplicate,
        bad (per kind), by_reason (expected quarantine reason counts),
        first/last record ts, seconds and events_per_s (and, for pre-generated
        records, ``start_late_ms``: how far past ``start_ms`` sending began).

    Raises:
        ServiceUnavailable: The broker cannot be reached.
        KappaError: Any record was not delivered (every delivery is checked).
    """
    if rate is not None and rate <= 0:
        msg = "--rate must be > 0 events/s"
        raise KappaError(msg)
    partitions = ensure_topics(settings)[settings.topic]
    deliveries = _Deliveries()
    producer = _producer(settings, deliveries)
    kinds: Counter[str] = Counter()
    first_ts: int | None = None
    last_ts: int | None = None
    start_late_ms: int | None = None
    source: Iterable[GeneratedRecord] = generate(config) if records is None else records
    if records is not None and rate is not None and config.start_ms is not None:
        wait_s = config.start_ms / 1000 - time.time()
        if wait_s > 0:
            time.sleep(wait_s)
        start_late_ms = max(0, time.time_ns() // 1_000_000 - config.start_ms)
    started = time.perf_counter()
    bar = tqdm(total=config.events, file=sys.stderr, disable=not progress, unit="ev", unit_scale=True)
    topic, send, poll = settings.topic, producer.produce, producer.poll
    try:
        for n, record in enumerate(source, start=1):
            while True:
                try:
                    send(topic, record.value, record.key, timestamp=record.timestamp_ms)
                    break
                except BufferError:
                    poll(0.05)
            kinds[record.kind] += 1
            if first_ts is None:
                first_ts = record.timestamp_ms
            last_ts = record.timestamp_ms
            if n % _CHUNK == 0:
                poll(0)
                bar.update(_CHUNK)
                if rate is not None:
                    ahead = n / rate - (time.perf_counter() - started)
                    if ahead > 0:
                        time.sleep(ahead)
            if deliveries.failed:
                break
        bar.update(sum(kinds.values()) - bar.n)
        remaining = producer.flush(60.0)
    except KafkaException as exc:
        msg = f"producing to {topic} failed: {exc}"
        raise KappaError(msg) from exc
    finally:
        bar.close()
    if deliveries.failed or remaining:
        failed = deliveries.failed + remaining
        msg = f"{failed} records were not delivered to {topic}: {deliveries.first_error or 'timeout'}"
        raise KappaError(msg)
    seconds = time.perf_counter() - started
    produced = sum(kinds.values())
    by_reason: Counter[str] = Counter()
    for kind, count in kinds.items():
        reason = expected_reason(kind)
        if reason is not None:
            by_reason[reason] += count
    summary: dict[str, Any] = {
        "topic": topic,
        "partitions": partitions,
        "produced": produced,
        "good": kinds["good"],
        "late": kinds["late"],
        "duplicate": kinds["duplicate"],
        "bad": {kind: kinds[kind] for kind in BAD_KINDS if kinds[kind]},
        "by_reason": dict(sorted(by_reason.items())),
        "first_record_ts": first_ts,
        "last_record_ts": last_ts,
        "seconds": round(seconds, 3),
        "events_per_s": round(produced / seconds, 1) if seconds > 0 else None,
    }
    if start_late_ms is not None:
        summary["start_late_ms"] = start_late_ms
    return summary
