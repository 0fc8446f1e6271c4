"""A scratch stack for benchmarks: its own broker, redis-server and catalog, removed after."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from kappa.generator import GeneratorConfig
from kappa.procs import free_port, start_broker, start_redis, stop_pid
from kappa.produce import produce
from kappa.settings import Settings


@contextmanager
def scratch_stack(topic: str = "bench") -> Iterator[Settings]:
    """Settings pointing at fresh services on free ports; everything is removed on exit."""
    home = Path(tempfile.mkdtemp(prefix="kappa-bench-"))
    broker = start_broker(free_port(), home / "broker.log")
    redis = start_redis(free_port(), home / "redis", home / "redis.log")
    try:
        yield Settings(home=home, topic=topic, bootstrap_servers=f"127.0.0.1:{broker.port}",
                       redis_url=f"redis://127.0.0.1:{redis.port}/0",
                       catalog_uri=f"sqlite:///{home / 'catalog.db'}",
                       warehouse=f"file://{home / 'warehouse'}", recovery_dir=home / "recovery")
    finally:
        stop_pid(broker.pid)
        stop_pid(redis.pid)
        shutil.rmtree(home, ignore_errors=True)


def produce_workload(settings: Settings, events: int, users: int,
                     items: int | None = None) -> dict[str, object]:
    """The seeded benchmark workload: about one event per user every 20 simulated seconds."""
    return produce(settings, GeneratorConfig(events=events, users=users,
                                             items=items or max(10, users // 10), seed=1,
                                             events_per_sim_second=users / 20))


def cli_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment for ``python -m kappa.cli`` subprocesses against ``settings``."""
    return dict(os.environ, **settings.to_env(), **extra)
