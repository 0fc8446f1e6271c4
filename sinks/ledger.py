"""What an Iceberg table already holds, recorded in its own snapshot summaries.

Bytewax recovery is at-least-once: after a crash the dataflow resumes from its
last epoch snapshot and re-emits what came after it. The Iceberg sink makes that
replay idempotent the way Flink's Iceberg committer does: every commit records
in its snapshot summary (``kappa.coverage``) what it covers, cumulatively, and a
restarted committer drops every re-emitted row that coverage already includes.

Coverage has two parts:

* ``offsets`` — per source partition, the highest source offset committed
  (``log``, ``events`` and ``quarantine`` rows carry partition and offset, and
  arrive in offset order per partition);
* ``closed`` — per feature shard, the highest *close clock* committed. A
  feature shard closes windows in clock order, and a window is final with the
  same content whichever run closes it, so every window whose close point is at
  or below the committed clock is already in the table. The ``profiles`` table
  uses it too, keyed ``profile:<scope>``: the profiler closes a scope's windows
  in end order, so its highest committed ``window_end`` covers all before it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from flows.views import FeatureView, Session

COVERAGE_PROPERTY = "kappa.coverage"


@dataclass(kw_only=True)
class Coverage:
    """Cumulative coverage of a table; merge-only (values never go down)."""

    offsets: dict[int, int] = field(default_factory=dict)
    closed: dict[str, int] = field(default_factory=dict)

    def merge(self, other: Coverage) -> None:
        """Fold ``other`` in (max per key)."""
        for p, o in other.offsets.items():
            if o > self.offsets.get(p, -1):
                self.offsets[p] = o
        for s, u in other.closed.items():
            if u > self.closed.get(s, -(2**63)):
                self.closed[s] = u

    def is_empty(self) -> bool:
        """Nothing recorded yet."""
        return not self.offsets and not self.closed

    def to_property(self) -> str:
        """The snapshot summary value."""
        return orjson.dumps({"offsets": {str(p): o for p, o in self.offsets.items()},
                             "closed": self.closed}).decode()

    @classmethod
    def from_property(cls, text: str) -> Coverage:
        """Parse a snapshot summary value."""
        data = orjson.loads(text)
        return cls(offsets={int(p): int(o) for p, o in data.get("offsets", {}).items()},
                   closed={str(s): int(u) for s, u in data.get("closed", {}).items()})


def _snapshots_newest_first(table: Any) -> Iterator[Any]:
    snapshot = table.current_snapshot()
    while snapshot is not None:
        yield snapshot
        parent = snapshot.parent_snapshot_id
        snapshot = table.snapshot_by_id(parent) if parent is not None else None


def read_coverage(table: Any) -> Coverage:
    """Coverage recorded by the newest snapshot that has any (maintenance commits may not)."""
    for snapshot in _snapshots_newest_first(table):
        summary = snapshot.summary
        value = summary.additional_properties.get(COVERAGE_PROPERTY) if summary else None
        if value:
            return Coverage.from_property(value)
    return Coverage()


def offsets_of(rows: pa.Table) -> dict[int, int]:
    """Highest offset per source partition in ``rows`` (which has partition/offset columns)."""
    if rows.num_rows == 0:
        return {}
    grouped = rows.select(["partition", "offset"]).group_by("partition").aggregate(
        [("offset", "max")])
    return dict(zip(grouped["partition"].to_pylist(), grouped["offset_max"].to_pylist(),
                    strict=True))


def drop_committed_offsets(rows: pa.Table, committed: dict[int, int]) -> pa.Table:
    """Rows whose (partition, offset) is beyond what ``committed`` covers."""
    if not committed or rows.num_rows == 0:
        return rows
    keep = None
    partitions = rows["partition"]
    offsets = rows["offset"]
    for p, o in committed.items():
        covered = pc.and_(pc.equal(partitions, p), pc.less_equal(offsets, o))
        keep = covered if keep is None else pc.or_(keep, covered)
    assert keep is not None
    return rows.filter(pc.invert(keep))


def close_points(view: FeatureView, rows: pa.Table) -> pa.Array:
    """Close clock at which each window of ``rows`` became final (ms).

    Tumbling and sliding windows close when the clock reaches their end; a
    session closes once the clock is past its last event plus the gap.
    """
    ends = pc.cast(rows["window_end"], pa.int64())
    ends = pc.divide(ends, 1000)  # µs -> ms
    if isinstance(view.window, Session):
        return pc.add(ends, view.window.gap_s * 1000 + 1)
    return ends


def drop_closed_windows(view: FeatureView, rows: pa.Table, shard: str,
                        committed: dict[str, int]) -> pa.Table:
    """Windows of ``shard`` that the committed close clock does not cover yet."""
    until = committed.get(shard)
    if until is None or rows.num_rows == 0:
        return rows
    return rows.filter(pc.greater(close_points(view, rows), until))


PROFILE_KEY = "profile:"


def _profile_ends(rows: pa.Table) -> pa.Array:
    return pc.divide(pc.cast(rows["window_end"], pa.int64()), 1000)  # µs -> ms


def profile_coverage(rows: pa.Table) -> dict[str, int]:
    """Highest ``window_end`` (ms) per profile scope in ``rows``."""
    if rows.num_rows == 0:
        return {}
    grouped = pa.table({"scope": rows["scope"], "end": _profile_ends(rows)}).group_by(
        "scope").aggregate([("end", "max")])
    return {PROFILE_KEY + s: int(e) for s, e in zip(grouped["scope"].to_pylist(),
                                                  grouped["end_max"].to_pylist(), strict=True)}


def drop_profiled_windows(rows: pa.Table, committed: dict[str, int]) -> pa.Table:
    """Profile rows whose scope's committed ``window_end`` does not cover them yet."""
    covered = {k[len(PROFILE_KEY):]: v for k, v in committed.items() if k.startswith(PROFILE_KEY)}
    if not covered or rows.num_rows == 0:
        return rows
    ends = _profile_ends(rows)
    keep = None
    for scope, until in covered.items():
        done = pc.and_(pc.equal(rows["scope"], scope), pc.less_equal(ends, until))
        keep = done if keep is None else pc.or_(keep, done)
    assert keep is not None
    return rows.filter(pc.invert(keep))

