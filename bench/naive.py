"""The peer to beat: the four views written the obvious Bytewax way, one event per item.

    python -m bench.naive   (normally run by ``make bench``)

Bytewax's own ``KafkaSource`` (one item per record), a per-event decode and
validity filter, and per view one keyed ``fold_window`` (its ``EventClock``
and tumbling/sliding/session windowers) — what the Bytewax docs show. It does
*less* than ``kappa run``: no dedup, no lateness quarantine, no Redis, Iceberg or
DLQ writes (closed windows go to a counting sink), so its rate flatters it.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import bytewax.operators as op
import bytewax.operators.windowing as win
from bytewax.connectors.kafka import KafkaSource
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.testing import run_main

from flows.validate import check_fields
from flows.views import DEFAULT_VIEWS, Session, Sliding, Tumbling
from kappa.settings import Settings
from schemas.registry import SUBJECT, open_registry
from schemas.serde import Decoder

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class _Count(StatelessSinkPartition[Any]):
    def __init__(self, box: list[int]) -> None:
        self._box = box

    def write_batch(self, items: list[Any]) -> None:
        self._box[0] += len(items)


class CountingSink(DynamicSink[Any]):
    """Counts what reaches it (closed windows), keeps nothing."""

    def __init__(self) -> None:
        self.box = [0]

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Count:
        """One counting partition per worker, all adding to the same box."""
        return _Count(self.box)


class _BudgetedPart(StatefulSourcePartition[Any, Any]):
    def __init__(self, inner: Any, deadline: float, box: list[int]) -> None:
        self._inner = inner
        self._deadline = deadline
        self._box = box

    def next_batch(self) -> list[Any]:
        if time.monotonic() > self._deadline:
            raise StopIteration
        batch = self._inner.next_batch()
        self._box[0] += len(batch)
        return batch

    def next_awake(self) -> Any:
        return self._inner.next_awake()

    def snapshot(self) -> Any:
        return self._inner.snapshot()

    def close(self) -> None:
        self._inner.close()


class BudgetedSource(FixedPartitionedSource[Any, Any]):
    """A source that ends its partitions at a deadline and counts what they read.

    The per-event baseline slows down as its state grows (Bytewax's session
    windower scans a key's sessions on every activation), so a full 1M run can
    take most of an hour; a time budget measures its rate over the first part
    of the log instead, where its state is smallest (which flatters it).
    """

    def __init__(self, inner: FixedPartitionedSource[Any, Any], budget_s: float) -> None:
        self._inner = inner
        self._budget = budget_s
        self.box = [0]
        self._deadline = 0.0

    def list_parts(self) -> list[str]:
        """The wrapped source's partitions; the clock starts when they are listed."""
        self._deadline = time.monotonic() + self._budget
        return self._inner.list_parts()

    def build_part(self, step_id: str, for_part: str, resume_state: Any) -> _BudgetedPart:
        """The wrapped partition, ending at the deadline."""
        return _BudgetedPart(self._inner.build_part(step_id, for_part, resume_state),
                             self._deadline, self.box)


def _windower(view: Any) -> Any:
    w = view.window
    if isinstance(w, Tumbling):
        return win.TumblingWindower(length=timedelta(seconds=w.size_s), align_to=EPOCH)
    if isinstance(w, Sliding):
        return win.SlidingWindower(length=timedelta(seconds=w.size_s),
                                   offset=timedelta(seconds=w.hop_s), align_to=EPOCH)
    assert isinstance(w, Session)
    return win.SessionWindower(gap=timedelta(seconds=w.gap_s))


def _fold(acc: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    acc["count"] += 1
    if event["event_type"] == "purchase":
        acc["purchases"] += 1
        acc["amount"] += event.get("amount") or 0.0
        acc["max"] = max(acc["max"], event.get("amount") or 0.0)
    acc["items"].add(event["item_id"])
    return acc


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    a["count"] += b["count"]
    a["purchases"] += b["purchases"]
    a["amount"] += b["amount"]
    a["max"] = max(a["max"], b["max"])
    a["items"] |= b["items"]
    return a


def _new() -> dict[str, Any]:
    return {"count": 0, "purchases": 0, "amount": 0.0, "max": 0.0, "items": set()}


def _event_time(event: dict[str, Any]) -> datetime:
    return EPOCH + timedelta(milliseconds=event["ts"])


def _entity_getter(field: str) -> Any:
    def entity(event: dict[str, Any]) -> str:
        return str(event[field])

    return entity


def build_naive_flow(settings: Settings, sink: CountingSink, budget_s: float) -> tuple[
        Dataflow, BudgetedSource]:
    """One item per record, per-event decode, one keyed windowed fold per view."""
    registry = open_registry(settings.schema_registry_url)
    decode = Decoder(registry, registry.latest(SUBJECT)).decode
    flow = Dataflow("naive")
    source = KafkaSource([settings.require_bootstrap()], [settings.topic], tail=False,
                         add_config={k: str(v) for k, v in settings.kafka_client_config().items()
                                     if k != "bootstrap.servers"}, raise_on_errors=False)
    budgeted = BudgetedSource(source, budget_s)
    msgs = op.input("in", flow, budgeted)

    def parse(msg: Any) -> dict[str, Any] | None:
        try:
            event = decode(msg.value or b"")[0]
        except Exception:  # noqa: BLE001 - bad records are dropped in the baseline
            return None
        return event if check_fields(event) is None else None

    events = op.filter_map("decode", msgs, parse)
    lateness = timedelta(seconds=settings.allowed_lateness_s)
    clock: win.EventClock[dict[str, Any]] = win.EventClock(
        _event_time, wait_for_system_duration=lateness)
    for view in DEFAULT_VIEWS:
        keyed = op.key_on(f"key_{view.name}", events, _entity_getter(view.entity))
        out = win.fold_window(f"fold_{view.name}", keyed, clock, _windower(view), _new, _fold,
                              _merge)
        op.output(f"out_{view.name}", out.down, sink)
    return flow, budgeted


def measure_naive(settings: Settings, budget_s: float = 120.0) -> dict[str, Any]:
    """Run the naive flow over the topic until its end or ``budget_s`` seconds."""
    sink = CountingSink()
    flow, source = build_naive_flow(settings, sink, budget_s)
    cpu0, started = os.times(), time.perf_counter()
    run_main(flow)
    seconds = time.perf_counter() - started
    cpu = os.times()
    consumed = source.box[0]
    return {"consumed": consumed, "budget_s": budget_s, "windows_emitted": sink.box[0],
            "seconds": round(seconds, 3),
            "cpu_seconds": round(cpu.user - cpu0.user + cpu.system - cpu0.system, 3),
            "events_per_s": round(consumed / seconds, 1)}
