"""Real services for the whole suite: a Tansu broker and a redis-server on free ports.

A service that cannot start fails the tests that need it, loudly; nothing skips.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from kappa.procs import Service, free_port, start_broker, start_redis, stop_pid
from kappa.settings import Settings


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One Tansu broker for the session (topics are unique per test)."""
    logdir = tmp_path_factory.mktemp("broker")
    service = start_broker(free_port(), logdir / "broker.log")
    yield service
    stop_pid(service.pid)


@pytest.fixture(scope="session")
def bootstrap(broker: Service) -> str:
    return f"127.0.0.1:{broker.port}"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    workdir = tmp_path_factory.mktemp("redis")
    service = start_redis(free_port(), workdir, workdir / "redis.log")
    yield service
    stop_pid(service.pid)


@pytest.fixture
def redis_url(redis_server: Service) -> Iterator[str]:
    """A clean Redis database for each test."""
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.close()


@pytest.fixture
def topic() -> str:
    return f"t_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings(tmp_path: Path, bootstrap: str, redis_url: str, topic: str) -> Settings:
    """Settings pointing at the session services and a fresh catalog/warehouse."""
    return Settings(
        home=tmp_path,
        topic=topic,
        bootstrap_servers=bootstrap,
        redis_url=redis_url,
        catalog_uri=f"sqlite:///{tmp_path / 'catalog.db'}",
        warehouse=f"file://{tmp_path / 'warehouse'}",
        recovery_dir=None,
        metrics_port=0,
        commit_interval_s=5.0,
    )
