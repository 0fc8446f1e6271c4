"""``kappa replay``: the same dataflow over a bounded range of the log, into a new version.

There is no batch code path: a backfill, a bug fix or a new view is the live
flow builder fed by a bounded source — Kafka where it still retains the range,
the Iceberg ``log`` archive where it does not — writing to its own version's
outputs with its own recovery store, so it can run beside a live ``kappa run``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace
from typing import Any, Literal

from prometheus_client import REGISTRY
from tqdm import tqdm

from flows.run import RunOptions, run
from flows.source import KafkaBatchSource, SourceConfig, list_partitions
from flows.views import DEFAULT_VIEWS, FeatureView
from kappa.cliargs import parse_time
from kappa.errors import ConfigError, ServiceUnavailable
from kappa.settings import Settings
from replay.archive import ArchiveConfig, ArchiveRange, ArchiveSource, archive_extent, offset_at_time
from replay.offsets import log_end, offset_for_time, seek_consumer
from replay.versions import DEFAULT_VERSION, Version, set_current, version_for
from sinks.iceberg import open_catalog
from sinks.redis import redis_client

SourceKind = Literal["auto", "kafka", "iceberg"]


@dataclass(frozen=True, kw_only=True)
class ReplayRequest:
    """What to replay, from where, into which version."""

    version: str
    from_text: str = "earliest"
    to_text: str = "now"
    views: tuple[FeatureView, ...] = DEFAULT_VIEWS
    source: SourceKind = "auto"
    promote: bool = False
    finalize: bool = True
    progress: bool = True


@dataclass(frozen=True, kw_only=True)
class Plan:
    """Per partition: Kafka range and (if needed) the archive range before it."""

    partitions: int
    kafka: dict[int, tuple[int, int]]
    archive: dict[int, tuple[int, int]]

    @property
    def total(self) -> int:
        """Records the replay will read."""
        ranges = list(self.kafka.values()) + list(self.archive.values())
        return sum(max(0, end - start) for start, end in ranges)

    def describe(self) -> dict[str, Any]:
        """JSON-able ranges."""
        return {"kafka": {str(p): list(r) for p, r in sorted(self.kafka.items())},
                "iceberg": {str(p): list(r) for p, r in sorted(self.archive.items())},
                "records": self.total}


def _archive_table(settings: Settings) -> Any:
    catalog = open_catalog(settings.catalog_uri, settings.warehouse)
    try:
        return catalog.load_table(f"{settings.namespace}.log")
    except Exception as exc:  # NoSuchTableError and catalog errors alike
        msg = (f"no Iceberg log archive {settings.namespace}.log to replay from "
               f"({type(exc).__name__})")
        raise ConfigError(msg) from exc


def plan_replay(settings: Settings, source: SourceKind, from_ms: int | None,
                to_ms: int | None) -> Plan:
    """Pin the replay's ranges now: start by record time, end at the current log end."""
    kafka_conf = settings.kafka_client_config()
    try:
        partitions = list_partitions(kafka_conf, settings.topic)
    except ServiceUnavailable:
        if source == "kafka":
            raise
        partitions = []
    if source == "iceberg" or not partitions:
        table = _archive_table(settings)
        archive: dict[int, tuple[int, int]] = {}
        p = 0
        while (extent := archive_extent(table, p)) is not None:
            start = extent[0] if from_ms is None else offset_at_time(table, p, from_ms)
            end = extent[1] if to_ms is None else offset_at_time(table, p, to_ms)
            archive[p] = (extent[1] if start is None else start, extent[1] if end is None else end)
            p += 1
        if not archive:
            msg = f"the archive {settings.namespace}.log holds no records"
            raise ConfigError(msg)
        return Plan(partitions=len(archive), kafka={}, archive=archive)
    consumer = seek_consumer(kafka_conf, group=f"kappa-plan-{settings.topic}")
    kafka: dict[int, tuple[int, int]] = {}
    archive = {}
    table = None
    try:
        for p in partitions:
            low, _ = consumer.get_watermark_offsets(_tp(settings.topic, p), timeout=10)
            end = log_end(consumer, settings.topic, p)
            if to_ms is not None:
                end = min(end, offset_for_time(consumer, settings.topic, p, to_ms))
            start = low if from_ms is None else offset_for_time(consumer, settings.topic, p,
                                                                from_ms)
            if source == "auto":
                table = table if table is not None else _try_archive(settings)
                extent = archive_extent(table, p) if table is not None else None
                if extent is not None and extent[1] > end and to_ms is None:
                    # The archive knows offsets Kafka no longer has at all: the topic was
                    # deleted (and maybe re-created empty). Its log is the archive alone.
                    first = extent[0] if from_ms is None else offset_at_time(table, p, from_ms)
                    archive[p] = (extent[1] if first is None else first, extent[1])
                    continue
                if extent is not None and extent[0] < low and (from_ms is None or start <= low):
                    first = extent[0] if from_ms is None else offset_at_time(table, p, from_ms)
                    if first is not None and first < low:
                        archive[p] = (first, min(low, end))
            kafka[p] = (max(start, low), end)
    finally:
        consumer.close()
    return Plan(partitions=max(len(partitions), len(archive)), kafka=kafka, archive=archive)


