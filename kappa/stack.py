"""The embedded local stack behind ``kappa up`` / ``kappa down`` / ``kappa status``.

A Tansu broker (in-memory storage), a ``redis-server`` and an Iceberg SQLite
``SqlCatalog`` with a local warehouse, all under ``settings.home`` (``.kappa/``).
``stack.json`` there records what ``up`` started; ``Settings.from_env`` reads it,
so every command finds the stack without configuration.

Guarantees: ``up`` is idempotent (live recorded services are reused). ``down``
stops only recorded pids that still run the binary we started, so a Redis on 6379
is never touched; catalog and warehouse survive, but the broker is in-memory, so
topics and records are gone. ``status`` never raises for an unreachable service.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kappa import procs
from kappa.errors import ConfigError, KappaError, ServiceUnavailable, TerminalError
from kappa.settings import STACK_FILE, Settings, mask_url, read_stack_state

_SERVICES = ("broker", "redis")
_ENV_PORTS = {"broker": "KAPPA_BROKER_PORT", "redis": "KAPPA_REDIS_PORT"}
_ADMIN_TIMEOUT_S = 10.0
_END_OFFSET_TIMEOUT_S = 10.0
_DOWN_NOTE = ("the broker stores topics in memory: topics and records are gone after down; "
              "the Iceberg catalog and warehouse are kept")


def up(
    settings: Settings, *, broker_port: int | None = None, redis_port: int | None = None
) -> dict[str, Any]:
    """Start (or reuse) the local stack and prepare topics, catalog and namespace.

    Ports of newly started services come from the arguments, else
    ``KAPPA_BROKER_PORT`` / ``KAPPA_REDIS_PORT``, else a free ephemeral port (never
    9092/6379, which may belong to services the user runs). Safe to call repeatedly.

    Returns:
        JSON-able endpoints and, per service, its pid/port and whether it was reused.

    Raises:
        KappaError: A service, the catalog or the topics could not be set up; the
            message is one line. Services started by this call are stopped again.
    """
    home = settings.home
    home.mkdir(parents=True, exist_ok=True)
    state, _ = _load_state(home)  # an unreadable record holds nothing to reuse
    requested = {"broker": broker_port, "redis": redis_port}
    services: dict[str, dict[str, Any]] = {}
    started: list[int] = []
    reused: dict[str, bool] = {}
    try:
        for name in _SERVICES:
            reused[name] = _running(state.get(name))
            if reused[name]:
                services[name] = dict(state[name])
                continue
            service = _start(name, home, _port(name, requested[name]))
            started.append(service.pid)
            services[name] = {"pid": service.pid, "port": service.port, "log": str(service.log),
                              "proc": _proc_identity(service.pid)}
        started_at = state.get("started_at") if all(reused.values()) else None
        record = {**services, "started_at": started_at
                  or datetime.now(UTC).isoformat(timespec="seconds")}
        _write_state(home, record)
        bootstrap = f"127.0.0.1:{services['broker']['port']}"
        catalog_uri, warehouse = _catalog_location(settings)
        _ensure_catalog(settings.namespace, catalog_uri, warehouse)
        topics = _ensure_topics(bootstrap, settings)
    except KappaError:
        for pid in started:
            procs.stop_pid(pid)
        if started and state:
            _write_state(home, state)  # keep the record of any service we reused
        elif started:
            (home / STACK_FILE).unlink(missing_ok=True)
        raise
    return {
        "home": str(home),
        "services": {name: {**services[name], "reused": reused[name]} for name in _SERVICES},
        "endpoints": {"bootstrap_servers": bootstrap, "catalog_uri": catalog_uri,
                      "redis_url": f"redis://127.0.0.1:{services['redis']['port']}/0",
                      "warehouse": warehouse},
        "namespace": settings.namespace,
        "topics": topics,
        "started_at": record["started_at"],
    }


def down(settings: Settings) -> dict[str, Any]:
    """Stop the services recorded in ``stack.json`` and forget them.

    A recorded pid is signalled (SIGTERM, then SIGKILL) only while it is the very
    process ``up`` started (same boot id and start time), so pid reuse or a stale
    or edited ``stack.json`` can never stop a foreign process such as a system
    Redis. Idempotent: with no ``stack.json`` it does nothing.

    Returns:
        JSON-able ``{"stopped": [...], "not_running": [...], "note": ...}``.
    """
    state, _ = _load_state(settings.home)
    stopped: list[dict[str, Any]] = []
    not_running: list[str] = []
    for name in _SERVICES:
        pid, _ = _pid_port(state.get(name))
        if pid and procs.pid_alive(pid) and _owned(pid, state.get(name)):
            procs.stop_pid(pid)
            stopped.append({"service": name, "pid": pid})
        elif name in state:
            not_running.append(name)
    (settings.home / STACK_FILE).unlink(missing_ok=True)
    return {"stopped": stopped, "not_running": not_running, "note": _DOWN_NOTE}


def status(settings: Settings) -> dict[str, Any]:
    """Describe the stack: services, endpoints, topics with true end offsets, tables.

    Cheap enough to call often: end offsets read at most the last batch per
    partition and table counts come from snapshot summaries (no scans). Never
    raises for an unreachable service.
    """
    state, state_error = _load_state(settings.home)
    services: dict[str, Any] = {}
    for name in _SERVICES:
        pid, port = _pid_port(state.get(name))
        services[name] = {"pid": pid, "port": port, "up": _running(state.get(name))}
    bootstrap = settings.bootstrap_servers or (
        f"127.0.0.1:{services['broker']['port']}" if services["broker"]["port"] else None)
    redis_url = settings.redis_url or (
        f"redis://127.0.0.1:{services['redis']['port']}/0" if services["redis"]["port"] else None)
    catalog_uri, warehouse = _catalog_location(settings)
    result: dict[str, Any] = {
        "home": str(settings.home),
        "started_at": state.get("started_at"),
        "services": services,
        # Credentials never leave the process: URLs are shown with their password masked.
        "endpoints": {"bootstrap_servers": bootstrap, "redis_url": mask_url(redis_url),
                      "catalog_uri": mask_url(catalog_uri), "warehouse": warehouse},
        "topics": _topics_status(settings, bootstrap),
        "tables": _tables_status(catalog_uri, warehouse),
        "current_version": _current_version(settings, redis_url),
        "settings": settings.masked(),
    }
    if state_error:
        result["error"] = state_error
    return result


def _current_version(settings: Settings, redis_url: str | None) -> str | dict[str, str] | None:
    """Which output version readers use (``kappa versions promote`` switches it)."""
    if not redis_url:
        return None
    from dataclasses import replace

    from replay.versions import current_for

    try:
        return current_for(replace(settings, redis_url=redis_url)).name
    except KappaError as exc:
        return {"error": _one_line(exc)}


def _port(name: str, explicit: int | None) -> int:
    """The port a new service binds: argument, then environment, then a free one."""
    raw = os.environ.get(_ENV_PORTS[name], "") if explicit is None else str(explicit)
    if not raw:
        return procs.free_port()
    try:
        explicit = int(raw)
    except ValueError:
        msg = f"{_ENV_PORTS[name]} must be an integer, got {raw!r}"
        raise ConfigError(msg) from None
    if not 0 < explicit < 65536:
        msg = f"{name} port must be between 1 and 65535, got {explicit}"
        raise ConfigError(msg)
    if procs.port_open(explicit):
        # wait_for_port would mistake the other listener for our service.
        msg = f"cannot start {name}: port {explicit} is already in use"
        raise ServiceUnavailable(msg)
    return explicit


def _start(name: str, home: Path, port: int) -> procs.Service:
    log = home / "logs" / f"{name}.log"
    try:
        if name == "broker":
            return procs.start_broker(port, log)
        return procs.start_redis(port, home / "redis", log)
    except OSError as exc:
        msg = f"cannot start {name}: {exc}"
        raise TerminalError(msg) from exc


def _load_state(home: Path) -> tuple[dict[str, Any], str | None]:
    """``stack.json`` contents, or ``{}`` and the reason it could not be read."""
    try:
        return read_stack_state(home), None
    except ConfigError as exc:
        return {}, str(exc)


def _pid_port(recorded: object) -> tuple[int | None, int | None]:
    """Pid and port of one recorded service; ``None`` for anything malformed."""
    if not isinstance(recorded, Mapping):
        return None, None
    try:
        return int(recorded["pid"]), int(recorded["port"])
    except (KeyError, TypeError, ValueError):
        return None, None


def _running(recorded: object) -> bool:
    """Whether a recorded service is ours, alive and accepting connections."""
    pid, port = _pid_port(recorded)
    if pid is None or port is None:
        return False
    return procs.pid_alive(pid) and _owned(pid, recorded) and procs.port_open(port)


def _proc_identity(pid: int) -> str | None:
    """Boot id + start time of ``pid``: names one process across pid reuse and reboots."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return f"{boot}:{stat.rsplit(')', 1)[1].split()[19]}"


