"""Liveness, readiness and metrics on the flow's metrics port.

One small stdlib HTTP server (a daemon thread) answers:

* ``GET /metrics`` — Prometheus text format of the process-global registry.
* ``GET /health`` — liveness: ``200`` while the dataflow loop has called
  :func:`beat` within ``stall_after_s``; ``503`` once it stalls (a wedged worker
  thread; an orchestrator should restart the process).
* ``GET /ready`` — readiness: ``200`` when alive and every source partition this
  process reads has reported a lag (:func:`set_lag`) of at most ``max_lag``
  records; ``503`` before the first report and while any partition is behind.

Bodies of ``/health`` and ``/ready`` are JSON with the reason, so a probe's
failure explains itself. The server never touches the dataflow: the flow
pushes facts (beats, lags) into a lock-protected :class:`HealthState`, and
requests only read it, so a slow scraper cannot slow the flow down.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Gauge, generate_latest

CONSUMER_LAG = Gauge("kappa_consumer_lag_records",
                     "Records between the source's next offset and the partition's high watermark.",
                     ["topic", "partition"])
"""Per-partition consumer lag; set by :func:`set_lag` (the source knows its offset)."""


@dataclass(frozen=True, kw_only=True)
class HealthConfig:
    """Thresholds of the probes.

    Attributes:
        stall_after_s: ``/health`` fails when no :func:`beat` came for this long.
        max_lag: ``/ready`` needs every reported partition's lag at or below this.
    """

    stall_after_s: float = 120.0
    max_lag: int = 10_000

    def __post_init__(self) -> None:
        if self.stall_after_s <= 0:
            msg = f"stall_after_s must be > 0, got {self.stall_after_s}"
            raise ValueError(msg)
        if self.max_lag < 0:
            msg = f"max_lag must be >= 0, got {self.max_lag}"
            raise ValueError(msg)


class HealthState:
    """What the probes report; safe to update from any worker thread.

    Guarantees: :meth:`beat` and :meth:`set_lag` are O(1) under one lock and
    never block on I/O; readers see a consistent snapshot.
    """

    def __init__(self, config: HealthConfig | None = None, *,
                 now_getter: Callable[[], float] = time.monotonic) -> None:
        self.config = config or HealthConfig()
        self._now = now_getter
        self._lock = threading.Lock()
        self._started = now_getter()
        self._last_beat: float | None = None
        self._lags: dict[tuple[str, int], int] = {}

    def configure(self, config: HealthConfig) -> None:
        """Replace the thresholds (the run applies its settings at start)."""
        with self._lock:
            self.config = config

    def beat(self) -> None:
        """Record that the dataflow loop made progress (call it from every poll)."""
        now = self._now()
        with self._lock:
            self._last_beat = now

    def set_lag(self, partition: int, lag: int, topic: str = "") -> None:
        """Record a source partition's lag in records (negative values count as 0)."""
        lag = max(0, int(lag))
        with self._lock:
            self._lags[(topic, int(partition))] = lag
        CONSUMER_LAG.labels(topic, str(partition)).set(lag)

    def reset(self) -> None:
        """Forget beats and lags (a new run in the same process)."""
        with self._lock:
            self._started = self._now()
            self._last_beat = None
            self._lags.clear()

    def liveness(self) -> tuple[bool, dict[str, Any]]:
        """``(alive, detail)``: alive while the last beat (or start) is recent enough."""
        now = self._now()
        with self._lock:
            since = now - (self._last_beat if self._last_beat is not None else self._started)
            limit = self.config.stall_after_s
            beaten = self._last_beat is not None
        alive = since <= limit
        detail: dict[str, Any] = {"status": "ok" if alive else "stalled",
                                  "seconds_since_progress": round(since, 3),
                                  "stall_after_s": limit, "progress_seen": beaten}
        return alive, detail

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """``(ready, detail)``: alive, at least one lag reported, every lag within bounds."""
        alive, live = self.liveness()
        with self._lock:
            lags = dict(self._lags)
            limit = self.config.max_lag
        behind = {f"{t}[{p}]" if t else str(p): lag for (t, p), lag in sorted(lags.items())
                  if lag > limit}
        if not alive:
            status = "stalled"
        elif not lags:
            status = "no partition has reported its lag yet"
        elif behind:
            status = "catching up"
        else:
            status = "ok"
        detail = {"status": status, "max_lag": limit,
                  "lag": {f"{t}[{p}]" if t else str(p): lag for (t, p), lag in sorted(lags.items())},
                  "behind": behind, "alive": live}
        return status == "ok", detail


STATE = HealthState()
"""The process's health state: the flow updates it, the server reads it."""


def beat() -> None:
    """Record progress of the dataflow loop in :data:`STATE`."""
    STATE.beat()


def set_lag(partition: int, lag: int, topic: str = "") -> None:
    """Record a partition's lag in :data:`STATE` (and the lag gauge)."""
    STATE.set_lag(partition, lag, topic)


def _handler(state: HealthState, registry: CollectorRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "kappa-health"

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path in ("/health", "/healthz", "/livez"):
                ok, detail = state.liveness()
                self._send(200 if ok else 503, orjson.dumps(detail), "application/json")
            elif path in ("/ready", "/readyz"):
                ok, detail = state.readiness()
                self._send(200 if ok else 503, orjson.dumps(detail), "application/json")
            else:
                self._send(404, b'{"error":"not found"}', "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            """Probes every few seconds would flood the log: stay quiet."""

    return Handler


class HealthServer:
    """The running server; :meth:`close` stops it (tests), otherwise it lives with the process."""

    def __init__(self, httpd: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread

    @property
    def port(self) -> int:
        """The bound port (useful when started on port 0)."""
        return int(self._httpd.server_address[1])

    def close(self) -> None:
        """Stop serving and release the port."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def serve(port: int, *, host: str = "0.0.0.0", state: HealthState | None = None,  # noqa: S104
          registry: CollectorRegistry = REGISTRY) -> HealthServer:
    """Serve ``/metrics``, ``/health`` and ``/ready`` on ``host:port`` in a daemon thread.

    Replaces ``prometheus_client.start_http_server`` for the flow: same
    ``/metrics`` body, plus the probes. ``port=0`` binds an ephemeral port.

    Raises:
        OSError: The port is taken.
    """
    httpd = ThreadingHTTPServer((host, port), _handler(state or STATE, registry))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, name="kappa-health", daemon=True)
    thread.start()
    return HealthServer(httpd, thread)
