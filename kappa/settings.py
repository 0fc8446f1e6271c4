"""The one settings object, read from ``KAPPA_*`` environment variables at the edge.

Everything defaults to the embedded local stack under ``.kappa/`` so that a new
user needs no configuration; production points the same variables at real
services. Components never receive this object whole: they get the narrow,
frozen config they need (see ``flows.config`` and the sinks).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from kappa.errors import ConfigError

STACK_FILE = "stack.json"
_KAFKA_PREFIX = "KAPPA_KAFKA_"


def _int(env: Mapping[str, str], name: str, default: int, *, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        msg = f"{name} must be an integer, got {raw!r}"
        raise ConfigError(msg) from None
    if value < minimum:
        msg = f"{name} must be >= {minimum}, got {value}"
        raise ConfigError(msg)
    return value


def _float(env: Mapping[str, str], name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        msg = f"{name} must be a number, got {raw!r}"
        raise ConfigError(msg) from None
    if value < minimum:
        msg = f"{name} must be >= {minimum}, got {value}"
        raise ConfigError(msg)
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    msg = f"{name} must be a boolean (1/0, true/false), got {raw!r}"
    raise ConfigError(msg)


def read_stack_state(home: Path) -> dict[str, Any]:
    """The ports and pids ``kappa up`` recorded, or ``{}`` when no stack was started."""
    path = home / STACK_FILE
    if not path.exists():
        return {}
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        msg = f"cannot read {path}: {exc}"
        raise ConfigError(msg) from exc
    return data


@dataclass(frozen=True, kw_only=True)
class Settings:
    """All runtime settings; see README "Configuration" for each variable."""

    home: Path
    topic: str = "user_events"
    partitions: int = 4
    bootstrap_servers: str | None = None
    kafka_config: dict[str, str] = field(default_factory=dict)
    redis_url: str | None = None
    catalog_uri: str = ""
    warehouse: str = ""
    namespace: str = "kappa"
    redis_prefix: str = "kappa"
    schema_registry_url: str | None = None
    recovery_dir: Path | None = None
    metrics_port: int = 0
    allowed_lateness_s: float = 60.0
    dedup_horizon_s: float = 600.0
    future_tolerance_s: float = 300.0
    max_record_bytes: int = 65536
    flush_interval_s: float = 0.25
    """How often live runs write open windows to Redis: a floor under freshness (an update
    waits up to one interval). 0.5 s gave a two-process p99 of 1.3-1.9 s at 20k events/s,
    0.25 s 0.7-0.74 s when the machine had headroom, for ~10% more Redis rows."""
    commit_interval_s: float = 10.0
    max_buffer_rows: int = 100_000
    file_bytes: int = 8 * 1024 * 1024
    shards: int = 4
    batch_size: int = 5000
    recovery: bool = True
    snapshot_interval_s: float = 10.0
    backup_interval_s: float = 0.0
    recovery_partitions: int = 1
    views_module: str | None = None
    """A module whose ``VIEWS`` tuple adds feature views (``KAPPA_VIEWS_MODULE``)."""
    process_id: int | None = None
    """This process's index in a multi-process Bytewax cluster (``KAPPA_PROCESS_ID``)."""
    addresses: tuple[str, ...] = ()
    """``host:port`` of every process of the cluster, in process-id order (``KAPPA_ADDRESSES``,
    separated by ``;``); empty: a single-process run."""
    workers_per_process: int = 1
    health_stall_s: float = 120.0
    """``/health`` fails when the dataflow loop made no progress for this long."""
    ready_max_lag: int = 10_000
    """``/ready`` needs every source partition within this many records of its end."""
    api_token: str | None = field(default=None, repr=False)
    """Bearer token the HTTP API requires (``KAPPA_API_TOKEN``); never printed."""
    maintenance: bool = True
    """Iceberg table upkeep inside ``kappa run`` (``KAPPA_MAINTENANCE``)."""
    maintenance_interval_s: float = 300.0
    snapshot_retention_s: float = 3600.0
    min_snapshots: int = 10
    compact_files_over: int = 16
    target_file_bytes: int = 128 * 1024 * 1024
    orphan_age_s: float = 3600.0
    profiles: bool = True
    """Data profiles, quality dimensions and drift inside the flow (``KAPPA_PROFILES``)."""
    profile_window_s: int = 300
    drift_reference: str = "trailing"
    """``trailing`` (the last ``drift_reference_windows`` windows) or the start of one
    pinned reference window (ISO-8601 or epoch ms; ``KAPPA_DRIFT_REFERENCE``)."""
    drift_reference_windows: int = 288

    def __post_init__(self) -> None:
        if not self.topic or any(c.isspace() for c in self.topic):
            msg = f"topic name must be non-empty without spaces, got {self.topic!r}"
            raise ConfigError(msg)
        if self.partitions < 1:
            msg = "partitions must be >= 1"
            raise ConfigError(msg)
        if self.shards < 1:
            msg = "KAPPA_SHARDS must be >= 1"
            raise ConfigError(msg)
        if self.addresses and (self.process_id is None
                               or not 0 <= self.process_id < len(self.addresses)):
            msg = (f"KAPPA_PROCESS_ID must be 0..{len(self.addresses) - 1} with "
                   f"{len(self.addresses)} KAPPA_ADDRESSES, got {self.process_id}")
            raise ConfigError(msg)

    @property
    def quarantine_topic(self) -> str:
        """The dead-letter topic that sits beside the source topic."""
        return f"{self.topic}.quarantine"

    def require_bootstrap(self) -> str:
        """Bootstrap servers, or a clear error telling the user how to get some."""
        if not self.bootstrap_servers:
            msg = (
                "no Kafka broker configured: run `kappa up` to start the local stack "
                "or set KAPPA_BOOTSTRAP_SERVERS"
            )
            raise ConfigError(msg)
        return self.bootstrap_servers

    def require_redis(self) -> str:
        """Redis URL, or a clear error telling the user how to get one."""
        if not self.redis_url:
            msg = "no Redis configured: run `kappa up` to start the local stack or set KAPPA_REDIS_URL"
            raise ConfigError(msg)
        return self.redis_url

    def kafka_client_config(self) -> dict[str, str]:
        """Librdkafka config shared by every client: bootstrap plus ``KAPPA_KAFKA_*``."""
        config = {"bootstrap.servers": self.require_bootstrap()}
        config.update(self.kafka_config)
        return config

    def to_env(self) -> dict[str, str]:
        """The ``KAPPA_*`` variables that make ``from_env`` point where these settings do.

        For starting ``kappa`` subprocesses (tests, benchmarks, the cluster runner)
        against the same broker, Redis, catalog and warehouse.
        """
        env = {"KAPPA_HOME": str(self.home), "KAPPA_TOPIC": self.topic,
               "KAPPA_CATALOG_URI": self.catalog_uri, "KAPPA_WAREHOUSE": self.warehouse}
        if self.bootstrap_servers:
            env["KAPPA_BOOTSTRAP_SERVERS"] = self.bootstrap_servers
        if self.redis_url:
            env["KAPPA_REDIS_URL"] = self.redis_url
        return env

    def with_topic(self, topic: str | None) -> Settings:
        """A copy with ``--topic`` applied (``None`` keeps the configured one)."""
        return self if topic is None else replace(self, topic=topic)

    def masked(self) -> dict[str, Any]:
        """Settings as JSON-able data with secrets replaced, for ``status`` output."""
        secret_words = ("password", "secret", "token", "key")
        kafka = {
            k: ("***" if any(w in k.lower() for w in secret_words) else v)
            for k, v in self.kafka_config.items()
        }
        return {
            "home": str(self.home),
            "topic": self.topic,
            "bootstrap_servers": self.bootstrap_servers,
            "kafka_config": kafka,
            "redis_url": mask_url(self.redis_url),
            "catalog_uri": mask_url(self.catalog_uri),
            "warehouse": self.warehouse,
            "namespace": self.namespace,
            "metrics_port": self.metrics_port,
            "api_token": "***" if self.api_token else None,
        }

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read ``KAPPA_*`` variables; fall back to the local stack's recorded ports."""
        env = os.environ if env is None else env
        # Unset variables take the field defaults above: each default is written once.
        d: dict[str, Any] = {f.name: f.default for f in fields(cls)}
        home = Path(env.get("KAPPA_HOME", ".kappa")).resolve()
        stack = read_stack_state(home)
        bootstrap = env.get("KAPPA_BOOTSTRAP_SERVERS") or (
            f"127.0.0.1:{stack['broker']['port']}" if "broker" in stack else None
        )
        redis_url = env.get("KAPPA_REDIS_URL") or (
            f"redis://127.0.0.1:{stack['redis']['port']}/0" if "redis" in stack else None
        )
        kafka_config = {
            name[len(_KAFKA_PREFIX) :].lower().replace("_", "."): value
            for name, value in env.items()
            if name.startswith(_KAFKA_PREFIX)
        }
        recovery = env.get("KAPPA_RECOVERY_DIR")
        return cls(
            home=home,
            topic=env.get("KAPPA_TOPIC", d["topic"]),
            partitions=_int(env, "KAPPA_PARTITIONS", d["partitions"], minimum=1),
            bootstrap_servers=bootstrap,
            kafka_config=kafka_config,
            redis_url=redis_url,
            catalog_uri=env.get("KAPPA_CATALOG_URI") or f"sqlite:///{home / 'catalog.db'}",
            warehouse=env.get("KAPPA_WAREHOUSE") or f"file://{home / 'warehouse'}",
            namespace=env.get("KAPPA_NAMESPACE", d["namespace"]),
            redis_prefix=env.get("KAPPA_REDIS_PREFIX", d["redis_prefix"]),
            schema_registry_url=env.get("KAPPA_SCHEMA_REGISTRY_URL") or None,
            recovery_dir=Path(recovery) if recovery else home / "recovery",
            metrics_port=_int(env, "KAPPA_METRICS_PORT", d["metrics_port"]),
            allowed_lateness_s=_float(env, "KAPPA_ALLOWED_LATENESS_S", d["allowed_lateness_s"]),
            dedup_horizon_s=_float(env, "KAPPA_DEDUP_HORIZON_S", d["dedup_horizon_s"]),
            future_tolerance_s=_float(env, "KAPPA_FUTURE_TOLERANCE_S", d["future_tolerance_s"]),
            max_record_bytes=_int(env, "KAPPA_MAX_RECORD_BYTES", d["max_record_bytes"], minimum=64),
            flush_interval_s=_float(env, "KAPPA_FLUSH_INTERVAL_S", d["flush_interval_s"], minimum=0.05),
            commit_interval_s=_float(env, "KAPPA_COMMIT_INTERVAL_S", d["commit_interval_s"], minimum=0.1),
            max_buffer_rows=_int(env, "KAPPA_MAX_BUFFER_ROWS", d["max_buffer_rows"], minimum=1),
            file_bytes=_int(env, "KAPPA_FILE_BYTES", d["file_bytes"], minimum=1024),
            shards=_int(env, "KAPPA_SHARDS", d["shards"], minimum=1),
            batch_size=_int(env, "KAPPA_BATCH_SIZE", d["batch_size"], minimum=1),
            recovery=_bool(env, "KAPPA_RECOVERY", d["recovery"]),
            snapshot_interval_s=_float(env, "KAPPA_SNAPSHOT_INTERVAL_S", d["snapshot_interval_s"],
                                       minimum=0.1),
            backup_interval_s=_float(env, "KAPPA_BACKUP_INTERVAL_S", d["backup_interval_s"]),
            recovery_partitions=_int(env, "KAPPA_RECOVERY_PARTITIONS", d["recovery_partitions"], minimum=1),
            process_id=_int(env, "KAPPA_PROCESS_ID", 0) if env.get("KAPPA_PROCESS_ID") else None,
            addresses=tuple(a.strip() for a in env.get("KAPPA_ADDRESSES", "").split(";")
                            if a.strip()),
            workers_per_process=_int(env, "KAPPA_WORKERS_PER_PROCESS", d["workers_per_process"], minimum=1),
            health_stall_s=_float(env, "KAPPA_HEALTH_STALL_S", d["health_stall_s"], minimum=1.0),
            ready_max_lag=_int(env, "KAPPA_READY_MAX_LAG", d["ready_max_lag"]),
            views_module=env.get("KAPPA_VIEWS_MODULE") or None,
            api_token=env.get("KAPPA_API_TOKEN"),
            maintenance=_bool(env, "KAPPA_MAINTENANCE", d["maintenance"]),
            maintenance_interval_s=_float(env, "KAPPA_MAINTENANCE_INTERVAL_S", d["maintenance_interval_s"]),
            snapshot_retention_s=_float(env, "KAPPA_SNAPSHOT_RETENTION_S", d["snapshot_retention_s"]),
            min_snapshots=_int(env, "KAPPA_MIN_SNAPSHOTS", d["min_snapshots"], minimum=1),
            compact_files_over=_int(env, "KAPPA_COMPACT_FILES_OVER", d["compact_files_over"], minimum=1),
            target_file_bytes=_int(env, "KAPPA_TARGET_FILE_BYTES", d["target_file_bytes"],
                                   minimum=1024),
            orphan_age_s=_float(env, "KAPPA_ORPHAN_AGE_S", d["orphan_age_s"]),
            profiles=_bool(env, "KAPPA_PROFILES", d["profiles"]),
            profile_window_s=_int(env, "KAPPA_PROFILE_WINDOW_S", d["profile_window_s"], minimum=1),
            drift_reference=env.get("KAPPA_DRIFT_REFERENCE") or "trailing",
            drift_reference_windows=_int(env, "KAPPA_DRIFT_REFERENCE_WINDOWS",
                                         d["drift_reference_windows"], minimum=1),
        )


def mask_url(url: str | None) -> str | None:
    """Hide the password part of ``scheme://user:password@host``."""
    if not url or "@" not in url or "://" not in url:
        return url
    scheme, rest = url.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"
