"""Online store: the latest feature vector per (view, entity) in Redis, replay-safe.

The key layout and the stored document live in ``sinks.redis_documents``.
Every write goes through one Lua script (:data:`WRITE_IF_NEWER`) that stores a
row only if it is newer than what is there — a larger window end, or the same
window end with a larger ``seq`` — and then sets the view's TTL (``PERSIST``
when the view keeps keys forever). Replays and retries therefore never move a
key backwards, and re-sending a batch is harmless.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import hiredis
import orjson
import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry
from typing_extensions import override

from flows.records import FeatureRow
from flows.views import FeatureView
from kappa.errors import ConfigError, ServiceUnavailable
from kappa.metrics import FRESHNESS_SECONDS, SINK_ERRORS, SINK_ROWS, SINK_WRITE_SECONDS
from kappa.settings import mask_url
from sinks.redis_documents import IsoCache, encode_row, feature_key, wall_ms

if TYPE_CHECKING:
    from kappa.settings import Settings

log = logging.getLogger(__name__)


SINK_LABEL = "redis"
NO_TTL = -1
"""TTL argument meaning "keep forever" (the script PERSISTs the key)."""

# KEYS[i] = feature key. ARGV[1] = flat JSON array, four numbers per key:
# window_end_ms, seq, payload bytes, ttl_s (-1: none); ARGV[2] = the payloads, concatenated
# in key order. Two blobs instead of four arguments per row: redis-py packs every
# argument in Python, which cost more than the script itself (live flush profile).
# Returns one 0/1 per key (1 = written). The script touches only the keys it is
# given, so it is Redis Cluster safe as long as one call's keys share a hash slot:
# on a cluster, chunks would be grouped by CLUSTER KEYSLOT before sending.
# Window ends are epoch ms (< 2^53), exact in Lua's doubles and in '%.17g',
# the format Redis turns a Lua number argument into.
WRITE_IF_NEWER = """
local call = redis.call
local meta = cjson.decode(ARGV[1])
local docs = ARGV[2]
local sub = string.sub
local pos = 1
local out = {}
for i = 1, #KEYS do
  local b = (i - 1) * 4
  local key, we, seq, size = KEYS[i], meta[b + 1], meta[b + 2], meta[b + 3]
  local doc = sub(docs, pos, pos + size - 1)
  pos = pos + size
  local cur = call('HMGET', key, 'we', 'seq')
  local newer = not cur[1]
  if not newer then
    local cur_we = tonumber(cur[1])
    newer = we > cur_we or (we == cur_we and seq > (tonumber(cur[2]) or -1))
  end
  if newer then
    call('HSET', key, 'we', we, 'seq', seq, 'v', doc)
    local ttl = meta[b + 4]
    if ttl > 0 then call('EXPIRE', key, ttl) else call('PERSIST', key) end
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""



def redis_client(url: str, *, socket_timeout_s: float = 5.0, connect_timeout_s: float = 2.0,
                 retries: int = 0) -> redis.Redis:
    """A connected client (it has answered PING) for ``url`` (AUTH/TLS via the URL).

    Raises:
        ConfigError: The URL is malformed.
        ServiceUnavailable: Redis did not answer.
    """
    try:
        client = redis.Redis.from_url(url, socket_timeout=socket_timeout_s,
                                      socket_connect_timeout=connect_timeout_s,
                                      retry=Retry(NoBackoff(), retries))
    except ValueError as exc:
        msg = f"invalid Redis URL {mask_url(url)}: {exc}"
        raise ConfigError(msg) from exc
    try:
        client.ping()
    except RedisError as exc:
        client.close()
        msg = f"cannot reach Redis at {mask_url(url)}: {exc}".splitlines()[0]
        raise ServiceUnavailable(msg) from exc
    return client


