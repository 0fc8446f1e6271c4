"""Seeded, reproducible ``UserEvent`` workload: the demo, test and benchmark input.

``generate(config)`` yields exactly ``config.events`` Kafka records whose
record timestamps are *simulated* ingest times (non-decreasing, about
``events_per_sim_second`` per simulated second from ``start_ms``), so months
of history can be produced in seconds and still obey the lateness rule.

Guarantees:

* The same config gives byte-identical output: all randomness comes from one
  ``random.Random(seed)`` (event ids are UUIDs built from it); no clock, no
  global RNG, no ``uuid4``.
* Each record carries the ``kind`` it was made as, and ``expected_reason``
  maps a kind to the reason code the pipeline must quarantine it with (None
  for good events), so tests can check the pipeline record by record.
* Good events are never late (their event time trails ingest time by at most
  ``max_out_of_order_s`` < ``allowed_lateness_s``), never in the future, and
  have unique event ids. Duplicates re-send an earlier good record's exact
  bytes and key 0-20 s (ingest time) later, and are never late themselves.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from random import Random
from typing import Any

from kappa.errors import ConfigError
from schemas.registry import SUBJECT, FileRegistry, RegisteredSchema, Registry
from schemas.serde import encode, frame

EPOCH_MS = 1_767_225_600_000
"""2026-01-01T00:00:00Z: the default simulated ingest start, fixed for reproducibility."""
SESSION_GAP_MS = 30 * 60 * 1000
UNKNOWN_SCHEMA_ID = 999
OVERSIZE_LIMIT = 65536
MAX_DUP_DELAY_MS = 20_000

BAD_KINDS: tuple[str, ...] = (
    "random_bytes",
    "truncated_avro",
    "unknown_schema_id",
    "missing_id",
    "purchase_without_amount",
    "negative_amount",
    "bad_currency",
    "unknown_event_type",
    "far_future_ts",
    "oversize",
)
KINDS: tuple[str, ...] = ("good", "late", "duplicate", *BAD_KINDS)
_REASONS: dict[str, str | None] = {
    "good": None,
    "late": "late",
    "duplicate": "duplicate",
    "random_bytes": "undecodable",
    "truncated_avro": "undecodable",
    "unknown_schema_id": "unknown_schema",
    "missing_id": "missing_field",
    "purchase_without_amount": "invalid_value",
    "negative_amount": "invalid_value",
    "bad_currency": "invalid_value",
    "unknown_event_type": "invalid_value",
    "far_future_ts": "future_timestamp",
    "oversize": "oversize",
}
_EVENT_TYPES = ("page_view", "add_to_cart", "purchase", "refund")
_EVENT_CUM = (0.65, 0.83, 0.95, 1.0)
_CURRENCIES = ("USD", "USD", "USD", "EUR", "EUR", "GBP")
_DEVICES = ("mobile", "mobile", "desktop", "desktop", "tablet")
_REFERRERS = ("direct", "search", "email", "social", "ads")
_CHANNELS = ("web", "web", "ios", "android")
_ID_FIELDS = ("event_id", "user_id", "item_id", "session_id")
_BAD_CURRENCIES = ("usd", "US", "EURO", "12$", "eur", "")
_BAD_TYPES = ("click", "PageView", "checkout", "view", "PURCHASE")


def expected_reason(kind: str) -> str | None:
    """The quarantine reason code the pipeline must give a record of ``kind`` (None: counted).

    Raises:
        ConfigError: ``kind`` is not one of ``KINDS``.
    """
    try:
        return _REASONS[kind]
    except KeyError:
        msg = f"unknown record kind {kind!r}; expected one of {', '.join(KINDS)}"
        raise ConfigError(msg) from None


@dataclass(frozen=True, kw_only=True)
class GeneratorConfig:
    """What to generate; validated on construction.

    Attributes:
        events: Exact number of records to produce (N).
        users: Number of distinct users (U); activity is Zipf-skewed.
        items: Number of distinct items (I); popularity is Zipf-skewed.
        seed: RNG seed; same config, same bytes.
        bad_rate: Share of malformed/invalid records, spread over ``BAD_KINDS``.
        late_rate: Share of valid events older than ``allowed_lateness_s``.
        dup_rate: Share of exact re-sends of earlier good records.
        schema_version: Writer schema version of subject ``user_events-value``.
        start_ms: Simulated ingest time of the first record (default ``EPOCH_MS``).
        events_per_sim_second: Simulated ingest rate (Poisson arrivals).
        max_out_of_order_s: Good events' ts trail ingest time by up to this.
        allowed_lateness_s: The flow's lateness setting the workload respects.
        amount_scale: Multiplies amounts of events ingested at or after ``scale_from_ms``:
            an injected producer bug (valid Avro, wrong values) for drift tests and demos.
        scale_from_ms: Simulated ingest time the scale applies from (default: never).
    """

    events: int
    users: int = 1000
    items: int = 500
    seed: int = 0
    bad_rate: float = 0.02
    late_rate: float = 0.01
    dup_rate: float = 0.01
    schema_version: int = 1
    start_ms: int | None = None
    events_per_sim_second: float = 200.0
    max_out_of_order_s: float = 30.0
    allowed_lateness_s: float = 60.0
    amount_scale: float = 1.0
    scale_from_ms: int | None = None

    def __post_init__(self) -> None:
        if self.events < 0 or self.users < 1 or self.items < 1:
            msg = "events must be >= 0, users and items >= 1"
            raise ConfigError(msg)
        rates = (self.bad_rate, self.late_rate, self.dup_rate)
        if any(not 0.0 <= r <= 1.0 for r in rates) or sum(rates) >= 1.0:
            msg = "bad, late and dup rates must each be in [0, 1] and sum to less than 1"
            raise ConfigError(msg)
        if self.schema_version not in (1, 2):
            msg = f"schema version must be 1 or 2, got {self.schema_version}"
            raise ConfigError(msg)
        if self.amount_scale <= 0:
            msg = "amount scale must be > 0"
            raise ConfigError(msg)
        if self.events_per_sim_second <= 0:
            msg = "events per simulated second must be > 0"
            raise ConfigError(msg)
        if not 0 <= self.max_out_of_order_s < self.allowed_lateness_s:
            msg = "max out-of-orderness must be >= 0 and below the allowed lateness"
            raise ConfigError(msg)


@dataclass(frozen=True, slots=True)
class GeneratedRecord:
    """One Kafka record to produce: key is the user id, timestamp the simulated ingest time."""

    key: bytes
    value: bytes
    timestamp_ms: int
    kind: str


def _zipf_cum(n: int, exponent: float, rng: Random) -> tuple[list[float], list[int]]:
    """Cumulative Zipf weights over ranks and a seeded rank->id shuffle."""
    total, cum = 0.0, []
    for rank in range(1, n + 1):
        total += 1.0 / rank**exponent
        cum.append(total)
    ids = list(range(n))
    rng.shuffle(ids)
    return cum, ids


class _Workload:
    """The generator's mutable state; one instance per ``generate`` call."""

    def __init__(self, config: GeneratorConfig, schema: RegisteredSchema) -> None:
        self.c = config
        self.schema = schema
        self.rng = Random(config.seed)
        self.user_cum, self.user_ids = _zipf_cum(config.users, 0.8, self.rng)
        self.item_cum, self.item_ids = _zipf_cum(config.items, 1.1, self.rng)
        self.sessions: dict[str, list[Any]] = {}
        self.ooo_ms = int(config.max_out_of_order_s * 1000)
        self.lateness_ms = int(config.allowed_lateness_s * 1000)
        self.now_ms = 0
        """Simulated ingest time of the record being generated."""

    def uuid(self) -> str:
        """A version-4 UUID string from the seeded RNG (same bits as ``uuid.UUID(version=4)``)."""
        n = self.rng.getrandbits(128)
        n = (n & ~(0xF000 << 64) | (0x4000 << 64)) & ~(0xC000 << 48) | (0x8000 << 48)
        h = f"{n:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    def pick(self, cum: list[float], ids: list[int]) -> int:
        return ids[bisect.bisect_left(cum, self.rng.random() * cum[-1])]

    def amount(self) -> float:
        value = round(min(max(self.rng.lognormvariate(3.2, 0.9), 0.5), 5000.0), 2)
        frm = self.c.scale_from_ms
        if frm is not None and self.now_ms >= frm:
            value = round(value * self.c.amount_scale, 2)
        return value

    def event(self, rec_ts: int, *, counted: bool) -> dict[str, Any]:
        """A valid event ingested at ``rec_ts``; only counted events advance sessions."""
        rng = self.rng
        user = f"u{self.pick(self.user_cum, self.user_ids):07d}"
        item = f"i{self.pick(self.item_cum, self.item_ids):07d}"
        ts = rec_ts - int(rng.random() * self.ooo_ms)
        state = self.sessions.get(user)
        if state is None or ts - state[1] > SESSION_GAP_MS:
            state = [self.uuid(), ts]
            if counted:
                self.sessions[user] = state
        elif counted and ts > state[1]:
            state[1] = ts
        event_type = _EVENT_TYPES[bisect.bisect_left(_EVENT_CUM, rng.random())]
        paid = event_type in ("purchase", "refund")
        record: dict[str, Any] = {
            "event_id": self.uuid(),
            "user_id": user,
            "event_type": event_type,
            "item_id": item,
            "amount": self.amount() if paid else None,
            "currency": _CURRENCIES[int(rng.random() * 6)] if paid else None,
            "ts": ts,
            "session_id": state[0],
            "attributes": {
                "device": _DEVICES[int(rng.random() * 5)],
                "referrer": _REFERRERS[int(rng.random() * 5)],
            },
        }
        if self.c.schema_version >= 2:
            record["channel"] = _CHANNELS[int(rng.random() * 4)]
        return record

    def bad(self, kind: str, rec_ts: int) -> tuple[bytes, bytes]:
        """Key and value of a record that must be quarantined with ``expected_reason(kind)``."""
        rng = self.rng
        event = self.event(rec_ts, counted=False)
        key = event["user_id"].encode()
        if kind == "random_bytes":
            return key, bytes([rng.randint(1, 255)]) + rng.randbytes(rng.randint(4, 200))
        if kind == "truncated_avro":
            full = encode(event, self.schema)
            return key, full[: rng.randint(5, len(full) - 1)]
        if kind == "unknown_schema_id":
            return key, frame(UNKNOWN_SCHEMA_ID, encode(event, self.schema)[5:])
        if kind == "missing_id":
            event[_ID_FIELDS[rng.randrange(4)]] = ""
        elif kind in ("purchase_without_amount", "negative_amount", "bad_currency"):
            event["event_type"] = rng.choice(("purchase", "refund"))
            event["amount"], event["currency"] = self.amount(), rng.choice(("USD", "EUR", "GBP"))
            if kind == "purchase_without_amount":
                event["amount"] = event["currency"] = None
            elif kind == "negative_amount":
                event["amount"] = -event["amount"]
            else:
                event["currency"] = rng.choice(_BAD_CURRENCIES)
        elif kind == "unknown_event_type":
            event["event_type"] = rng.choice(_BAD_TYPES)
        elif kind == "far_future_ts":
            event["ts"] = rec_ts + 3_600_000 + rng.randint(1_000, 48 * 3_600_000)
        elif kind == "oversize":
            event["attributes"]["blob"] = "x" * rng.randint(OVERSIZE_LIMIT + 1000, 2 * OVERSIZE_LIMIT)
        return key, encode(event, self.schema)

    def records(self) -> Iterator[GeneratedRecord]:
        c, rng = self.c, self.rng
        good_share = 1.0 - c.bad_rate - c.late_rate - c.dup_rate
        p_bad = c.bad_rate / (1.0 - c.dup_rate)
        p_late = p_bad + c.late_rate / (1.0 - c.dup_rate)
        p_dup = c.dup_rate / good_share if good_share > 0 else 0.0
        start = EPOCH_MS if c.start_ms is None else c.start_ms
        mean_gap_ms = 1000.0 / c.events_per_sim_second
        pending: list[tuple[int, int, bytes, bytes, int]] = []
        seq = itertools.count()
        clock = 0.0
        emitted = 0
        while emitted < c.events:
            clock += rng.expovariate(1.0) * mean_gap_ms
            rec_ts = start + int(clock)
            self.now_ms = rec_ts
            while pending and pending[0][0] <= rec_ts:
                _, _, key, value, ts = heapq.heappop(pending)
                if rec_ts - ts <= self.lateness_ms:
                    break
            else:
                key = b""
            if key:
                emitted += 1
                yield GeneratedRecord(key, value, rec_ts, "duplicate")
                continue
            r = rng.random()
            if r < p_bad:
                kind = BAD_KINDS[int(rng.random() * len(BAD_KINDS))]
                key, value = self.bad(kind, rec_ts)
            elif r < p_late:
                kind = "late"
                event = self.event(rec_ts, counted=False)
                event["ts"] = rec_ts - self.lateness_ms - rng.randint(5_000, 900_000)
                key, value = event["user_id"].encode(), encode(event, self.schema)
            else:
                kind = "good"
                event = self.event(rec_ts, counted=True)
                key, value = event["user_id"].encode(), encode(event, self.schema)
                room = min(MAX_DUP_DELAY_MS, self.lateness_ms - (rec_ts - event["ts"]) - 1000)
                if room >= 0 and rng.random() < p_dup:
                    due = rec_ts + int(rng.random() * room)
                    heapq.heappush(pending, (due, next(seq), key, value, event["ts"]))
            emitted += 1
            yield GeneratedRecord(key, value, rec_ts, kind)


def generate(config: GeneratorConfig, registry: Registry | None = None) -> Iterator[GeneratedRecord]:
    """Yield exactly ``config.events`` records in ingest-time order (see module guarantees).

    Args:
        config: What to generate.
        registry: Where the writer schema comes from (default: the shipped files).
    """
    registry = registry if registry is not None else FileRegistry()
    matches = [s for s in registry.versions(SUBJECT) if s.version == config.schema_version]
    if not matches:
        msg = f"{SUBJECT} has no schema version {config.schema_version}"
        raise ConfigError(msg)
    return _Workload(config, matches[0]).records()
