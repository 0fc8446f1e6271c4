"""Helpers for the read-path tests: write feature rows the way the flow does."""

from __future__ import annotations

from typing import Any

import redis

from flows.records import FeatureRow
from flows.views import DEFAULT_VIEWS
from sinks.redis import RedisConfig, RedisFeatureWriter

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z, epoch ms


def row(view: str, entity: str, end_ms: int, *, start_ms: int | None = None, final: bool = True,
        seq: int = 1, **features: Any) -> FeatureRow:
    return FeatureRow(view=view, entity=entity,
                      window_start_ms=end_ms - 60_000 if start_ms is None else start_ms,
                      window_end_ms=end_ms, features=features, final=final, seq=seq)


def write(url: str, rows: list[FeatureRow], prefix: str = "kappa") -> None:
    client = redis.Redis.from_url(url)
    writer = RedisFeatureWriter(RedisConfig.for_views(url=url, views=DEFAULT_VIEWS, prefix=prefix),
                                client)
    writer.write(rows)
    client.close()