def _tp(topic: str, partition: int) -> Any:
    from confluent_kafka import TopicPartition

    return TopicPartition(topic, partition)


def _try_archive(settings: Settings) -> Any:
    try:
        return _archive_table(settings)
    except ConfigError:
        return None


def _existing_version(settings: Settings, version: Version) -> bool:
    """Whether ``version`` already has outputs (the live default always does)."""
    if version.name == DEFAULT_VERSION:
        return True
    catalog = open_catalog(settings.catalog_uri, settings.warehouse)
    return (version.namespace,) in catalog.list_namespaces() and bool(
        catalog.list_tables(version.namespace))


def _source(settings: Settings, plan: Plan, version: Version) -> Any:
    kafka = None
    if plan.kafka:
        kafka = KafkaBatchSource(SourceConfig(
            kafka=settings.kafka_client_config(), topic=settings.topic, bounded=True,
            start_offsets={p: r[0] for p, r in plan.kafka.items()},
            end_offsets={p: r[1] for p, r in plan.kafka.items()},
            batch_size=settings.batch_size, group=f"kappa-replay-{version.name}"))
    if not plan.archive:
        return kafka
    ranges = {p: ArchiveRange(partition=p, start=s, end=e) for p, (s, e) in plan.archive.items()}
    config = ArchiveConfig(table=_archive_table(settings), topic=settings.topic, ranges=ranges,
                           partitions=plan.partitions, batch_size=settings.batch_size)
    return ArchiveSource(config, kafka)


def _progress(topic: str, total: int, done: threading.Event) -> None:
    """Show events/s and ETA from the flow's own consumed counter."""
    start = REGISTRY.get_sample_value("kappa_events_consumed_total", {"topic": topic}) or 0.0
    with tqdm(total=total, unit="ev", unit_scale=True, desc="replay", leave=True) as bar:
        while not done.wait(0.5):
            now = REGISTRY.get_sample_value("kappa_events_consumed_total", {"topic": topic}) or 0
            bar.update(int(now - start) - bar.n)
        now = REGISTRY.get_sample_value("kappa_events_consumed_total", {"topic": topic}) or 0
        bar.update(int(now - start) - bar.n)


def replay(settings: Settings, request: ReplayRequest) -> dict[str, Any]:
    """Run the replay to its pinned end; optionally promote the version.

    Raises:
        ConfigError: Bad range or version name, or nothing to replay from.
    """
    version = version_for(request.version, base_namespace=settings.namespace,
                          base_prefix=settings.redis_prefix)
    in_place = _existing_version(settings, version)
    if in_place:
        # Backfilling views into a version that exists (e.g. the live one) is allowed
        # only for views it does not have yet: it writes their feature tables and keys
        # and nothing else, with its own recovery store, beside the version's own job.
        catalog = open_catalog(settings.catalog_uri, settings.warehouse)
        clash = [v.name for v in request.views
                 if catalog.table_exists((version.namespace, v.table))]
        if clash:
            msg = (f"version {version.name!r} already has view(s) {', '.join(clash)}; replay "
                   "into a new version (only views a version lacks can be backfilled into it)")
            raise ConfigError(msg)
    from_ms = parse_time(request.from_text)
    # "now" pins each partition's current log end (exact), not a time lookup
    to_ms = None if request.to_text.strip().lower() == "now" else parse_time(request.to_text)
    if from_ms is not None and to_ms is not None and from_ms >= to_ms:
        msg = f"--from ({request.from_text}) must be before --to ({request.to_text})"
        raise ConfigError(msg)
    plan = plan_replay(settings, request.source, from_ms, to_ms)
    target = replace(settings, namespace=version.namespace, redis_prefix=version.redis_prefix)
    done = threading.Event()
    bar = None
    if request.progress:
        bar = threading.Thread(target=_progress, args=(settings.topic, plan.total, done),
                               daemon=True)
        bar.start()
    try:
        summary = run(target, RunOptions(
            bounded=True, views=request.views, source=_source(settings, plan, version),
            partitions=plan.partitions, dlq=False, archive_log=False,
            finalize=request.finalize, write_events=not in_place,
            recovery_suffix="backfill-" + "-".join(v.name for v in request.views)
            if in_place else ""))
    finally:
        done.set()
        if bar is not None:
            bar.join(timeout=2)
    promoted = False
    if request.promote and not summary.get("stopped_by_signal"):
        client = redis_client(settings.require_redis())
        try:
            set_current(client, version, base_prefix=settings.redis_prefix)
        finally:
            client.close()
        promoted = True
    return {"version": version.name, "namespace": version.namespace,
            "redis_prefix": version.redis_prefix, "backfill_into_existing": in_place,
            "plan": plan.describe(), "promoted": promoted,
            **{k: v for k, v in summary.items() if k not in ("topic",)}}
