"""Feature views as data: source, entity, window, aggregations, TTL.

Adding a view is a few lines here (or in a user module) and no dataflow code:
the feature shard step interprets these definitions. Every aggregation is
mergeable (counts, exact sums, max, distinct sets), which is what lets sliding
windows be built from panes and partial results combine in any order.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Literal

from kappa.errors import ConfigError

AggKind = Literal["count", "sum", "max", "distinct", "ratio", "duration"]
EVENT_TYPES = frozenset({"page_view", "add_to_cart", "purchase", "refund"})


@dataclass(frozen=True, kw_only=True)
class Tumbling:
    """Epoch-aligned, non-overlapping windows ``[k*size, (k+1)*size)``."""

    size_s: int

    def __post_init__(self) -> None:
        if self.size_s <= 0:
            msg = "tumbling window size must be > 0"
            raise ConfigError(msg)


@dataclass(frozen=True, kw_only=True)
class Sliding:
    """Epoch-aligned windows of ``size_s`` starting every ``hop_s``."""

    size_s: int
    hop_s: int

    def __post_init__(self) -> None:
        if self.hop_s <= 0 or self.size_s <= 0 or self.size_s % self.hop_s:
            msg = "sliding window size must be a positive multiple of its hop"
            raise ConfigError(msg)


@dataclass(frozen=True, kw_only=True)
class Session:
    """Maximal runs of an entity's events with gaps of at most ``gap_s``."""

    gap_s: int

    def __post_init__(self) -> None:
        if self.gap_s <= 0:
            msg = "session gap must be > 0"
            raise ConfigError(msg)


Window = Tumbling | Sliding | Session


@dataclass(frozen=True, kw_only=True)
class Feature:
    """One output column of a view.

    Attributes:
        name: Column name in Redis and Iceberg.
        agg: ``count`` (events), ``sum``/``max`` (of ``field``), ``distinct``
            (exact number of distinct ``field`` values), ``ratio`` (of two other
            features of the view, null when the divisor is 0) or ``duration``
            (last minus first event ts in seconds).
        field: The event field for ``sum``, ``max`` and ``distinct``.
        where: Only events whose ``event_type`` is in this set count
            (``None``: all counted events).
        ratio_of: ``(numerator, denominator)`` feature names for ``ratio``.
    """

    name: str
    agg: AggKind
    field: str | None = None
    where: frozenset[str] | None = None
    ratio_of: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        if self.agg in ("sum", "max", "distinct") and not self.field:
            msg = f"feature {self.name!r}: {self.agg} needs a field"
            raise ConfigError(msg)
        if self.agg == "ratio" and self.ratio_of is None:
            msg = f"feature {self.name!r}: ratio needs ratio_of=(numerator, denominator)"
            raise ConfigError(msg)
        if self.where is not None and not self.where <= EVENT_TYPES:
            msg = f"feature {self.name!r}: unknown event types {sorted(self.where - EVENT_TYPES)}"
            raise ConfigError(msg)

    @property
    def dtype(self) -> Literal["long", "double"]:
        """Column type: counts are longs, everything else doubles."""
        return "long" if self.agg in ("count", "distinct") else "double"

    @property
    def nullable(self) -> bool:
        """Max without values and ratios with a zero divisor are null."""
        return self.agg in ("max", "ratio")


@dataclass(frozen=True, kw_only=True)
class FeatureView:
    """A declarative feature view.

    Attributes:
        name: View name; the Iceberg table is ``features_<name>``.
        entity: Event field the view is keyed by (the entity column's name).
        window: Tumbling, sliding or session window.
        features: Output columns, in order.
        ttl_s: Redis key TTL counted from each write; ``None`` keeps keys forever.
    """

    name: str
    entity: str
    window: Window
    features: tuple[Feature, ...]
    ttl_s: int | None = 86_400
    description: str = ""
    _index: dict[str, Feature] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            msg = f"view name must be an identifier, got {self.name!r}"
            raise ConfigError(msg)
        if self.ttl_s is not None and self.ttl_s <= 0:
            msg = f"view {self.name!r}: ttl_s must be > 0 or None (forever), never 0"
            raise ConfigError(msg)
        names = [f.name for f in self.features]
        if len(set(names)) != len(names) or not names:
            msg = f"view {self.name!r}: feature names must be unique and non-empty"
            raise ConfigError(msg)
        for feat in self.features:
            if feat.agg == "ratio":
                assert feat.ratio_of is not None
                for ref in feat.ratio_of:
                    if ref not in names:
                        msg = f"view {self.name!r}: ratio {feat.name!r} refers to unknown {ref!r}"
                        raise ConfigError(msg)
            if feat.agg == "duration" and not isinstance(self.window, Session):
                msg = f"view {self.name!r}: duration is only defined for session windows"
                raise ConfigError(msg)
            self._index[feat.name] = feat

    @property
    def feature_names(self) -> list[str]:
        """Column names in order."""
        return [f.name for f in self.features]

    def feature(self, name: str) -> Feature:
        """Look a feature up by name (``KeyError`` when unknown)."""
        return self._index[name]

    @property
    def event_fields(self) -> frozenset[str]:
        """The event fields this view's windows read (``flows.aggregates`` generates the reads)."""
        fields = {self.entity, "ts", "ingest_ts"}
        for feat in self.features:
            if feat.where is not None:
                fields.add("event_type")
            if feat.field is not None:
                fields.add(feat.field)
        return frozenset(fields)

    @property
    def table(self) -> str:
        """The Iceberg table holding this view's final windows."""
        return f"features_{self.name}"

    def definition(self) -> dict[str, object]:
        """What state and outputs depend on, as JSON-able data (for upgrade checks)."""
        return {
            "name": self.name, "entity": self.entity,
            "window": {"kind": type(self.window).__name__, **vars(self.window)},
            "features": [{"name": f.name, "agg": f.agg, "field": f.field,
                          "where": sorted(f.where) if f.where is not None else None,
                          "ratio_of": list(f.ratio_of) if f.ratio_of else None}
                         for f in self.features],
        }


