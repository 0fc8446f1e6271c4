"""Fixtures of the deploy tests: a private PostgreSQL, TLS material, the repo's deploy/ dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.services import Certs, Postgres, make_certs, start_postgres, stop_postgres

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """One private PostgreSQL server for the session (a fresh database per test)."""
    pg = start_postgres()
    yield pg
    stop_postgres(pg)


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("tls"))
