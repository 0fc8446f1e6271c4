"""Online serving latency benchmark: ``python -m bench.serving [--entities N] [--seconds S]``.

Starts its own ``redis-server`` on a free port, writes ``--entities`` feature
vectors per view in the real key layout (through ``RedisFeatureWriter``), then
measures, printing one JSON document:

* ``redis_hgetall``: raw redis-py ``HGETALL`` of one key (the floor);
* ``client_single`` / ``client_batch100``: ``FeatureClient.get_online_features``;
* ``http_single`` / ``http_batch100``: ``GET /features/{view}/{id}`` and
  ``POST /features`` (100 entities) over one keep-alive loopback connection;
* ``http_throughput``: requests/s of single-entity GETs from ``--connections``
  concurrent keep-alive connections (an asyncio load loop in this process),
  with the server pinned to one core.

Latencies are client-observed, in milliseconds. Everything is loopback only,
bounded in count and time. Targets (2-core machine): client single p99 ≤ 0.5,
batch-100 p99 ≤ 2, HTTP single p99 ≤ 2 ms, ≥ 5k HTTP req/s on one core.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import redis

from flows.records import FeatureRow
from flows.views import DEFAULT_VIEWS
from kappa.procs import free_port, start_redis, stop_pid, wait_for_port
from serving.client import FeatureClient
from sinks.redis import RedisConfig, RedisFeatureWriter

VIEW = "user_activity_1m"


def _stats(samples: list[float], elapsed_s: float | None = None) -> dict[str, float]:
    s = sorted(samples)

    def pct(p: float) -> float:
        return round(s[min(len(s) - 1, int(p * len(s)))] * 1000, 4)

    out = {"n": len(s), "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99),
           "max_ms": round(s[-1] * 1000, 4)}
    if elapsed_s:
        out["per_s"] = round(len(s) / elapsed_s)
    return out


def _timed(fn: Callable[[], Any], count: int, budget_s: float) -> dict[str, float]:
    for _ in range(min(200, count)):
        fn()
    samples: list[float] = []
    deadline = time.perf_counter() + budget_s
    clock = time.perf_counter
    start = clock()
    while len(samples) < count and clock() < deadline:
        t0 = clock()
        fn()
        samples.append(clock() - t0)
    return _stats(samples, clock() - start)


def populate(url: str, entities: int) -> float:
    """Write ``entities`` vectors per view; returns seconds taken."""
    started = time.perf_counter()
    writer = RedisFeatureWriter(RedisConfig.for_views(url=url, views=DEFAULT_VIEWS))
    now = time.time_ns() // 1_000_000 // 60_000 * 60_000
    for view in DEFAULT_VIEWS:
        feats = dict.fromkeys(view.feature_names, 1)
        for lo in range(0, entities, 5000):
            writer.write([FeatureRow(view=view.name, entity=f"e{i:07d}", window_start_ms=now - 60_000,
                                     window_end_ms=now, features=feats, final=True, seq=1)
                          for i in range(lo, min(entities, lo + 5000))])
    writer.close()
    return time.perf_counter() - started


class _HttpConn:
    """A blocking keep-alive HTTP/1.1 client over one socket (enough for our own server)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def request(self, raw: bytes) -> bytes:
        self.sock.sendall(raw)
        while True:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end >= 0:
                head = self.buf[:head_end]
                length = int(head.split(b"Content-Length: ", 1)[1].split(b"\r\n", 1)[0])
                total = head_end + 4 + length
                if len(self.buf) >= total:
                    body, self.buf = self.buf[head_end + 4:total], self.buf[total:]
                    if not head.startswith(b"HTTP/1.1 200"):
                        raise RuntimeError(head.decode(errors="replace"))
                    return body
            self.buf += self.sock.recv(1 << 20)


