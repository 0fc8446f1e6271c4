"""What the online store holds per (view, entity), and how it is read back.

Key layout: ``{prefix}:{view}:{entity}`` (:func:`feature_key`) is a hash with fields

* ``we``  — window end, epoch ms (the version of the value),
* ``seq`` — update counter within that window (the final write is the largest),
* ``v``   — the JSON document served to readers (:func:`encode_row`).

The writer (``sinks.redis``) and every reader (:func:`read_features`, the
serving API through it) share this module, so the format lives in one place.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
import redis
from redis.exceptions import RedisError

from flows.records import FeatureRow
from flows.views import FeatureView
from kappa.errors import ServiceUnavailable


def wall_ms() -> int:
    """Wall clock, epoch ms."""
    return time.time_ns() // 1_000_000


def feature_key(prefix: str, view: str, entity: str) -> str:
    """The hash holding ``entity``'s latest vector of ``view``."""
    return f"{prefix}:{view}:{entity}"


class IsoCache(dict[int, str]):
    """Epoch ms → ``2024-01-01T00:00:00.000Z``; windows repeat, so formatting is cached.

    A dict with ``__missing__``: a hit is a C-level subscript, not a Python call
    (two per written row).
    """

    def __init__(self, limit: int = 65_536) -> None:
        super().__init__()
        self._limit = limit

    def __missing__(self, ms: int) -> str:
        if len(self) >= self._limit:
            self.clear()
        text = datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
        text = self[ms] = text.replace("+00:00", "Z")
        return text


def encode_row(row: FeatureRow, written_at_ms: int, iso: Mapping[int, str]) -> bytes:
    """The ``v`` document: ISO-8601 UTC window bounds for the API, plus the ms values."""
    return orjson.dumps({
        "view": row.view,
        "entity": row.entity,
        "window_start": iso[row.window_start_ms],
        "window_end": iso[row.window_end_ms],
        "window_start_ms": row.window_start_ms,
        "window_end_ms": row.window_end_ms,
        "final": row.final,
        "features": row.feature_map(),
        "written_at_ms": written_at_ms,
    })


def read_features(client: redis.Redis, prefix: str, view: FeatureView, entities: list[str],
                  now_ms: int | None = None) -> list[dict[str, Any]]:
    """Online lookup of ``entities`` in one round trip (pipelined ``HGET … v``).

    Returns one dict per entity, in order: ``view``, ``entity``, ``status``
    (``ok`` | ``missing``), ``features``, ``window_start``, ``window_end`` (ISO
    UTC), ``final`` and, when found, ``age_s`` (event-time age: now minus the
    window end) and ``written_at_ms``. A missing entity is a status, never an error.

    Raises:
        ServiceUnavailable: Redis did not answer.
    """
    now = wall_ms() if now_ms is None else now_ms
    try:
        pipe = client.pipeline(transaction=False)
        for entity in entities:
            pipe.hget(feature_key(prefix, view.name, entity), "v")
        raw = pipe.execute()
    except RedisError as exc:
        msg = f"cannot read features from Redis: {exc}".splitlines()[0]
        raise ServiceUnavailable(msg) from exc
    out: list[dict[str, Any]] = []
    for entity, value in zip(entities, raw, strict=True):
        if value is None:
            out.append({"view": view.name, "entity": entity, "status": "missing",
                        "features": None, "window_start": None, "window_end": None,
                        "final": None})
            continue
        doc = orjson.loads(value)
        out.append({
            "view": view.name, "entity": entity, "status": "ok",
            "features": doc["features"], "window_start": doc["window_start"],
            "window_end": doc["window_end"], "final": doc["final"],
            "age_s": (now - doc["window_end_ms"]) / 1000, "written_at_ms": doc["written_at_ms"],
        })
    return out
