"""Run the dataflow against real services: the edge where settings become components.

Everything that can fail for an operator's reason (broker down, topic missing,
Redis unreachable, catalog unreadable) is checked here before the dataflow
starts, so the user gets one clear line instead of a worker traceback.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from bytewax._bytewax import cli_main
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from prometheus_client import REGISTRY

from flows import health, lifecycle
from flows.cluster import wait_for_lower_processes
from flows.dataflow import STATEFUL_STEPS, FlowConfig, FlowSinks, build_flow
from flows.features import FeatureConfig
from flows.gc_policy import GcPolicy
from flows.memory_policy import apply_memory_policy
from flows.profiler import ProfileConfig
from flows.profiles import finality_delay_ms, warmup_ms
from flows.records import RawBatch
from flows.recovery import FLOW_FILE, RecoveryStore, flow_definition
from flows.routing import Routing, routing_for
from flows.source import KafkaBatchSource, SourceConfig, list_partitions, reached_offsets
from flows.validate import REASONS, ValidationConfig
from flows.views import DEFAULT_VIEWS, FeatureView
from kappa.cliargs import parse_time
from kappa.errors import ConfigError
from kappa.settings import Settings
from replay.offsets import log_end, seek_consumer
from schemas.registry import SUBJECT, open_registry
from schemas.serde import Decoder
from sinks.iceberg import IcebergConfig, IcebergSink, open_catalog
from sinks.quarantine import QuarantineDLQConfig, QuarantineDLQSink
from sinks.redis import RedisConfig, RedisFeatureSink, redis_client


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """How this run differs from the settings: bounded or live, which views, where."""

    bounded: bool = False
    views: tuple[FeatureView, ...] = DEFAULT_VIEWS
    start_offsets: dict[int, int] | None = None
    end_offsets: dict[int, int] | None = None
    archive_log: bool = True
    recovery: bool = True
    source: Source[RawBatch] | None = None
    """A prebuilt input (a replay's bounded Kafka or Iceberg-archive source)."""
    partitions: int | None = None
    """Source partition count when ``source`` is given (the topic may be gone)."""
    dlq: bool = True
    """Publish quarantined records to ``<topic>.quarantine`` (replays do not)."""
    finalize: bool = True
    """A bounded run closes every window at its end (False: leave them open to continue)."""
    write_events: bool = True
    """Write the events and quarantine tables (False: feature tables only)."""
    recovery_suffix: str = ""
    """Separate recovery store for a second job on the same outputs (view backfills)."""


def base_tables(views: tuple[FeatureView, ...], archive_log: bool = True,
                write_events: bool = True, profiles: bool = False) -> list[str]:
    """Every Iceberg table a run writes."""
    names = [*(["events", "quarantine"] if write_events else []),
             *(["profiles"] if profiles and write_events else []), *(v.table for v in views)]
    return (["log"] if archive_log else []) + names


def routing(settings: Settings, partitions: int) -> Routing:
    """State keys spread over every worker of the run (all processes)."""
    processes = len(settings.addresses) if settings.addresses else 1
    return routing_for(processes * settings.workers_per_process, partitions, settings.shards)


def profile_config(settings: Settings, views: tuple[FeatureView, ...]) -> ProfileConfig:
    """The profiler's settings (``KAPPA_PROFILE_*``, ``KAPPA_DRIFT_*``)."""
    window_ms = settings.profile_window_s * 1000
    pinned = _pinned_reference(settings.drift_reference, window_ms)
    return ProfileConfig(window_ms=window_ms,
                         allowed_lateness_ms=int(settings.allowed_lateness_s * 1000),
                         shards=settings.shards,
                         view_delays_ms=tuple((v.name, finality_delay_ms(v)) for v in views),
                         warmups_ms=tuple((v.name, warmup_ms(v)) for v in views),
                         reference_windows=settings.drift_reference_windows,
                         pinned_reference_ms=pinned)


def _pinned_reference(text: str, window_ms: int) -> int | None:
    """``trailing`` → None; epoch ms or ISO-8601 → the start of that profile window."""
    value = text.strip()
    if value.lower() == "trailing":
        return None
    try:
        parsed = int(value) if value.lstrip("-").isdigit() else (
            None if value.lower() in ("earliest", "now") else parse_time(value))
    except ConfigError:
        parsed = None
    if parsed is None:
        msg = f"KAPPA_DRIFT_REFERENCE must be 'trailing', epoch ms or ISO-8601, got {text!r}"
        raise ConfigError(msg)
    ms = parsed
    if ms % window_ms:
        msg = (f"KAPPA_DRIFT_REFERENCE {text!r} is not the start of a "
               f"{window_ms // 1000} s profile window")
        raise ConfigError(msg)
    return ms


def prepare(settings: Settings, options: RunOptions) -> tuple[Dataflow, dict[str, Any]]:
    """Check every service, then build the flow (no data moves yet)."""
    kafka = settings.kafka_client_config()
    partitions = (list(range(options.partitions)) if options.partitions is not None
                  else list_partitions(kafka, settings.topic))
    redis_client(settings.require_redis()).close()
    iceberg = IcebergConfig.from_settings(settings, commit_on_snapshot=options.recovery)
    open_catalog(iceberg.catalog_uri, iceberg.warehouse)
    registry = open_registry(settings.schema_registry_url)
    reader = registry.latest(SUBJECT)

    def decode_factory() -> Any:
        return Decoder(registry, reader).decode

    live = not options.bounded
    lateness_ms = int(settings.allowed_lateness_s * 1000)
    profiles = settings.profiles and options.write_events
    config = FlowConfig(
        name=f"kappa_{settings.topic}".replace(".", "_").replace("-", "_"),
        topic=settings.topic,
        views=options.views,
        validation=ValidationConfig(
            allowed_lateness_ms=lateness_ms,
            dedup_horizon_ms=int(settings.dedup_horizon_s * 1000),
            future_tolerance_ms=int(settings.future_tolerance_s * 1000),
            max_record_bytes=settings.max_record_bytes,
            live=live,
        ),
        features=FeatureConfig(allowed_lateness_ms=lateness_ms, live=live,
                               finalize_at_end=options.finalize, report_progress=profiles),
        shards=settings.shards,
        flush_interval_s=settings.flush_interval_s,
        archive_log=options.archive_log,
        tables=tuple(base_tables(options.views, options.archive_log, options.write_events,
                                 profiles)) if live else (),
        recovery=options.recovery,
        write_events=options.write_events,
        profiles=profile_config(settings, options.views) if profiles else None,
        routing=routing(settings, len(partitions)),
    )
    source = options.source or KafkaBatchSource(SourceConfig(
        kafka=kafka, topic=settings.topic, bounded=options.bounded,
        start_offsets=options.start_offsets or {}, end_offsets=options.end_offsets,
        batch_size=settings.batch_size,
    ))
    sinks = FlowSinks(
        iceberg=IcebergSink(iceberg, base_tables(options.views, options.archive_log,
                                                 options.write_events, profiles), options.views),
        redis=RedisFeatureSink(RedisConfig.for_views(url=settings.require_redis(),
                                                     views=options.views,
                                                     prefix=settings.redis_prefix,
                                                     max_retries=None)),
        dlq=QuarantineDLQSink(QuarantineDLQConfig(kafka=kafka, topic=settings.quarantine_topic,
                                                  source_partitions=len(partitions)))
        if options.dlq else None,
    )
    flow = build_flow(config, source, sinks, decode_factory)
    return flow, {"topic": settings.topic, "partitions": len(partitions),
                  "views": [v.name for v in options.views], "bounded": options.bounded}


def _counter(name: str, labels: dict[str, str]) -> float:
    value = REGISTRY.get_sample_value(f"{name}_total", labels)
    return float(value or 0.0)


def _check_not_finalized(settings: Settings, store: RecoveryStore, bounded: bool
                         ) -> dict[str, Any] | None:
    """A finished bounded run froze its outputs: allow only a no-op re-run."""
    done = store.completed()
    if done is None:
        return None
    ends = {int(p): o for p, o in done["end_offsets"].items()}
    kafka = settings.kafka_client_config()
    consumer = seek_consumer(kafka, group=f"kappa-check-{settings.topic}")
    try:
        grown = {p: log_end(consumer, settings.topic, p) for p in list_partitions(
            kafka, settings.topic)}
    finally:
        consumer.close()
    if bounded and all(grown[p] <= ends.get(p, 0) for p in grown):
        return {"topic": settings.topic, "bounded": True, "already_complete": True,
                "end_offsets": {str(p): o for p, o in ends.items()}, "consumed": 0}
    msg = (f"outputs {settings.namespace}/{settings.redis_prefix} were finalized by a bounded "
           f"run up to offsets {ends}; every window there is final, so newer records cannot "
           "join them. Write to new outputs (KAPPA_NAMESPACE, KAPPA_REDIS_PREFIX) or replay "
           "into a new version")
    raise ConfigError(msg)


_HEALTH: list[health.HealthServer] = []


def _wait_for_store(store: RecoveryStore, timeout_s: float = 300.0) -> None:
    """Block until process 0 has created the shared recovery store (multi-process runs)."""
    deadline = time.monotonic() + timeout_s
    while not (store.path / FLOW_FILE).exists():
        if time.monotonic() > deadline:
            msg = (f"recovery store {store.path} was not created by process 0 within "
                   f"{timeout_s:.0f} s; every process must mount the same KAPPA_RECOVERY_DIR")
            raise ConfigError(msg)
        time.sleep(0.5)


def _serve_health(settings: Settings) -> None:
    """``/metrics``, ``/health``, ``/ready`` on ``KAPPA_METRICS_PORT`` (0: off); once per process."""
    health.STATE.configure(health.HealthConfig(stall_after_s=settings.health_stall_s,
                                               max_lag=settings.ready_max_lag))
    health.STATE.reset()
    if settings.metrics_port and not _HEALTH:
        _HEALTH.append(health.serve(settings.metrics_port))


def run(settings: Settings, options: RunOptions) -> dict[str, Any]:
    """Run the flow in this process until done (bounded) or stopped (live).

    With recovery on (the default) the run resumes from the checkpoints of its
    outputs, and a first SIGTERM/SIGINT drains it: the epoch finishes, sinks
    commit, state is snapshotted. A second signal exits at once.

    Returns:
        A JSON-able summary: consumed, valid, quarantined by reason, seconds, events/s.
    """
    store = RecoveryStore.for_outputs(settings, options.recovery_suffix)
    recovery_config = None
    resumed = False
    if options.recovery:
        finished = _check_not_finalized(settings, store, options.bounded)
        if finished is not None:
            return finished
        resumed = store.exists
    apply_memory_policy()
    flow, info = prepare(settings, options)
    if options.recovery and settings.addresses and settings.process_id:
        _wait_for_store(store)  # process 0 creates the shared store; the others join it
    if options.recovery:
        recovery_config = store.open(
            shards=settings.shards, partitions=info["partitions"],
            definition=flow_definition(STATEFUL_STEPS, options.views,
                                       routing(settings, info["partitions"])))
    _serve_health(settings)
    lifecycle.reset()
    lifecycle.install_signal_handlers()
    topic = settings.topic
    before = {
        "consumed": _counter("kappa_events_consumed", {"topic": topic}),
        "valid": _counter("kappa_events_valid", {"topic": topic}),
        **{r: _counter("kappa_events_quarantined", {"topic": topic, "reason": r}) for r in REASONS},
    }
    if settings.addresses and settings.process_id:
        wait_for_lower_processes(settings.addresses, settings.process_id)
    started = time.perf_counter()
    cpu_started = os.times()
    with GcPolicy():
        cli_main(flow, workers_per_process=settings.workers_per_process,
                 process_id=settings.process_id if settings.addresses else None,
                 addresses=list(settings.addresses) or None,
                 epoch_interval=timedelta(seconds=settings.snapshot_interval_s),
                 recovery_config=recovery_config)
    seconds = time.perf_counter() - started
    cpu = os.times()
    stopped = lifecycle.stop_requested()
    if options.recovery and options.bounded and options.finalize and not stopped:
        store.mark_completed(reached_offsets(topic), settings.process_id)
    consumed = _counter("kappa_events_consumed", {"topic": topic}) - before["consumed"]
    quarantined = {
        r: int(_counter("kappa_events_quarantined", {"topic": topic, "reason": r}) - before[r])
        for r in REASONS
    }
    return {
        **info,
        "recovery": str(store.path) if options.recovery else None,
        "resumed": resumed,
        "stopped_by_signal": stopped,
        "consumed": int(consumed),
        "valid": int(_counter("kappa_events_valid", {"topic": topic}) - before["valid"]),
        "quarantined": {r: n for r, n in quarantined.items() if n},
        "quarantined_total": sum(quarantined.values()),
        "seconds": round(seconds, 3),
        "cpu_seconds": round((cpu.user - cpu_started.user) + (cpu.system - cpu_started.system), 3),
        "events_per_s": round(consumed / seconds, 1) if seconds > 0 else None,
    }
