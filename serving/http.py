"""The HTTP server of the online feature API (``kappa serve``).

Choice of server: an ``asyncio.Protocol`` driven by **httptools** (the
llhttp-based parser that uvicorn itself uses, maintained by MagicStack) on
**uvloop** (libuv event loop, same maintainers), with no ASGI framework on top.
The API is five fixed routes of JSON, so a framework's routing, middleware and
ASGI message passing would be pure overhead: measured on this 2-core machine, a
bare ASGI hop alone costs more than the whole parse-route-respond path here.
httptools does the parts that are easy to get wrong (framing, chunked bodies,
keep-alive, pipelining); this module adds limits and ordering. Redis is
reached through :class:`serving.resp.AsyncRedis`: one auto-pipelined
connection, so a request costs one Redis round trip and never blocks the loop.
Without uvloop installed the stdlib loop is used (slower, same behaviour).

Guarantees:
    * Responses on a connection are sent in request order (HTTP/1.1 pipelining).
    * A body over ``max_body_bytes`` is a ``413`` and closes the connection;
      unparsable HTTP is a ``400`` and closes it; idle keep-alive connections
      are closed after ``idle_timeout_s``.
    * SIGTERM/SIGINT stop accepting, finish in-flight requests, then exit.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import httptools

from kappa.errors import ConfigError
from serving.app import LATENCY, FeatureApp, Request, Response, error, route_of, status_counter
from serving.resp import AsyncRedis

log = logging.getLogger(__name__)
_REASONS = {200: b"OK", 400: b"Bad Request", 401: b"Unauthorized", 404: b"Not Found",
            405: b"Method Not Allowed", 413: b"Payload Too Large", 500: b"Internal Server Error",
            503: b"Service Unavailable"}
_MAX_QUEUED = 64
_PROTOCOL_REQUEST = Request("-", "other", "", None, b"")


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """What ``kappa serve`` needs.

    Attributes:
        redis_url: Redis URL (AUTH/TLS included).
        prefix: Base Redis key prefix (the version pointer sits beside it).
        host / port: Listen address (``port=0``: any free port).
        token: Bearer token for ``/features`` and ``/views`` (``None``: open).
        max_batch: Most entities in one ``POST /features``.
        max_body_bytes: Largest accepted request body.
        idle_timeout_s: Keep-alive idle limit.
        redis_timeout_s: Per-lookup Redis timeout (then ``503``).
    """

    redis_url: str
    prefix: str = "kappa"
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    max_batch: int = 1000
    max_body_bytes: int = 1 << 20
    idle_timeout_s: float = 75.0
    redis_timeout_s: float = 2.0

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            msg = f"port must be in 0..65535, got {self.port}"
            raise ConfigError(msg)
        if self.max_batch < 1 or self.max_body_bytes < 1024:
            msg = "max_batch must be >= 1 and max_body_bytes >= 1024"
            raise ConfigError(msg)
        if self.token is not None and not self.token.strip():
            msg = "KAPPA_API_TOKEN is set but empty"
            raise ConfigError(msg)


class _Connection(asyncio.Protocol):
    """One client connection: parse, queue, answer in order."""

    def __init__(self, app: FeatureApp, server: Server) -> None:
        self._app = app
        self._server = server
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._queue: deque[tuple[Request, bool]] = deque()
        self._busy = False
        self._closing = False
        self._url = b""
        self._auth: bytes | None = None
        self._body: list[bytes] = []
        self._size = 0
        self._final: Response | None = None
        self.last_active = 0.0

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self.last_active = time.monotonic()
        self._server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._closing = True

    def data_received(self, data: bytes) -> None:
        self.last_active = time.monotonic()
        if self._final is not None or self._closing:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fatal(error(400, "bad_request", "protocol upgrades are not supported"))
        except httptools.HttpParserError as exc:
            self._fatal(error(400, "bad_request", f"malformed HTTP request: {exc}"))
        self._pump()

    # -- httptools callbacks
    def on_message_begin(self) -> None:
        self._url, self._auth, self._body, self._size = b"", None, [], 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == b"authorization":
            self._auth = value
        elif lower == b"content-length" and value.strip().isdigit() and self._final is None:
            limit = self._server.config.max_body_bytes
            if int(value) > limit:
                self._fatal(error(413, "body_too_large", f"request body over {limit} bytes"))

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        limit = self._server.config.max_body_bytes
        if self._size > limit:
            if self._final is None:
                self._fatal(error(413, "body_too_large", f"request body over {limit} bytes"))
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._final is not None:
            return
        try:
            url = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError:
            self._fatal(error(400, "bad_request", "malformed request URL"))
            return
        req = Request(self._parser.get_method().decode(), url.path.decode("latin-1"),
                      (url.query or b"").decode("latin-1"), self._auth, b"".join(self._body))
        self._queue.append((req, self._parser.should_keep_alive()))
        if len(self._queue) > _MAX_QUEUED and self._transport is not None:
            self._transport.pause_reading()

    # -- answering
    def _pump(self) -> None:
        while self._queue and not self._busy and not self._closing:
            req, keep_alive = self._queue.popleft()
            started = time.perf_counter()
            try:
                out = self._app.handle(req)
            except Exception:  # a bug, not bad input: answer 500 and keep serving
                log.exception("handler failed for %s %s", req.method, req.path)
                out = error(500, "internal", "internal server error")
            if isinstance(out, Response):
                self._send(req, out, keep_alive, started)
                continue
            self._busy = True
            task: asyncio.Future[Response] = asyncio.ensure_future(out)
            task.add_done_callback(functools.partial(self._done, req=req, keep_alive=keep_alive,
                                                     started=started))
        if self._busy or self._closing:
            return
        if self._final is not None and not self._queue:
            self._send(_PROTOCOL_REQUEST, self._final, False, time.perf_counter())
        elif not self._queue and self._transport is not None:
            self._transport.resume_reading()

    def _done(self, task: asyncio.Future[Response], *, req: Request, keep_alive: bool,
              started: float) -> None:
        self._busy = False
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("handler failed for %s %s", req.method, req.path, exc_info=exc)
            out = error(500, "internal", "internal server error")
        else:
            out = task.result()
        self._send(req, out, keep_alive, started)
        self._pump()

    def _send(self, req: Request, resp: Response, keep_alive: bool, started: float) -> None:
        if self._transport is None or self._closing:
            return
        keep_alive = keep_alive and not self._server.stopping
        head = [b"HTTP/1.1 ", str(resp.status).encode(), b" ", _REASONS.get(resp.status, b"Error"),
                b"\r\nContent-Type: ", resp.content_type,
                b"\r\nContent-Length: ", str(len(resp.body)).encode()]
        for name, value in resp.headers:
            head += (b"\r\n", name, b": ", value)
        if not keep_alive:
            head.append(b"\r\nConnection: close")
        head += (b"\r\n\r\n", resp.body)
        self._transport.write(b"".join(head))
        route = route_of(req.path)
        status_counter(route, resp.status).inc()
        LATENCY.labels(route).observe(time.perf_counter() - started)
        if not keep_alive:
            self._closing = True
            self._transport.close()

    def _fatal(self, resp: Response) -> None:
        """Answer a protocol-level error after the requests already parsed, then close."""
        self._final = resp
        if self._transport is not None:
            self._transport.pause_reading()

    def close_if_idle(self, now: float, limit: float) -> None:
        """Close a keep-alive connection idle for longer than ``limit`` seconds."""
        if not self._busy and not self._queue and now - self.last_active > limit:
            self._closing = True
            if self._transport is not None:
                self._transport.close()


class Server:
    """The running API: listener, Redis connection, open client connections."""

    def __init__(self, config: ServerConfig, app: FeatureApp | None = None) -> None:
        self.config = config
        self.redis = AsyncRedis(config.redis_url, timeout_s=config.redis_timeout_s)
        self.app = app or FeatureApp(self.redis, prefix=config.prefix, token=config.token,
                                     max_batch=config.max_batch)
        self.connections: set[_Connection] = set()
        self.stopping = False
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> int:
        """Listen; returns the bound port."""
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(lambda: _Connection(self.app, self),
                                                    self.config.host, self.config.port,
                                                    reuse_address=True, backlog=1024)
        except OSError as exc:
            msg = f"cannot listen on {self.config.host}:{self.config.port}: {exc}"
            raise ConfigError(msg) from exc
        loop.create_task(self._sweep())
        return int(self._server.sockets[0].getsockname()[1])

    async def _sweep(self) -> None:
        while not self.stopping:
            await asyncio.sleep(min(5.0, self.config.idle_timeout_s))
            now = time.monotonic()
            for conn in list(self.connections):
                conn.close_if_idle(now, self.config.idle_timeout_s)

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting, let in-flight requests finish (up to ``grace_s``), close."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(c._busy for c in self.connections):
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            conn.close_if_idle(float("inf"), 0.0)
        await self.redis.close()


async def _main(config: ServerConfig, ready: Any = None) -> None:
    server = Server(config)
    port = await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("serving on http://%s:%d", config.host, port)
    if ready is not None:
        ready(port)
    await stop.wait()
    await server.stop()


def serve(config: ServerConfig, ready: Any = None) -> None:
    """Run the API until SIGTERM/SIGINT (``ready(port)`` is called once listening)."""
    try:
        import uvloop
    except ImportError:  # optional speed-up; the stdlib loop works the same
        asyncio.run(_main(config, ready))
        return
    uvloop.run(_main(config, ready))