async def _load(port: int, requests: list[bytes], connections: int, seconds: float,
                max_requests: int) -> dict[str, float]:
    done = 0
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker(seed: int) -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        rng = random.Random(seed)
        while done < max_requests and time.perf_counter() < deadline:
            t0 = time.perf_counter()
            writer.write(rng.choice(requests))
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.split(b"Content-Length: ", 1)[1].split(b"\r\n", 1)[0])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            done += 1
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(connections)))
    return {**_stats(latencies, time.perf_counter() - started), "connections": connections}


def _start_server(redis_url: str, cpu: int | None) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    code = ("from serving.http import ServerConfig, serve; "
            f"serve(ServerConfig(redis_url={redis_url!r}, port={port}))")
    argv = [sys.executable, "-c", code]
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        argv = ["taskset", "-c", str(cpu), *argv]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,  # noqa: S603 - our own interpreter
                            cwd=str(Path(__file__).resolve().parents[1]))
    wait_for_port(port, proc=proc, name="kappa serve")  # type: ignore[arg-type]
    return proc, port


def main() -> None:
    """Run the benchmark and print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=100_000, help="entities per view")
    parser.add_argument("--count", type=int, default=20_000, help="samples per latency series")
    parser.add_argument("--seconds", type=float, default=10.0, help="time cap per series")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="kappa-bench-"))
    redis_proc = start_redis(free_port(), workdir, workdir / "redis.log")
    url = f"redis://127.0.0.1:{redis_proc.port}/0"
    server = None
    try:
        out: dict[str, Any] = {"entities_per_view": args.entities, "cpus": os.cpu_count()}
        out["populate_s"] = round(populate(url, args.entities), 2)
        rng = random.Random(1)
        ids = [f"e{i:07d}" for i in range(args.entities)]
        raw = redis.Redis.from_url(url)
        out["redis_hgetall"] = _timed(lambda: raw.hgetall(f"kappa:{VIEW}:{rng.choice(ids)}"),
                                      args.count, args.seconds)
        with FeatureClient(redis_url=url) as fc:
            out["client_single"] = _timed(
                lambda: fc.get_online_features(VIEW, [rng.choice(ids)]), args.count, args.seconds)
            out["client_batch100"] = _timed(
                lambda: fc.get_online_features(VIEW, rng.sample(ids, 100)),
                args.count // 4, args.seconds)
        server, port = _start_server(url, cpu=0)
        conn = _HttpConn(port)
        out["http_single"] = _timed(lambda: conn.request(
            f"GET /features/{VIEW}/{rng.choice(ids)} HTTP/1.1\r\nHost: b\r\n\r\n".encode()),
            args.count, args.seconds)

        def batch() -> bytes:
            body = orjson.dumps({"features": VIEW, "entities": rng.sample(ids, 100)})
            return conn.request(b"POST /features HTTP/1.1\r\nHost: b\r\nContent-Length: "
                                + str(len(body)).encode() + b"\r\n\r\n" + body)

        out["http_batch100"] = _timed(batch, args.count // 4, args.seconds)
        requests = [f"GET /features/{VIEW}/{rng.choice(ids)} HTTP/1.1\r\nHost: b\r\n\r\n".encode()
                    for _ in range(10_000)]
        out["http_throughput"] = asyncio.run(_load(port, requests, args.connections,
                                                   args.seconds, args.count * 5))
        out["http_throughput"]["server_cpu"] = "pinned to cpu 0 (taskset)"
        out["targets_met"] = {
            "client_single_p99<=0.5ms": out["client_single"]["p99_ms"] <= 0.5,
            "client_batch100_p99<=2ms": out["client_batch100"]["p99_ms"] <= 2.0,
            "http_single_p99<=2ms": out["http_single"]["p99_ms"] <= 2.0,
            "http_rps>=5000": out["http_throughput"]["per_s"] >= 5000,
        }
        sys.stdout.write(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() + "\n")
    finally:
        if server is not None:
            server.terminate()
            server.wait(10)
        stop_pid(redis_proc.pid)


if __name__ == "__main__":
    main()
