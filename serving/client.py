"""``FeatureClient``: online lookups for model inference and point-in-time training sets.

Example::

    from serving.client import FeatureClient

    with FeatureClient.from_env() as fc:
        res = fc.get_online_features(["user_spend_1h:purchase_amount_sum"], ["u0000072"])
        res.rows[0].status                    # "ok" | "missing" | "stale"
        res.rows[0].values                    # {"user_spend_1h:purchase_amount_sum": 42.0}
        training = fc.get_historical_features(entity_df, ["user_activity_1m:event_count"])

Guarantees:
    * One Redis round trip per :meth:`FeatureClient.get_online_features` call,
      whatever the batch size and number of views (one ``EVALSHA``).
    * The whole batch is read from the version the current-version pointer
      names at that instant (see :mod:`serving.core`), never a mix.
    * A missing entity is a status, never an exception; only an unreachable
      Redis raises (:class:`~kappa.errors.ServiceUnavailable`).
    * Values are reported with their event-time age; nothing is hidden because
      it is old — it is marked ``stale``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import redis
from redis.exceptions import RedisError

from flows.views import DEFAULT_VIEWS, FeatureView, views_by_name
from kappa.errors import ConfigError, ServiceUnavailable
from replay.versions import Version, current_version
from serving.core import (
    LOOKUP_SCRIPT,
    OnlineResult,
    check_entities,
    decode_reply,
    lookup_keys,
    make_plan,
    script_args,
    wall_ms,
)
from sinks.redis import redis_client

if TYPE_CHECKING:
    import pyarrow as pa

    from kappa.settings import Settings


class FeatureClient:
    """Reads features online (Redis) and offline (Iceberg) through the version pointer.

    Args:
        redis_url: ``redis://`` / ``rediss://`` URL (AUTH/TLS in the URL).
        prefix: Base Redis key prefix (``KAPPA_REDIS_PREFIX``); the pointer lives at
            ``{prefix}@current``.
        namespace: Base Iceberg namespace (``KAPPA_NAMESPACE``), for history.
        catalog_uri / warehouse: Iceberg catalog, for history (optional for online use).
        views: The feature-view registry (default: the shipped views).
        now_ms: Clock for ages (injectable for tests).
        client: An existing redis-py client to use instead of connecting.
        socket_timeout_s: Per-call Redis timeout.

    Raises:
        ConfigError: Malformed URL.
        ServiceUnavailable: Redis did not answer PING at construction.
    """

    def __init__(self, *, redis_url: str | None = None, prefix: str = "kappa",
                 namespace: str = "kappa", catalog_uri: str | None = None,
                 warehouse: str | None = None, views: Sequence[FeatureView] = DEFAULT_VIEWS,
                 now_ms: Callable[[], int] = wall_ms, client: redis.Redis | None = None,
                 socket_timeout_s: float = 2.0) -> None:
        if client is None:
            if not redis_url:
                msg = "FeatureClient needs a redis_url (or KAPPA_REDIS_URL / `kappa up`)"
                raise ConfigError(msg)
            client = redis_client(redis_url, socket_timeout_s=socket_timeout_s)
        self._redis = client
        self.prefix = prefix
        self.namespace = namespace
        self.catalog_uri = catalog_uri
        self.warehouse = warehouse
        self.views: dict[str, FeatureView] = views_by_name(tuple(views))
        self._now_ms = now_ms
        self._script = client.register_script(LOOKUP_SCRIPT)
        self._keys = lookup_keys(prefix)

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> FeatureClient:
        """A client for the configured Redis, prefix, namespace and catalog."""
        return cls(redis_url=settings.require_redis(), prefix=settings.redis_prefix,
                   namespace=settings.namespace, catalog_uri=settings.catalog_uri,
                   warehouse=settings.warehouse, **kwargs)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kwargs: Any) -> FeatureClient:
        """A client from ``KAPPA_*`` variables (the local stack by default)."""
        from kappa.settings import Settings

        return cls.from_settings(Settings.from_env(env), **kwargs)

    @property
    def redis(self) -> redis.Redis:
        """The underlying redis-py client."""
        return self._redis

    def current_version(self) -> Version:
        """The version readers use now.

        Raises:
            ServiceUnavailable: Redis did not answer.
        """
        try:
            return current_version(self._redis, base_namespace=self.namespace,
                                   base_prefix=self.prefix)
        except RedisError as exc:
            msg = f"cannot read the version pointer from Redis: {exc}".splitlines()[0]
            raise ServiceUnavailable(msg) from exc

    def get_online_features(self, features: str | Sequence[str], entities: Sequence[str],
                            max_age_s: float | None = None) -> OnlineResult:
        """Latest feature vectors of ``entities``, in one round trip.

        Args:
            features: A view name (all its features), or ``view:feature``
                references (``view:*`` for all of a view), possibly of several views.
            entities: Entity ids; the result keeps their order (duplicates allowed).
            max_age_s: Mark values whose window ended longer ago than this ``stale``
                (the view's TTL applies in any case).

        Returns:
            An :class:`~serving.core.OnlineResult`; each row's ``status`` is
            ``ok``, ``missing`` or ``stale``.

        Raises:
            BadLookup: Unknown view/feature or malformed entities (a ``ConfigError``).
            ServiceUnavailable: Redis did not answer.
        """
        plan = make_plan(features, self.views)
        ids = check_entities(entities)
        if max_age_s is not None and max_age_s < 0:
            msg = f"max_age_s must be >= 0, got {max_age_s}"
            raise ConfigError(msg)
        try:
            reply = self._script(keys=self._keys, args=script_args(plan, ids, self.prefix))
        except RedisError as exc:
            msg = f"cannot read features from Redis: {exc}".splitlines()[0]
            raise ServiceUnavailable(msg) from exc
        return decode_reply(plan, ids, reply, now_ms=self._now_ms(), max_age_s=max_age_s)

    def get_historical_features(self, entity_df: pa.Table | str, features: str | Sequence[str],
                                *, timestamp_column: str = "timestamp") -> pa.Table:
        """Point-in-time-correct feature values for each (entity, timestamp) row.

        See :func:`serving.history.get_historical_features`; reads the Iceberg
        namespace of the current version.

        Raises:
            ConfigError: No catalog configured, or a bad entity table.
        """
        from serving.history import get_historical_features, read_entity_file
        from sinks.iceberg import open_catalog

        if not self.catalog_uri or not self.warehouse:
            msg = "get_historical_features needs catalog_uri and warehouse (KAPPA_CATALOG_URI)"
            raise ConfigError(msg)
        table = read_entity_file(entity_df) if isinstance(entity_df, str) else entity_df
        catalog = open_catalog(self.catalog_uri, self.warehouse)
        return get_historical_features(catalog, self.current_version().namespace, table, features,
                                       views=self.views, timestamp_column=timestamp_column)

    def close(self) -> None:
        """Release the connection pool."""
        self._redis.close()

    def __enter__(self) -> FeatureClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
