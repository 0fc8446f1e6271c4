"""Real services for the deploy tests: a private PostgreSQL server and a TLS certificate authority.

Nothing here touches the machine's own PostgreSQL (port 5432) or its data: the server is
initialised into a fresh temporary directory and listens on a free port of 127.0.0.1.
A server that cannot start raises with its log tail — the tests fail, they never skip.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kappa.procs import free_port


def postgres_bin_dir() -> Path:
    """The newest Debian ``postgresql`` server binaries (``make postgres`` installs them)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name))
    if not found:
        path = shutil.which("initdb")
        if path is None:
            raise RuntimeError("PostgreSQL server binaries not found: run `make postgres` "
                               "(apt-get install postgresql) — the catalog tests need them")
        return Path(path).parent
    return Path(found[-1]).parent


@dataclass(frozen=True, kw_only=True)
class Postgres:
    """A running private server; ``uri(db)`` is a SQLAlchemy psycopg URI for database ``db``."""

    port: int
    datadir: Path
    bindir: Path
    user: str = "postgres"

    def uri(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.uri(name)


def _as_postgres(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: drop to the ``postgres`` user when we are root."""
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


def start_postgres() -> Postgres:
    """initdb into a new temp dir and start on a free port; raises with the log tail on failure."""
    bindir = postgres_bin_dir()
    root = Path(tempfile.mkdtemp(prefix="kappa-pg-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    datadir, log = root / "data", root / "server.log"
    init = subprocess.run(_as_postgres([str(bindir / "initdb"), "-D", str(datadir), "-U", "postgres",
                                        "--auth=trust", "-E", "UTF8", "--no-sync"]),
                          capture_output=True, text=True, check=False)
    if init.returncode != 0:
        raise RuntimeError(f"initdb failed: {init.stderr.strip()[-500:]}")
    port = free_port()
    start = subprocess.run(_as_postgres([
        str(bindir / "pg_ctl"), "-D", str(datadir), "-l", str(log), "-w", "-t", "30",
        "-o", f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
              " -c full_page_writes=off -c synchronous_commit=off", "start"]),
        capture_output=True, text=True, check=False)
    if start.returncode != 0:
        tail = log.read_text(errors="replace")[-800:] if log.exists() else start.stderr
        raise RuntimeError(f"PostgreSQL did not start on port {port}: {tail}")
    return Postgres(port=port, datadir=datadir, bindir=bindir)


def stop_postgres(pg: Postgres) -> None:
    """Fast shutdown, then remove the data directory."""
    subprocess.run(_as_postgres([str(pg.bindir / "pg_ctl"), "-D", str(pg.datadir), "-m", "fast",
                                 "-w", "stop"]), capture_output=True, check=False)
    shutil.rmtree(pg.datadir.parent, ignore_errors=True)


@dataclass(frozen=True, kw_only=True)
class Certs:
    """A throw-away CA and a server certificate for 127.0.0.1/localhost."""

    ca: Path
    cert: Path
    key: Path


def make_certs(directory: Path) -> Certs:
    """Generate the CA and server key pair with the openssl CLI."""
    if shutil.which("openssl") is None:
        raise RuntimeError("openssl not found: apt-get install openssl")
    d = directory
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    steps = [
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
         "ca.crt", "-days", "2", "-subj", "/CN=kappa-test-ca"],
        ["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
         "server.csr", "-subj", "/CN=localhost"],
        ["openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
         "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf"],
    ]
    for argv in steps:
        subprocess.run(argv, cwd=d, check=True, capture_output=True)
    (d / "server.key").chmod(0o600)
    return Certs(ca=d / "ca.crt", cert=d / "server.crt", key=d / "server.key")
