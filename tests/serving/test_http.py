"""The HTTP API on a real socket and a real redis-server, including hostile input."""

from __future__ import annotations

import asyncio
import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import uvloop

from kappa.procs import free_port, wait_for_port
from serving.core import wall_ms
from serving.http import Server, ServerConfig
from tests.serving.conftest import row, write

ACT = "user_activity_1m"
FEATS = {"event_count": 3, "purchase_count": 1, "purchase_amount_sum": 9.5, "distinct_items": 2}
TOKEN = "s3cret-token"
T0 = wall_ms() // 60_000 * 60_000  # a recent window end: fresh, within every TTL


@pytest.fixture
def start_api(redis_url: str) -> Iterator[Callable[..., int]]:
    """Start a server in a background thread; returns its port."""
    stops: list[Callable[[], None]] = []

    def start(**kw: Any) -> int:
        config = ServerConfig(redis_url=redis_url, port=0, **kw)
        ready = threading.Event()
        box: dict[str, Any] = {}

        async def main() -> None:
            server = Server(config)
            box["port"] = await server.start()
            box["loop"] = asyncio.get_running_loop()
            box["stop"] = stop_event = asyncio.Event()
            ready.set()
            await stop_event.wait()
            await server.stop()

        thread = threading.Thread(target=uvloop.run, args=(main(),), daemon=True)
        thread.start()
        assert ready.wait(10)

        def stop() -> None:
            box["loop"].call_soon_threadsafe(box["stop"].set)
            thread.join(10)

        stops.append(stop)
        return int(box["port"])

    yield start
    for stop in stops:
        stop()