def _owned(pid: int, recorded: object) -> bool:
    """Whether ``pid`` is still the process ``up`` started and recorded.

    A record without a matching identity is never ours. Only without /proc
    (e.g. macOS) is the pid trusted alone.
    """
    if _proc_identity(os.getpid()) is None:
        return True
    expected = recorded.get("proc") if isinstance(recorded, Mapping) else None
    return expected is not None and _proc_identity(pid) == expected


def _write_state(home: Path, record: dict[str, Any]) -> None:
    """Replace ``stack.json`` atomically so readers never see half a file."""
    path = home / STACK_FILE
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def _catalog_location(settings: Settings) -> tuple[str, str]:
    """Catalog URI and warehouse, defaulting to ``home`` like ``Settings.from_env``."""
    uri = settings.catalog_uri or f"sqlite:///{settings.home / 'catalog.db'}"
    warehouse = settings.warehouse or f"file://{settings.home / 'warehouse'}"
    return uri, warehouse


def _open_catalog(uri: str, warehouse: str) -> Any:
    from sinks.catalog import open_catalog

    # Lazy: pyiceberg is heavy and only `up`/`status` need it.
    return open_catalog(uri, warehouse)


def _ensure_catalog(namespace: str, uri: str, warehouse: str) -> None:
    """Create the SQLite catalog tables, the warehouse folder and the namespace."""
    if warehouse.startswith("file://"):
        Path(warehouse.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    try:
        catalog = _open_catalog(uri, warehouse)
        catalog.create_namespace_if_not_exists(namespace)
    except Exception as exc:  # SQLAlchemy/pyiceberg raise many unrelated types
        msg = f"cannot prepare Iceberg catalog {uri}: {_one_line(exc)}"
        raise TerminalError(msg) from exc


def _tables_status(uri: str, warehouse: str) -> dict[str, Any]:
    """Row count per table from the current snapshot summary; errors as strings."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return {"error": f"catalog {uri} does not exist (run `kappa up`)"}
    tables: dict[str, Any] = {}
    try:
        catalog = _open_catalog(uri, warehouse)
        for namespace in catalog.list_namespaces():
            for identifier in catalog.list_tables(namespace):
                name = ".".join(identifier)
                try:
                    snapshot = catalog.load_table(identifier).current_snapshot()
                except Exception as exc:  # a broken table must not hide the others
                    tables[name] = {"error": _one_line(exc)}
                    continue
                records = snapshot.summary.get("total-records") if snapshot else None
                tables[name] = {"rows": int(records or 0),
                                "snapshot_id": snapshot.snapshot_id if snapshot else None}
    except Exception as exc:  # catalog unreachable: report, do not crash status
        return {"error": f"catalog {uri}: {_one_line(exc)}"}
    return tables


def _ensure_topics(bootstrap: str, settings: Settings) -> list[str]:
    """Create the source and quarantine topics on the local broker when absent."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 5000})
    names = [settings.topic, settings.quarantine_topic]
    try:
        existing = admin.list_topics(timeout=_ADMIN_TIMEOUT_S).topics
        missing = [NewTopic(n, num_partitions=settings.partitions, replication_factor=1)
                   for n in names if n not in existing]
        if missing:
            futures = admin.create_topics(missing, operation_timeout=_ADMIN_TIMEOUT_S,
                                          request_timeout=_ADMIN_TIMEOUT_S)
            for topic, future in futures.items():
                try:
                    future.result(timeout=_ADMIN_TIMEOUT_S)
                except KafkaException as exc:
                    if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                        msg = f"cannot create topic {topic}: {exc.args[0].str()}"
                        raise ServiceUnavailable(msg) from exc
    except KafkaException as exc:
        msg = f"broker at {bootstrap} did not answer: {_one_line(exc)}"
        raise ServiceUnavailable(msg) from exc
    return names


def _topics_status(settings: Settings, bootstrap: str | None) -> dict[str, Any]:
    """Per topic and partition: start offset and the true end offset."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    if not bootstrap:
        return {"error": "no Kafka broker configured (run `kappa up`)"}
    if not _any_reachable(bootstrap):
        return {"error": f"broker at {bootstrap} is not reachable"}
    config: dict[str, str | int | float | bool] = {**settings.kafka_config,
                                                    "bootstrap.servers": bootstrap}
    try:
        metadata = AdminClient(config).list_topics(timeout=_ADMIN_TIMEOUT_S)
        topics = sorted(
            (name, sorted(meta.partitions)) for name, meta in metadata.topics.items()
            if not name.startswith("__")
        )
        return {name: _partition_offsets(config, name, parts) for name, parts in topics}
    except KafkaException as exc:
        return {"error": f"broker at {bootstrap}: {_one_line(exc)}"}


def _partition_offsets(
    config: dict[str, str | int | float | bool], topic: str, partitions: list[int]
) -> dict[str, Any]:
    """Start and *true* end offsets (``log_end`` reads past Tansu's short high watermark)."""
    from confluent_kafka import TopicPartition

    from replay.offsets import log_end, seek_consumer

    consumer = seek_consumer({k: str(v) for k, v in config.items()},
                             group=f"kappa-status-{uuid.uuid4().hex}")
    rows = []
    try:
        for p in partitions:
            low, _ = consumer.get_watermark_offsets(TopicPartition(topic, p),
                                                    timeout=_ADMIN_TIMEOUT_S)
            end = log_end(consumer, topic, p, _END_OFFSET_TIMEOUT_S)
            rows.append({"partition": p, "start_offset": low, "end_offset": end,
                         "records": end - low})
    except KappaError as exc:
        return {"partitions": rows, "error": _one_line(exc)}
    finally:
        consumer.close()
    return {"partitions": rows, "end_offset_total": sum(r["end_offset"] for r in rows)}


def _any_reachable(bootstrap: str) -> bool:
    """Quick TCP check so status does not wait on librdkafka retries for a dead broker."""
    for server in bootstrap.split(","):
        host, _, port = server.strip().rpartition(":")
        host = host.split("://")[-1].strip("[]") or "127.0.0.1"
        if port.isdigit() and procs.port_open(int(port), host):
            return True
    return False


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