@dataclass(frozen=True, kw_only=True)
class RedisConfig:
    """What the Redis writer needs.

    Attributes:
        url: ``redis://`` or ``rediss://`` URL, credentials included.
        prefix: First key segment; a replay version uses its own.
        ttls: TTL in seconds per view name (``None``: keep forever).
        socket_timeout_s: Per-command socket timeout.
        connect_timeout_s: Connect timeout.
        max_retries: Retries of a batch after a connection error.
        backoff_s: First retry delay; doubles per retry.
        chunk_size: Rows per script call (several calls share one pipeline).
    """

    url: str
    ttls: Mapping[str, int | None]
    prefix: str = "kappa"
    socket_timeout_s: float = 5.0
    connect_timeout_s: float = 2.0
    max_retries: int | None = 3
    """``None``: retry forever (the live flow waits out an outage, losing nothing)."""
    backoff_s: float = 0.1
    max_backoff_s: float = 5.0
    chunk_size: int = 500
    pipeline_rows: int = 20_000
    """Rows per pipeline (one round trip); a larger write takes several, in order."""

    def __post_init__(self) -> None:
        if not self.url or "://" not in self.url:
            msg = f"Redis URL must look like redis://host:port/db, got {mask_url(self.url)!r}"
            raise ConfigError(msg)
        if not self.prefix or any(c.isspace() for c in self.prefix):
            msg = f"Redis key prefix must be non-empty without spaces, got {self.prefix!r}"
            raise ConfigError(msg)
        for view, ttl in self.ttls.items():
            if ttl is not None and ttl <= 0:
                msg = f"view {view!r}: TTL must be > 0 or None (forever), never {ttl}"
                raise ConfigError(msg)
        if ((self.max_retries is not None and self.max_retries < 0) or self.chunk_size < 1
                or self.pipeline_rows < 1 or self.backoff_s < 0):
            msg = "need max_retries >= 0, chunk_size >= 1, pipeline_rows >= 1 and backoff_s >= 0"
            raise ConfigError(msg)
        object.__setattr__(self, "ttls", dict(self.ttls))

    @classmethod
    def for_views(cls, *, url: str, views: Iterable[FeatureView], **kwargs: Any) -> RedisConfig:
        """Config whose TTLs come from the views' ``ttl_s``."""
        return cls(url=url, ttls={v.name: v.ttl_s for v in views}, **kwargs)

    @classmethod
    def from_settings(cls, settings: Settings, views: Iterable[FeatureView], *,
                      prefix: str | None = None) -> RedisConfig:
        """The writer's slice of the settings (``prefix`` overrides, e.g. for a replay)."""
        return cls.for_views(url=settings.require_redis(), views=views,
                             prefix=prefix or settings.redis_prefix)


