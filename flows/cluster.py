"""``kappa run --processes N`` on one host: N Bytewax processes as one cluster.

Process 0 runs in this process; processes 1..N-1 are child ``kappa run``
processes with the same arguments and ``KAPPA_ADDRESSES``/``KAPPA_PROCESS_ID``
set, exactly as a multi-host deployment sets them. Kafka partitions, feature
shards and Iceberg tables (one committer each) spread over the processes; the
outputs are identical to a one-process run (tested).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson

from flows import lifecycle
from kappa.errors import KappaError
from kappa.procs import free_port
from kappa.settings import Settings


def run_cluster(settings: Settings, processes: int, argv: Sequence[str],
                run_here: Callable[[Settings], dict[str, Any]]) -> dict[str, Any]:
    """Start ``processes - 1`` children, run process 0 here, combine the summaries.

    Args:
        settings: This process's settings (no addresses yet).
        processes: Cluster size (>= 2).
        argv: The ``kappa`` arguments the children repeat (e.g. ``["run", "--bounded"]``).
        run_here: Runs process 0 with the given settings and returns its summary.

    Raises:
        KappaError: A child process failed (its last stderr line is the message).
    """
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(processes)]
    env = dict(os.environ, KAPPA_ADDRESSES=";".join(addresses))
    children = []
    for pid in range(1, processes):
        child_env = dict(env, KAPPA_PROCESS_ID=str(pid),
                         KAPPA_METRICS_PORT=str(settings.metrics_port + pid)
                         if settings.metrics_port else "0")
        children.append(subprocess.Popen([sys.executable, "-m", "kappa.cli", *argv],
                                         env=child_env, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE))

    def forward_stop() -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    lifecycle.on_stop(forward_stop)
    try:
        mine = run_here(replace(settings, addresses=tuple(addresses), process_id=0))
    except BaseException:
        for child in children:
            child.kill()
        raise
    summaries = [mine]
    for child in children:
        out, err = child.communicate()
        if child.returncode != 0:
            last = (err.decode(errors="replace").strip().splitlines() or ["(no output)"])[-1]
            msg = f"process {children.index(child) + 1} of the cluster failed: {last}"
            raise KappaError(msg)
        summaries.append(child_summary(out))
    return combine(summaries)


def child_summary(out: bytes) -> dict[str, Any]:
    """A child's JSON summary; Timely prints its connection retries on stdout before it."""
    start = 0 if out.startswith(b"{") else out.find(b"\n{") + 1
    return orjson.loads(out[start:])


def combine(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary for the cluster: counts added, the slowest process's time."""
    total = dict(summaries[0])
    for key in ("consumed", "valid", "quarantined_total", "cpu_seconds"):
        total[key] = sum(s.get(key) or 0 for s in summaries)
    reasons: dict[str, int] = {}
    for s in summaries:
        for reason, n in (s.get("quarantined") or {}).items():
            reasons[reason] = reasons.get(reason, 0) + n
    total["quarantined"] = reasons
    total["seconds"] = max(s.get("seconds") or 0 for s in summaries)
    total["processes"] = len(summaries)
    # Each process's own share, so an unbalanced cluster shows which process lags.
    total["per_process"] = [{key: s.get(key) for key in ("consumed", "seconds", "cpu_seconds")}
                            for s in summaries]
    total["events_per_s"] = (round(total["consumed"] / total["seconds"], 1)
                             if total["seconds"] else None)
    return total


LOOPBACK = ("127.0.0.1", "localhost", "::1")
PROC_TCP = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
LISTEN = "0A"
"""TCP state LISTEN in ``/proc/net/tcp``."""


def listening_ports(tables: Sequence[Path] = PROC_TCP) -> set[int] | None:
    """Local ports in LISTEN state on this host (``None``: the system does not say).

    Hand-written: psutil would be a new dependency for one read of ``/proc/net/tcp``.
    """
    ports: set[int] = set()
    found = False
    for table in tables:
        try:
            lines = table.read_text().splitlines()[1:]
        except OSError:
            continue
        found = True
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == LISTEN:
                ports.add(int(fields[1].rpartition(":")[2], 16))
    return ports if found else None


def wait_for_lower_processes(addresses: Sequence[str], process_id: int, *,
                             timeout_s: float = 60.0, poll_s: float = 0.01) -> None:
    """Block until every lower process of a same-host cluster listens on its address.

    Timely (under Bytewax) has process i connect to every process below i; a
    refused connect prints a line on stdout and sleeps a whole second before the
    next try. Process 0 of ``kappa run --processes N`` starts its children before
    its own imports, so a child is often ready first. Only listening sockets are
    looked at (never connected to: Timely would take a probe for a peer). Remote
    addresses, or a system without ``/proc/net/tcp``, are not waited for; after
    ``timeout_s`` Timely's own retries take over.
    """
    wanted = set()
    for address in addresses[:process_id]:
        host, _, port = address.rpartition(":")
        if host.strip("[]") not in LOOPBACK:
            return
        wanted.add(int(port))
    deadline = time.monotonic() + timeout_s
    while wanted and time.monotonic() < deadline:
        ports = listening_ports()
        if ports is None:
            return
        wanted -= ports
        if wanted:
            time.sleep(poll_s)