def call(port: int, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    parsed = orjson.loads(data) if resp.getheader("Content-Type") == "application/json" else data
    return resp.status, parsed, dict(resp.getheaders())


def test_single_batch_health_views_metrics(redis_url: str, start_api: Callable[..., int]) -> None:
    write(redis_url, [row(ACT, "u1", T0, **FEATS), row(ACT, "u/2", T0, **FEATS)])
    port = start_api()
    status, doc, _ = call(port, "GET", f"/features/{ACT}/u1")
    assert status == 200
    assert doc["status"] == "ok" and doc["features"] == FEATS and doc["version"] == "live"
    assert doc["entity"] == "u1" and doc["final"] is True
    status, doc, _ = call(port, "GET", f"/features/{ACT}/u%2F2?features=event_count&max_age_s=1")
    assert status == 200 and doc["entity"] == "u/2"
    assert doc["features"] == {"event_count": 3}
    assert doc["status"] == ("stale" if doc["age_s"] > 1 else "ok")
    status, doc, _ = call(port, "GET", f"/features/{ACT}/ghost")
    assert status == 200 and doc["status"] == "missing"

    body = orjson.dumps({"features": [f"{ACT}:event_count"], "entities": ["u1", "ghost"]})
    status, doc, _ = call(port, "POST", "/features", body)
    assert status == 200
    assert [r["status"] for r in doc["rows"]] == ["ok", "missing"]
    assert doc["rows"][0]["views"][ACT]["features"] == {"event_count": 3}

    status, doc, _ = call(port, "GET", "/health")
    assert (status, doc["status"], doc["version"]) == (200, "ok", "live")
    status, doc, _ = call(port, "GET", "/views")
    assert status == 200 and doc["schema"]["version"] >= 1
    by_name = {v["name"]: v for v in doc["views"]}
    assert by_name["user_spend_1h"]["window"] == {"type": "sliding", "size_s": 3600, "hop_s": 300}
    assert by_name[ACT]["ttl_s"] == 86_400
    assert [f["name"] for f in by_name[ACT]["features"]] == list(FEATS)
    status, text, _ = call(port, "GET", "/metrics")
    assert status == 200 and b"kappa_serving_requests_total" in text


BAD: list[tuple[str, str, bytes | None, int, str]] = [
    ("POST", "/features", b"{not json", 400, "bad_json"),
    ("POST", "/features", b"[1, 2]", 400, "bad_request"),
    ("POST", "/features", b'{"features": "nope", "entities": ["u1"]}', 400, "bad_request"),
    ("POST", "/features", b'{"features": ["user_activity_1m:nope"], "entities": ["u1"]}', 400,
     "bad_request"),
    ("POST", "/features", b'{"features": "user_activity_1m", "entities": "u1"}', 400, "bad_request"),
    ("POST", "/features", b'{"features": "user_activity_1m", "entities": [1]}', 400, "bad_request"),
    ("POST", "/features", b'{"features": "user_activity_1m", "entities": ["u"], "max_age_s": -1}',
     400, "bad_request"),
    ("POST", "/features", b'{"features": "user_activity_1m", "entities": ["u"], "x": 1}', 400,
     "bad_request"),
    ("POST", "/features", orjson.dumps({"features": ACT, "entities": ["u"] * 1001}), 413,
     "batch_too_large"),
    ("POST", "/features", b"\xff\xfe", 400, "bad_json"),
    ("GET", "/features/nope/u1", None, 404, "unknown_view"),
    ("GET", f"/features/{ACT}/u1?features=nope", None, 400, "bad_request"),
    ("GET", f"/features/{ACT}/u1?max_age_s=abc", None, 400, "bad_request"),
    ("GET", f"/features/{ACT}/u1/extra", None, 404, "not_found"),
    ("GET", "/features", None, 405, "method_not_allowed"),
    ("DELETE", f"/features/{ACT}/u1", None, 405, "method_not_allowed"),
    ("GET", "/nowhere", None, 404, "not_found"),
]


@pytest.mark.parametrize(("method", "path", "body", "want", "code"), BAD,
                         ids=[f"{m} {p[:40]} {w}" for m, p, _, w, _ in BAD])
def test_bad_input_is_4xx_with_json(start_api: Callable[..., int], method: str, path: str,
                                    body: bytes | None, want: int, code: str) -> None:
    port = start_api()
    status, doc, _ = call(port, method, path, body)
    assert status == want, doc
    assert doc["error"] == code and doc["message"]


def test_bearer_token(start_api: Callable[..., int], redis_url: str) -> None:
    write(redis_url, [row(ACT, "u1", T0, **FEATS)])
    port = start_api(token=TOKEN)
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        for method, path in (("GET", f"/features/{ACT}/u1"), ("GET", "/views"),
                             ("POST", "/features")):
            status, doc, hdrs = call(port, method, path, b"{}", headers)
            assert (status, doc["error"]) == (401, "unauthorized")
            assert hdrs["WWW-Authenticate"] == "Bearer"
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert call(port, "GET", f"/features/{ACT}/u1", headers=good)[0] == 200
    assert call(port, "GET", "/health")[0] == 200  # probes need no token
    assert call(port, "GET", "/metrics")[0] == 200


def raw_exchange(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(payload)
        chunks = []
        while True:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


def test_protocol_abuse_is_4xx_and_pipelining_keeps_order(start_api: Callable[..., int],
                                                          redis_url: str) -> None:
    write(redis_url, [row(ACT, "u1", T0, **FEATS)])
    port = start_api(max_body_bytes=4096)
    out = raw_exchange(port, b"GARBAGE\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 ") and b'"error":"bad_request"' in out
    out = raw_exchange(port, b"POST /features HTTP/1.1\r\nHost: x\r\nContent-Length: 999999\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 413 ")
    big = b"x" * 5000
    out = raw_exchange(port, b"POST /features HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                       + hex(len(big))[2:].encode() + b"\r\n" + big + b"\r\n0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 413 ")
    pipelined = (f"GET /features/{ACT}/u1 HTTP/1.1\r\nHost: x\r\n\r\n"
                 "GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
                 f"GET /features/{ACT}/ghost HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    out = raw_exchange(port, pipelined.encode())
    assert out.count(b"HTTP/1.1 200 ") == 3
    first, second, third = out.index(b'"entity":"u1"'), out.index(b'"redis":"ok"'), out.index(b"ghost")
    assert first < second < third
    assert not any(s >= 500 for s in (call(port, "GET", "/health")[0],))


def test_redis_down_is_503_not_500(tmp_path: Any) -> None:
    async def main() -> tuple[int, int]:
        server = Server(ServerConfig(redis_url=f"redis://127.0.0.1:{free_port()}/0", port=0,
                                     redis_timeout_s=0.5))
        port = await server.start()
        loop = asyncio.get_running_loop()
        single = await loop.run_in_executor(None, call, port, "GET", f"/features/{ACT}/u1")
        health = await loop.run_in_executor(None, call, port, "GET", "/health")
        await server.stop()
        return single[0], health[0]

    assert asyncio.run(main()) == (503, 503)


def test_serve_command_runs_and_stops_on_sigterm(redis_url: str, tmp_path: Any) -> None:
    port = free_port()
    env = dict(os.environ, KAPPA_REDIS_URL=redis_url, KAPPA_HOME=str(tmp_path),
               KAPPA_API_TOKEN=TOKEN)
    proc = subprocess.Popen([sys.executable, "-m", "kappa.cli", "serve", "--port", str(port)],
                            env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(port, proc=proc, name="kappa serve")  # type: ignore[arg-type]
        assert call(port, "GET", "/views")[0] == 401
        assert call(port, "GET", "/views", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    assert "serving on" in err
    bad = subprocess.run([sys.executable, "-m", "kappa.cli", "serve", "--port", "70000"], env=env,
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and bad.stderr.startswith("kappa: error:")
