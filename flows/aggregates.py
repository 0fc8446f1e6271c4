"""Mergeable aggregate state for one (entity, window), compiled from a view.

State is a plain list (cheap to create, update and pickle): one slot per base
feature, then ``[n_events, first_ts, last_ts, last_ingest_ms]``. A sum is kept
exactly, as Shewchuk's non-overlapping partials (:func:`add_exact`, the
algorithm inside ``math.fsum``), and totalled with ``math.fsum``, which rounds
exactly once: a sum does not depend on the order events arrived in, so a live
run, a replay and the batch reference give bit-identical values. Keeping every
term instead (as this did before) gave the same values but made a hot entity's
state and every live flush of it grow with its event count.

The per-view programs (new, add, merge, copy, finish) are generated as Python
source and compiled once per view. Why not a loop over the view's features:
``add`` runs once per event and view and ``finish``/``merge`` once per emitted
window, and interpreting the feature list there (a branch per kind, a tuple
unpacked per feature) cost about three times as much as straight-line code.
No library compiles mergeable aggregates over Python dicts; the generated code
only ever embeds ``repr``-quoted field names and slot indexes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from flows.views import FeatureView

Agg = list[Any]


def add_exact(partials: list[float], x: float) -> None:
    """Add ``x`` to an exact sum held as partials (Shewchuk's ``msum`` step).

    Afterwards the partials still sum *exactly* to every value added so far
    (each step is an error-free two-sum), so ``math.fsum(partials)`` is the
    correctly rounded total, the same as ``fsum`` of all the terms in any order.
    Any list of floats is a valid start (old states kept the terms themselves).
    The list stays short: its entries do not overlap in their bits. Why by hand:
    ``math.fsum`` keeps its partials internal, and no library offers a running
    exact float sum.
    """
    i = 0
    for y in partials:
        if abs(x) < abs(y):
            x, y = y, x
        hi = x + y
        lo = y - (hi - x)
        if lo:
            partials[i] = lo
            i += 1
        x = hi
    partials[i:] = [x]

_BASE_KINDS = ("count", "sum", "max", "distinct")
_EMPTY = {"count": "0", "sum": "None", "max": "None", "distinct": "set()"}
"""A sum starts as ``None`` (no term yet), not ``[]``: most windows never see a
purchase, and an empty list per window was ~17 MB of state at 1M events. States
snapshotted with ``[]`` still work (an empty list totals 0.0 like ``None``)."""


def _program(view: FeatureView) -> tuple[str, dict[str, Any], int]:
    """Source of the view's functions, their globals, and the number of base slots."""
    base = [f for f in view.features if f.agg in _BASE_KINDS]
    slot = {f.name: i for i, f in enumerate(base)}
    b = len(base)
    env: dict[str, Any] = {"fsum": math.fsum, "add_exact": add_exact}
    where_names: dict[frozenset[str], str] = {}

    def where_of(where: frozenset[str]) -> str:
        if where not in where_names:
            where_names[where] = f"W{len(where_names)}"
            env[where_names[where]] = where
        return where_names[where]

    empty = ", ".join([*(_EMPTY[f.agg] for f in base), "0", "None", "None", "0"])
    lines = ["def new():", f"    return [{empty}]", "", "def add(agg, event):"]
    if any(f.where is not None for f in base):
        lines.append('    et = event["event_type"]')
    for f in base:
        i, pad = slot[f.name], "    "
        if f.where is not None:
            lines.append(f"    if et in {where_of(f.where)}:")
            pad = "        "
        if f.agg == "count":
            lines.append(f"{pad}agg[{i}] += 1")
        elif f.agg == "sum":
            lines += [f"{pad}v = event[{f.field!r}]", f"{pad}if v is not None:",
                      f"{pad}    p = agg[{i}]", f"{pad}    if p is None:",
                      f"{pad}        agg[{i}] = [v]", f"{pad}    else:",
                      f"{pad}        add_exact(p, v)"]
        elif f.agg == "max":
            lines += [f"{pad}v = event[{f.field!r}]",
                      f"{pad}if v is not None and (agg[{i}] is None or v > agg[{i}]):",
                      f"{pad}    agg[{i}] = v"]
        else:
            lines.append(f"{pad}agg[{i}].add(event[{f.field!r}])")
    lines += [
        '    ts = event["ts"]', f"    agg[{b}] += 1",
        f"    first = agg[{b + 1}]", "    if first is None:",
        f"        agg[{b + 1}] = agg[{b + 2}] = ts",
        "    elif ts < first:", f"        agg[{b + 1}] = ts",
        f"    elif ts > agg[{b + 2}]:", f"        agg[{b + 2}] = ts",
        '    ingest = event["ingest_ts"]', f"    if ingest > agg[{b + 3}]:",
        f"        agg[{b + 3}] = ingest", "",
        "def merge(into, other):",
    ]
    copied = []
    for f in base:
        i = slot[f.name]
        if f.agg == "count":
            lines.append(f"    into[{i}] += other[{i}]")
            copied.append(f"other[{i}]")
        elif f.agg == "sum":
            lines += [f"    if other[{i}]:", f"        p = into[{i}]", "        if p is None:",
                      f"            into[{i}] = list(other[{i}])", "        else:",
                      f"            for v in other[{i}]:", "                add_exact(p, v)"]
            copied.append(f"None if other[{i}] is None else list(other[{i}])")
        elif f.agg == "max":
            lines += [f"    v = other[{i}]",
                      f"    if v is not None and (into[{i}] is None or v > into[{i}]):",
                      f"        into[{i}] = v"]
            copied.append(f"other[{i}]")
        else:
            lines.append(f"    into[{i}] |= other[{i}]")
            copied.append(f"set(other[{i}])")
    copied += [f"other[{b + k}]" for k in range(4)]
    lines += [
        f"    into[{b}] += other[{b}]",
        f"    v = other[{b + 1}]",
        f"    if v is not None and (into[{b + 1}] is None or v < into[{b + 1}]):",
        f"        into[{b + 1}] = v",
        f"    v = other[{b + 2}]",
        f"    if v is not None and (into[{b + 2}] is None or v > into[{b + 2}]):",
        f"        into[{b + 2}] = v",
        f"    if other[{b + 3}] > into[{b + 3}]:",
        f"        into[{b + 3}] = other[{b + 3}]", "",
        "def copy(other):", f"    return [{', '.join(copied)}]", "",
        "def finish_values(agg):",
    ]
    local = {f.name: f"f{k}" for k, f in enumerate(view.features)}
    for f in view.features:
        name = local[f.name]
        if f.agg in ("count", "max"):
            lines.append(f"    {name} = agg[{slot[f.name]}]")
        elif f.agg == "sum":
            lines.append(f"    {name} = fsum(agg[{slot[f.name]}] or ())")
        elif f.agg == "distinct":
            lines.append(f"    {name} = len(agg[{slot[f.name]}])")
        elif f.agg == "duration":
            lines.append(f"    {name} = (agg[{b + 2}] - agg[{b + 1}]) / 1000.0")
    done = {f.name for f in view.features if f.agg != "ratio"}
    for f in view.features:
        if f.agg != "ratio":
            continue
        assert f.ratio_of is not None
        num, den = f.ratio_of
        if num not in done or den not in done:
            msg = f"view {view.name!r}: ratio {f.name!r} refers to a ratio defined after it"
            raise ValueError(msg)
        lines.append(f"    {local[f.name]} = None if not {local[den]} else "
                     f"{local[num]} / {local[den]}")
        done.add(f.name)
    body = lines[lines.index("def finish_values(agg):") + 1:]
    lines.append(f"    return ({', '.join(local[f.name] for f in view.features)},)")
    # The same body returning a dict literal: a live flush builds one per dirty
    # entity and view, and dict(zip(names, values)) cost twice as much.
    lines += ["", "def finish_map(agg):", *body,
              "    return {" + ", ".join(f"{f.name!r}: {local[f.name]}" for f in view.features)
              + "}"]
    return "\n".join(lines) + "\n", env, b


class AggSpec:
    """The per-view aggregation program: create, add, merge, finish."""

    new: Callable[[], Agg]
    """An empty aggregate."""
    add: Callable[[Agg, dict[str, Any]], None]
    """Count one event into ``agg``."""
    merge: Callable[[Agg, Agg], None]
    """Fold ``other`` into ``into`` (both of this spec)."""
    copy: Callable[[Agg], Agg]
    """A deep-enough copy (lists and sets duplicated)."""
    finish_values: Callable[[Agg], tuple[Any, ...]]
    """The feature vector as a tuple in view order (what history columns take)."""

    def __init__(self, view: FeatureView) -> None:
        self.view = view
        source, env, self._base = _program(view)
        self.source = source
        """The generated program (for debugging: ``print(spec.source)``)."""
        exec(compile(source, f"<aggregates of view {view.name}>", "exec"), env)  # noqa: S102
        self.new, self.add, self.merge = env["new"], env["add"], env["merge"]
        self.copy, self.finish_values = env["copy"], env["finish_values"]
        self.finish_map: Callable[[Agg], dict[str, Any]] = env["finish_map"]

    def __getstate__(self) -> dict[str, Any]:
        # Compiled functions do not pickle; the view recompiles them.
        return {"view": self.view}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["view"])  # type: ignore[misc]

    def count(self, agg: Agg) -> int:
        """Counted events in the aggregate."""
        return int(agg[self._base])

    def first_ts(self, agg: Agg) -> int:
        """Earliest event ts."""
        return int(agg[self._base + 1])

    def last_ts(self, agg: Agg) -> int:
        """Latest event ts."""
        return int(agg[self._base + 2])

    def last_ingest(self, agg: Agg) -> int:
        """Latest record timestamp among the counted events."""
        return int(agg[self._base + 3])

    def finish(self, agg: Agg) -> dict[str, Any]:
        """The feature vector, with derived features (ratios, duration) computed."""
        return self.finish_map(agg)
