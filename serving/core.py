"""The transport-free core of an online lookup: request plan, Lua script, reply decoding.

The sync :class:`serving.client.FeatureClient` and the async HTTP server share
this module, so a lookup has one definition whatever carries its bytes.

One lookup is one ``EVALSHA`` of :data:`LOOKUP_SCRIPT`: the script reads the
current-version pointer and then ``HGET … v`` of every requested key *under the
prefix that pointer names*, atomically (Redis runs a script without
interleaving other commands). A promotion is one ``SET`` of the pointer, so a
batch is answered entirely from the old version or entirely from the new one,
never a mix, whatever the batch size.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from flows.views import DEFAULT_VIEWS, FeatureView, views_by_name
from kappa.errors import ConfigError
from replay.versions import DEFAULT_VERSION, Version, pointer_key

# KEYS[1] = pointer key; ARGV[1] = base prefix; ARGV[2..] = "view:entity" key suffixes.
# Reply: {pointer document or nil, v of key 1 or nil, ...}. A nil inside a Lua
# table would cut the reply short, so absent values travel as `false` (nil reply).
# The value keys are derived inside the script, so on a Redis Cluster this needs
# every key of a version in one hash slot (a `{prefix}` hash tag); single-node
# Redis and replicas need nothing.
LOOKUP_SCRIPT = """
local ptr = redis.call('GET', KEYS[1])
local prefix = ARGV[1]
if ptr then prefix = cjson.decode(ptr)['redis_prefix'] end
local out = {ptr or false}
for i = 2, #ARGV do
  out[i] = redis.call('HGET', prefix .. ':' .. ARGV[i], 'v')