_PURCHASE = frozenset({"purchase"})

USER_ACTIVITY_1M = FeatureView(
    name="user_activity_1m",
    entity="user_id",
    window=Tumbling(size_s=60),
    features=(
        Feature(name="event_count", agg="count"),
        Feature(name="purchase_count", agg="count", where=_PURCHASE),
        Feature(name="purchase_amount_sum", agg="sum", field="amount", where=_PURCHASE),
        Feature(name="distinct_items", agg="distinct", field="item_id"),
    ),
    ttl_s=86_400,
    description="Per-user activity in one-minute tumbling windows.",
)

USER_SPEND_1H = FeatureView(
    name="user_spend_1h",
    entity="user_id",
    window=Sliding(size_s=3600, hop_s=300),
    features=(
        Feature(name="purchase_count", agg="count", where=_PURCHASE),
        Feature(name="purchase_amount_sum", agg="sum", field="amount", where=_PURCHASE),
        Feature(name="purchase_amount_avg", agg="ratio",
                ratio_of=("purchase_amount_sum", "purchase_count")),
        Feature(name="purchase_amount_max", agg="max", field="amount", where=_PURCHASE),
    ),
    ttl_s=2 * 86_400,
    description="Per-user spend over the last hour, sliding every five minutes.",
)

USER_SESSION = FeatureView(
    name="user_session",
    entity="user_id",
    window=Session(gap_s=1800),
    features=(
        Feature(name="session_event_count", agg="count"),
        Feature(name="session_duration_s", agg="duration"),
        Feature(name="session_purchase_amount", agg="sum", field="amount", where=_PURCHASE),
    ),
    ttl_s=7 * 86_400,
    description="Per-user sessions (30-minute inactivity gap).",
)

ITEM_POPULARITY_5M = FeatureView(
    name="item_popularity_5m",
    entity="item_id",
    window=Tumbling(size_s=300),
    features=(
        Feature(name="view_count", agg="count", where=frozenset({"page_view"})),
        Feature(name="cart_count", agg="count", where=frozenset({"add_to_cart"})),
        Feature(name="purchase_count", agg="count", where=_PURCHASE),
        Feature(name="conversion_rate", agg="ratio", ratio_of=("purchase_count", "view_count")),
    ),
    ttl_s=86_400,
    description="Per-item funnel counts in five-minute tumbling windows.",
)

DEFAULT_VIEWS: tuple[FeatureView, ...] = (
    USER_ACTIVITY_1M,
    USER_SPEND_1H,
    USER_SESSION,
    ITEM_POPULARITY_5M,
)


def load_views(module: str | None) -> tuple[FeatureView, ...]:
    """The shipped views plus the ``VIEWS`` tuple of a user module (``KAPPA_VIEWS_MODULE``).

    Adding a view is a module with ``VIEWS = (FeatureView(...),)`` on the Python
    path: no dataflow code. Names must not clash with the shipped views.

    Raises:
        ConfigError: The module cannot be imported or its ``VIEWS`` are not views.
    """
    if not module:
        return DEFAULT_VIEWS
    try:
        extra = importlib.import_module(module).VIEWS
    except (ImportError, AttributeError) as exc:
        msg = f"cannot load views from {module!r} (needs a VIEWS tuple): {exc}"
        raise ConfigError(msg) from exc
    if not all(isinstance(v, FeatureView) for v in extra):
        msg = f"{module}.VIEWS must hold FeatureView objects"
        raise ConfigError(msg)
    names = [v.name for v in (*DEFAULT_VIEWS, *extra)]
    if len(set(names)) != len(names):
        msg = f"{module}.VIEWS repeats a view name: {sorted(names)}"
        raise ConfigError(msg)
    return (*DEFAULT_VIEWS, *extra)


def views_by_name(views: tuple[FeatureView, ...] = DEFAULT_VIEWS) -> dict[str, FeatureView]:
    """Registry lookup; names are unique."""
    return {v.name: v for v in views}


def select_views(names: list[str] | None,
                 views: tuple[FeatureView, ...] = DEFAULT_VIEWS) -> tuple[FeatureView, ...]:
    """The named views in registry order, with a clear error for unknown names."""
    if not names:
        return views
    known = views_by_name(views)
    unknown = [n for n in names if n not in known]
    if unknown:
        msg = f"unknown view(s) {', '.join(unknown)}; known: {', '.join(known)}"
        raise ConfigError(msg)
    return tuple(v for v in views if v.name in names)
