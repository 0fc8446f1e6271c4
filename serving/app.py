"""Routes of the online feature API (transport-free: request in, response out).

Routes (JSON in and out, orjson):

* ``GET /features/{view}/{entity}[?features=a,b&max_age_s=S]`` — one entity.
* ``POST /features`` — a batch: ``{"features": "view" | ["view:feature", ...],
  "entities": [...], "max_age_s": S}`` (at most ``max_batch`` entities).
* ``GET /views`` — the registry: views, entity, features, window, TTL and the
  event schema version.
* ``GET /health`` — ``200`` when Redis answers (with the current version),
  ``503`` otherwise. ``GET /metrics`` — Prometheus text format.

With a token configured, ``/features`` and ``/views`` need
``Authorization: Bearer <token>`` (compared in constant time); ``/health``
and ``/metrics`` stay open for probes and scrapers.

Guarantees: bad input of any kind (bad JSON, wrong shape, unknown view or
feature, oversize batch, missing/wrong token, unknown route or method) is a
4xx with a JSON body ``{"error": code, "message": text}``; a Redis outage is a
``503``; only a bug is a ``500``.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from flows.views import DEFAULT_VIEWS, FeatureView, Session, Sliding, Tumbling, views_by_name
from kappa.errors import KappaError, ServiceUnavailable
from replay.versions import DEFAULT_VERSION, Version
from serving.core import (
    LOOKUP_SCRIPT,
    BadLookup,
    LookupPlan,
    OnlineResult,
    check_entities,
    decode_reply,
    lookup_keys,
    make_plan,
    script_args,
    wall_ms,
)
from serving.resp import AsyncRedis, RedisReplyError

JSON = b"application/json"
REQUESTS = Counter("kappa_serving_requests", "HTTP requests served.", ["route", "status"])
LATENCY = Histogram("kappa_serving_request_seconds", "HTTP request latency (server side).",
                    ["route"], buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05,
                                        0.1, 0.25, 1.0))
ENTITIES = Counter("kappa_serving_entities", "Entities looked up, by status.", ["status"])


@dataclass(frozen=True, slots=True)
class Request:
    """One parsed HTTP request."""

    method: str
    path: str
    query: str
    authorization: bytes | None
    body: bytes


@dataclass(frozen=True, slots=True)
class Response:
    """One HTTP response (body already encoded)."""

    status: int
    body: bytes
    content_type: bytes = JSON
    headers: tuple[tuple[bytes, bytes], ...] = ()


def error(status: int, code: str, message: str,
          headers: tuple[tuple[bytes, bytes], ...] = ()) -> Response:
    """A JSON error response: ``{"error": code, "message": message}``."""
    return Response(status, orjson.dumps({"error": code, "message": message}), headers=headers)


def _window(view: FeatureView) -> dict[str, Any]:
    w = view.window
    if isinstance(w, Tumbling):
        return {"type": "tumbling", "size_s": w.size_s}
    if isinstance(w, Sliding):
        return {"type": "sliding", "size_s": w.size_s, "hop_s": w.hop_s}
    assert isinstance(w, Session)
    return {"type": "session", "gap_s": w.gap_s}


def registry_document(views: Sequence[FeatureView]) -> dict[str, Any]:
    """The ``/views`` document."""
    from schemas.registry import FileRegistry

    latest = FileRegistry().latest()
    return {
        "schema": {"subject": latest.subject, "version": latest.version, "id": latest.id},
        "views": [{"name": v.name, "entity": v.entity, "window": _window(v), "ttl_s": v.ttl_s,
                   "description": v.description, "table": v.table,
                   "features": [{"name": f.name, "type": f.dtype, "nullable": f.nullable}
                                for f in v.features]} for v in views],
    }


class FeatureApp:
    """Routing and handlers; one instance per server process.

    Args:
        redis: The async Redis connection.
        prefix: Base key prefix (the version pointer is ``{prefix}@current``).
        token: Bearer token; ``None`` disables auth.
        max_batch: Most entities per request.
        views: The feature-view registry.
    """

    def __init__(self, redis: AsyncRedis, *, prefix: str, token: str | None = None,
                 max_batch: int = 1000, views: Sequence[FeatureView] = DEFAULT_VIEWS) -> None:
        self._redis = redis
        self._prefix = prefix
        self._keys = lookup_keys(prefix)
        self._auth = f"Bearer {token}".encode() if token else None
        self.max_batch = max_batch
        self._views = views_by_name(tuple(views))
        self._views_body = orjson.dumps(registry_document(views))
        self._sha = hashlib.sha1(LOOKUP_SCRIPT.encode()).hexdigest()
        self._plans: dict[str, LookupPlan] = {}

    def handle(self, req: Request) -> Response | Awaitable[Response]:
        """A response now (no I/O needed) or an awaitable of one (Redis lookups)."""
        path = req.path
        if path == "/health":
            return self._health() if req.method == "GET" else _not_allowed("GET")
        if path == "/metrics":
            if req.method != "GET":
                return _not_allowed("GET")
            return Response(200, generate_latest(), CONTENT_TYPE_LATEST.encode())
        if path == "/views" or path == "/features" or path.startswith("/features/"):
            if self._auth is not None and not hmac.compare_digest(
                    req.authorization or b"", self._auth):
                return error(401, "unauthorized", "missing or wrong bearer token",
                             ((b"WWW-Authenticate", b"Bearer"),))
            if path == "/views":
                return Response(200, self._views_body) if req.method == "GET" else _not_allowed("GET")
            if path == "/features":
                return self._batch(req) if req.method == "POST" else _not_allowed("POST")
            return self._single(req) if req.method == "GET" else _not_allowed("GET")
        return error(404, "not_found", f"no route {path!r}; see GET /views, /features/{{view}}/{{id}}")

    async def lookup(self, plan: LookupPlan, entities: list[str],
                     max_age_s: float | None) -> OnlineResult:
        """One ``EVALSHA`` for the whole batch (loads the script once on ``NOSCRIPT``)."""
        args = script_args(plan, entities, self._prefix)
        try:
            reply = await self._redis.execute("EVALSHA", self._sha, 1, *self._keys, *args)
        except RedisReplyError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
            await self._redis.execute("SCRIPT", "LOAD", LOOKUP_SCRIPT)
            reply = await self._redis.execute("EVALSHA", self._sha, 1, *self._keys, *args)
        result = decode_reply(plan, entities, reply, now_ms=wall_ms(), max_age_s=max_age_s)
        for row in result.rows:
            ENTITIES.labels(row.status).inc()
        return result

    def _plan(self, features: str | list[str]) -> LookupPlan:
        key = features if isinstance(features, str) else "\x00".join(map(str, features))
        plan = self._plans.get(key)
        if plan is None:
            plan = make_plan(features, self._views)
            if len(self._plans) < 10_000:
                self._plans[key] = plan
        return plan

    def _single(self, req: Request) -> Response | Awaitable[Response]:
        parts = req.path.split("/")
        if len(parts) != 4 or not parts[2] or not parts[3]:
            return error(404, "not_found", "expected /features/{view}/{entity}")
        view, entity = unquote(parts[2]), unquote(parts[3])
        if view not in self._views:
            return error(404, "unknown_view", f"unknown view {view!r}; known: {', '.join(self._views)}")
        try:
            query = parse_qs(req.query, strict_parsing=False) if req.query else {}
            names = query.get("features", [""])[-1]
            features = [f"{view}:{n}" for n in names.split(",")] if names else view
            plan = self._plan(features)
            entities = check_entities([entity])
            max_age = _max_age(query.get("max_age_s", [None])[-1])
        except BadLookup as exc:
            return error(400, "bad_request", str(exc))
        return self._single_async(plan, entities, max_age)

    async def _single_async(self, plan: LookupPlan, entities: list[str],
                            max_age: float | None) -> Response:
        try:
            result = await self.lookup(plan, entities, max_age)
        except ServiceUnavailable as exc:
            return error(503, "unavailable", str(exc))
        row = result.rows[0]
        value = next(iter(row.views.values()))
        doc = {"version": result.version, "view": plan.views[0][0].name, "entity": row.entity,
               **value.to_dict()}
        return Response(200, orjson.dumps(doc))

    def _batch(self, req: Request) -> Response | Awaitable[Response]:
        try:
            body = orjson.loads(req.body)
        except orjson.JSONDecodeError as exc:
            return error(400, "bad_json", f"request body is not valid JSON: {exc}")
        if not isinstance(body, dict):
            return error(400, "bad_request", "body must be a JSON object with features and entities")
        unknown = set(body) - {"features", "entities", "max_age_s"}
        if unknown:
            return error(400, "bad_request", f"unknown fields {sorted(unknown)}")
        features, entities = body.get("features"), body.get("entities")
        if not isinstance(features, str | list) or not isinstance(entities, list):
            return error(400, "bad_request",
                         "need 'features' (a view name or list of view:feature) and 'entities' (a list)")
        if len(entities) > self.max_batch:
            return error(413, "batch_too_large",
                         f"too many entities: {len(entities)} > {self.max_batch} per request")
        try:
            plan = self._plan(features)
            ids = check_entities(entities, self.max_batch)
            max_age = _max_age(body.get("max_age_s"))
        except BadLookup as exc:
            return error(400, "bad_request", str(exc))
        return self._batch_async(plan, ids, max_age)

    async def _batch_async(self, plan: LookupPlan, entities: list[str],
                           max_age: float | None) -> Response:
        try:
            result = await self.lookup(plan, entities, max_age) if entities else OnlineResult(
                version=await self._version(), features=plan.refs)
        except ServiceUnavailable as exc:
            return error(503, "unavailable", str(exc))
        return Response(200, orjson.dumps(result.to_dict()))

    async def _version(self) -> str:
        reply = await self._redis.execute("GET", self._keys[0])
        return Version.from_json(reply).name if reply else DEFAULT_VERSION

    async def _health(self) -> Response:
        try:
            version = await self._version()
        except (ServiceUnavailable, KappaError) as exc:
            return Response(503, orjson.dumps({"status": "unavailable", "redis": str(exc)}))
        return Response(200, orjson.dumps({"status": "ok", "redis": "ok", "version": version}))


def _max_age(raw: Any) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(raw, bool) or not math.isfinite(value) or value < 0:
        msg = f"max_age_s must be a number >= 0, got {raw!r}"
        raise BadLookup(msg)
    return value


def _not_allowed(allow: str) -> Response:
    return error(405, "method_not_allowed", f"use {allow}", ((b"Allow", allow.encode()),))


def status_counter(route: str, status: int) -> Any:
    """The cached ``kappa_serving_requests`` child for a route and status."""
    return REQUESTS.labels(route, str(status))


def route_of(path: str) -> str:
    """Low-cardinality route label of a path."""
    if path.startswith("/features/"):
        return "/features/{view}/{entity}"
    return path if path in ("/features", "/views", "/health", "/metrics") else "other"