end
return out
"""

OK, MISSING, STALE = "ok", "missing", "stale"
_RANK = {OK: 0, STALE: 1, MISSING: 2}
MAX_ENTITY_CHARS = 512


class BadLookup(ConfigError):
    """A lookup request names an unknown view or feature, or has bad entities."""


@dataclass(frozen=True, kw_only=True)
class LookupPlan:
    """Which features of which views a lookup returns (validated against the registry).

    Attributes:
        views: ``(view, selected feature names)`` in request order, one per view.
    """

    views: tuple[tuple[FeatureView, tuple[str, ...]], ...]

    @property
    def refs(self) -> list[str]:
        """The selected features as ``view:feature`` references."""
        return [f"{v.name}:{f}" for v, feats in self.views for f in feats]


def make_plan(features: str | Sequence[str],
              registry: Mapping[str, FeatureView] | None = None) -> LookupPlan:
    """Validate a request's features: a view name, or ``view:feature`` references.

    ``view:*`` selects every feature of a view. Duplicates are dropped, order is kept.

    Raises:
        BadLookup: An unknown view or feature, or an empty selection.
    """
    known = registry if registry is not None else views_by_name(DEFAULT_VIEWS)
    refs = [features] if isinstance(features, str) else list(features)
    if not refs:
        msg = "no features requested: give a view name or view:feature references"
        raise BadLookup(msg)
    chosen: dict[str, list[str]] = {}
    for ref in refs:
        if not isinstance(ref, str):
            msg = f"feature references must be strings, got {type(ref).__name__}"
            raise BadLookup(msg)
        view_name, sep, feat = ref.partition(":")
        view = known.get(view_name)
        if view is None:
            msg = f"unknown view {view_name!r}; known: {', '.join(known)}"
            raise BadLookup(msg)
        names = view.feature_names if (not sep or feat == "*") else [feat]
        for name in names:
            if name not in view.feature_names:
                msg = (f"unknown feature {name!r} of view {view_name!r}; "
                       f"known: {', '.join(view.feature_names)}")
                raise BadLookup(msg)
            selected = chosen.setdefault(view_name, [])
            if name not in selected:
                selected.append(name)
    return LookupPlan(views=tuple((known[n], tuple(f)) for n, f in chosen.items()))


def check_entities(entities: Iterable[Any], max_batch: int | None = None) -> list[str]:
    """Entities as a list of non-empty strings (at most ``max_batch`` of them).

    Raises:
        BadLookup: A non-string or empty entity, or more than ``max_batch``.
    """
    out = list(entities) if not isinstance(entities, str) else [entities]
    if max_batch is not None and len(out) > max_batch:
        msg = f"too many entities: {len(out)} > {max_batch} per request"
        raise BadLookup(msg)
    for entity in out:
        if not isinstance(entity, str) or not entity or len(entity) > MAX_ENTITY_CHARS:
            msg = f"entities must be non-empty strings of at most {MAX_ENTITY_CHARS} chars, got {entity!r}"
            raise BadLookup(msg[:300])
    return out


def script_args(plan: LookupPlan, entities: Sequence[str], base_prefix: str) -> list[str]:
    """ARGV of :data:`LOOKUP_SCRIPT`: the base prefix, then one suffix per (view, entity)."""
    args = [base_prefix]
    for view, _ in plan.views:
        name = view.name
        args.extend(f"{name}:{e}" for e in entities)
    return args


def lookup_keys(base_prefix: str) -> list[str]:
    """KEYS of :data:`LOOKUP_SCRIPT`."""
    return [pointer_key(base_prefix)]


@dataclass(slots=True)
class ViewValue:
    """One view's value for one entity.

    Attributes:
        status: ``ok``; ``missing`` (no key, e.g. never seen or expired by TTL);
            ``stale`` (found, but its window ended longer ago than the view's TTL
            or the caller's ``max_age_s``, in event time vs. the reader's clock).
        features: Selected feature values (``None`` each when missing).
        window_start / window_end: ISO-8601 UTC bounds of the served window.
        final: Whether the window is closed (``False``: a running aggregate).
        age_s: Now minus the window end, seconds (reported, never used to hide a value).
    """

    status: str
    features: dict[str, Any]
    window_start: str | None = None
    window_end: str | None = None
    final: bool | None = None
    age_s: float | None = None
    written_at_ms: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"status": self.status, "features": self.features,
                "window_start": self.window_start, "window_end": self.window_end,
                "final": self.final, "age_s": self.age_s, "written_at_ms": self.written_at_ms}


@dataclass(slots=True)
class EntityResult:
    """Every requested view's value for one entity.

    ``status`` is the worst view status (``missing`` > ``stale`` > ``ok``).
    Results are plain slotted records (not frozen: frozen construction costs
    microseconds per row on the hot path); treat them as read-only.
    """

    entity: str
    status: str
    views: dict[str, ViewValue]

    @property
    def values(self) -> dict[str, Any]:
        """Flat ``{"view:feature": value}``."""
        return {f"{v}:{k}": x for v, value in self.views.items() for k, x in value.features.items()}

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"entity": self.entity, "status": self.status,
                "views": {k: v.to_dict() for k, v in self.views.items()}}


@dataclass(frozen=True, kw_only=True)
class OnlineResult:
    """A batch lookup's answer, all read from one version.

    Attributes:
        version: Name of the version the batch was read from (``live`` by default).
        features: The selected ``view:feature`` references.
        rows: One :class:`EntityResult` per requested entity, in request order.
    """

    version: str
    features: list[str]
    rows: list[EntityResult] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {"version": self.version, "features": self.features,
                "rows": [r.to_dict() for r in self.rows]}


def wall_ms() -> int:
    """Epoch milliseconds from the wall clock."""
    return time.time_ns() // 1_000_000


def _view_value(view: FeatureView, names: tuple[str, ...], raw: bytes | None, now_ms: int,
                max_age_s: float | None) -> ViewValue:
    if raw is None:
        return ViewValue(MISSING, dict.fromkeys(names))
    doc = orjson.loads(raw)
    age_s = (now_ms - doc["window_end_ms"]) / 1000
    ttl = view.ttl_s
    stale = (ttl is not None and age_s > ttl) or (max_age_s is not None and age_s > max_age_s)
    feats = doc["features"]
    return ViewValue(STALE if stale else OK, {n: feats.get(n) for n in names},
                     doc["window_start"], doc["window_end"], doc["final"], age_s,
                     doc.get("written_at_ms"))


def decode_reply(plan: LookupPlan, entities: Sequence[str], reply: Sequence[Any],
                 *, now_ms: int, max_age_s: float | None = None) -> OnlineResult:
    """Turn a :data:`LOOKUP_SCRIPT` reply into an :class:`OnlineResult` (never raises for misses)."""
    pointer = reply[0]
    version = Version.from_json(pointer).name if pointer else DEFAULT_VERSION
    n = len(entities)
    per_view = [(view, names, reply[1 + i * n:1 + (i + 1) * n])
                for i, (view, names) in enumerate(plan.views)]
    rows: list[EntityResult] = []
    for j, entity in enumerate(entities):
        views: dict[str, ViewValue] = {}
        worst = OK
        for view, names, raws in per_view:
            value = _view_value(view, names, raws[j], now_ms, max_age_s)
            views[view.name] = value
            if _RANK[value.status] > _RANK[worst]:
                worst = value.status
        rows.append(EntityResult(entity, worst, views))
    return OnlineResult(version=version, features=plan.refs, rows=rows)
