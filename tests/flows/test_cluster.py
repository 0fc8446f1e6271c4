"""Same-host cluster start-up: children wait for lower processes to listen, and their
summaries are read even after Timely's retry lines."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flows.cluster import child_summary, listening_ports, wait_for_lower_processes
from kappa.procs import free_port


@contextmanager
def _listener(port: int) -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen()
    try:
        yield sock
    finally:
        sock.close()


def test_listening_ports_sees_listeners_only() -> None:
    bound_only = socket.socket()
    bound_only.bind(("127.0.0.1", 0))
    try:
        port = free_port()
        with _listener(port):
            ports = listening_ports()
            assert ports is not None
            assert port in ports
            assert bound_only.getsockname()[1] not in ports
        ports = listening_ports()
        assert ports is not None
        assert port not in ports
    finally:
        bound_only.close()


def test_wait_returns_once_the_lower_process_listens() -> None:
    port = free_port()
    ready = threading.Event()

    def listen_later() -> None:
        time.sleep(0.3)
        with _listener(port):
            ready.set()
            time.sleep(1.0)

    thread = threading.Thread(target=listen_later)
    thread.start()
    try:
        started = time.monotonic()
        wait_for_lower_processes([f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}"], 1,
                                 timeout_s=10)
        waited = time.monotonic() - started
        assert ready.is_set()
        assert 0.25 < waited < 1.0
    finally:
        thread.join()


def test_wait_gives_up_after_the_timeout_and_skips_remote_hosts() -> None:
    started = time.monotonic()
    wait_for_lower_processes([f"127.0.0.1:{free_port()}", "127.0.0.1:1"], 1, timeout_s=0.3)
    assert 0.25 < time.monotonic() - started < 2.0
    started = time.monotonic()
    wait_for_lower_processes(["10.1.2.3:2101", "127.0.0.1:1"], 1, timeout_s=5)
    wait_for_lower_processes([f"127.0.0.1:{free_port()}"], 0, timeout_s=5)
    assert time.monotonic() - started < 0.2


def test_listening_ports_without_proc_is_none(tmp_path: Path) -> None:
    assert listening_ports([tmp_path / "missing"]) is None


def test_child_summary_skips_timely_retry_lines() -> None:
    out = (b"worker 1:\terror connecting to worker 0: Connection refused (os error 111); "
           b"retrying\n{\n  \"consumed\": 5\n}\n")
    assert child_summary(out) == {"consumed": 5}
    assert child_summary(b'{"consumed": 7}\n') == {"consumed": 7}