class RedisFeatureWriter:
    """Batched, replay-safe writer of feature rows.

    Guarantees:
        * A row is stored iff it is newer than the stored one (window end, then
          ``seq``), atomically per key; the view's TTL is (re)set on each write.
        * One script call per ``chunk_size`` rows and one pipeline (one round
          trip) per ``pipeline_rows`` rows of a :meth:`write`; no per-row round trips.
        * Connection errors are retried ``max_retries`` times with backoff (safe:
          the script is idempotent), then :class:`ServiceUnavailable` is raised
          (never, with ``max_retries=None``).
    """

    def __init__(self, config: RedisConfig, client: redis.Redis | None = None, *,
                 now_ms: Callable[[], int] = wall_ms,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._config = config
        self._client = client if client is not None else redis_client(
            config.url, socket_timeout_s=config.socket_timeout_s,
            connect_timeout_s=config.connect_timeout_s)
        self._script = self._client.register_script(WRITE_IF_NEWER)
        self._now_ms = now_ms
        self._sleep = sleep
        self._iso = IsoCache()

    def _ttl(self, view: str) -> int:
        try:
            ttl = self._config.ttls[view]
        except KeyError:
            msg = f"no TTL configured for view {view!r}; known: {', '.join(self._config.ttls)}"
            raise ConfigError(msg) from None
        return NO_TTL if ttl is None else ttl

    def write(self, rows: list[FeatureRow]) -> int:
        """Write ``rows`` (in order); returns how many were newer and so stored.

        Freshness (now minus the row's last ingest time) is observed for every
        stored row that carries ``last_ingest_ms``.

        Raises:
            ServiceUnavailable: Redis stayed unreachable through all retries.
            ConfigError: A row's view has no configured TTL.
        """
        step = self._config.pipeline_rows
        return sum(self._write_slice(rows[i:i + step]) for i in range(0, len(rows), step))

    def _write_slice(self, rows: list[FeatureRow]) -> int:
        """One pipelined round trip for a slice of a write.

        Each chunk's script call is sent as soon as it is encoded, and replies
        are read as they arrive: Redis runs chunk k while this thread encodes
        chunk k+1 (redis-py's ``Pipeline`` encodes everything first, so the worker
        sat idle for the whole server time; 16% of a live worker's wall time,
        py-spy). Encoding a whole final close at once (millions of rows) would
        hold every encoded document and the packed commands in memory.
        Freshness is timed per chunk, at its reply: a chunk's rows are visible
        from then on, not only once the last chunk of the slice is done.
        """
        started = time.perf_counter()
        now = self._now_ms()
        prefix, iso, size = self._config.prefix, self._iso, self._config.chunk_size
        ttls: dict[str, int] = {}
        commands = (self._command(rows[i:i + size], prefix, iso, now, ttls)
                    for i in range(0, len(rows), size))
        replies = self._run(commands)
        SINK_WRITE_SECONDS.labels(sink=SINK_LABEL).observe(time.perf_counter() - started)
        written = 0
        seconds: list[float] = []
        for i, (flags, done_ms) in enumerate(replies):
            written += sum(flags)
            chunk = rows[i * size:(i + 1) * size]
            seconds += (max(0, done_ms - row.last_ingest_ms) / 1000
                        for row, flag in zip(chunk, flags, strict=True)
                        if flag and row.last_ingest_ms > 0)
        SINK_ROWS.labels(sink=SINK_LABEL).inc(written)
        FRESHNESS_SECONDS.observe_many(seconds)
        return written

    def _command(self, rows: list[FeatureRow], prefix: str, iso: Mapping[int, str],
                 now: int, ttls: dict[str, int]) -> tuple[Any, ...]:
        """The ``EVALSHA`` arguments writing one chunk of rows."""
        keys: list[str] = []
        docs: list[bytes] = []
        meta: list[int] = []
        for row in rows:
            ttl = ttls.get(row.view)
            if ttl is None:
                ttl = ttls[row.view] = self._ttl(row.view)
            keys.append(feature_key(prefix, row.view, row.entity))
            doc = encode_row(row, now, iso)
            docs.append(doc)
            meta += (row.window_end_ms, row.seq, len(doc), ttl)
        return ("EVALSHA", self._script.sha, len(keys), *keys, orjson.dumps(meta), b"".join(docs))

    def _run(self, commands: Iterable[tuple[Any, ...]]) -> list[tuple[list[int], int]]:
        """Send every command and read its reply; retried whole (the script is idempotent).

        Returns each command's 0/1 flags with the epoch ms its reply was read.
        """
        sent: list[tuple[Any, ...]] = []
        # A retry resends what was built (``sent``), then builds the rest from where
        # the iterator stopped.
        pending = iter(commands)
        attempt = 0
        while True:
            try:
                return self._round_trip(sent, pending)
            except NoScriptError:
                # Redis restarted or SCRIPT FLUSH: load once more and resend (idempotent).
                self._client.script_load(WRITE_IF_NEWER)
            except (RedisConnectionError, RedisTimeoutError) as exc:
                SINK_ERRORS.labels(sink=SINK_LABEL).inc()
                attempt += 1
                limit = self._config.max_retries
                if limit is not None and attempt > limit:
                    msg = (f"cannot write features to Redis at {mask_url(self._config.url)} after "
                           f"{attempt} attempts: {exc}").splitlines()[0]
                    raise ServiceUnavailable(msg) from exc
                delay = min(self._config.max_backoff_s,
                            self._config.backoff_s * 2 ** min(attempt - 1, 16))
                log.warning("Redis write failed (%s), retry %d/%s in %.2fs",
                            str(exc).splitlines()[0], attempt, limit or "inf", delay)
                self._sleep(delay)

    def _round_trip(self, sent: list[tuple[Any, ...]],
                    pending: Iterator[tuple[Any, ...]]) -> list[tuple[list[int], int]]:
        """Send ``sent`` (a retry) and then each ``pending`` command as it is built; read replies.

        Every command is appended to ``sent`` before it goes out, so after a
        failure ``sent`` holds every command built so far and ``pending`` the rest.
        Replies already on the socket are read between sends (``can_read`` does not
        block), each stamped with the time it was read.
        """
        pool = self._client.connection_pool
        conn = pool.get_connection()
        replies: list[tuple[Any, int]] = []
        now_ms = self._now_ms
        try:
            # hiredis packs in C; redis-py's own packer first runs its Python
            # encoder over every argument (each key), a third of the write's CPU.
            pack = hiredis.pack_command
            for command in sent:
                conn.send_packed_command([pack(command)], check_health=False)
            for command in pending:
                sent.append(command)
                conn.send_packed_command([pack(command)], check_health=False)
                while len(replies) < len(sent) and conn.can_read(timeout=0):
                    replies.append((conn.read_response(), now_ms()))
            while len(replies) < len(sent):
                replies.append((conn.read_response(), now_ms()))
        except BaseException:
            # Replies may be left unread on the socket: never hand it out again.
            conn.disconnect()
            raise
        finally:
            pool.release(conn)
        for reply, _ in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    def close(self) -> None:
        """Release the connection pool."""
        self._client.close()


class _RedisFeaturePartition(StatelessSinkPartition[list[FeatureRow]]):
    """One worker's writer; each item is one flush's rows."""

    def __init__(self, writer: RedisFeatureWriter) -> None:
        self._writer = writer

    @override
    def write_batch(self, items: list[list[FeatureRow]]) -> None:
        self._writer.write([row for rows in items for row in rows])

    @override
    def close(self) -> None:
        self._writer.close()


class RedisFeatureSink(DynamicSink[list[FeatureRow]]):
    """Every worker writes its own feature rows; the Lua guard makes order irrelevant."""

    def __init__(self, config: RedisConfig) -> None:
        self._config = config

    @override
    def build(self, step_id: str, worker_index: int,
              worker_count: int) -> _RedisFeaturePartition:
        return _RedisFeaturePartition(RedisFeatureWriter(self._config))
