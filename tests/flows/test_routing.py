"""State keys spread over workers, and partitions validate where they are read."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.testing import TestingSink, TestingSource, cluster_main

from flows.recovery import _changes, flow_definition
from flows.routing import routing_for
from flows.views import DEFAULT_VIEWS


def threads_of(keys: list[str], workers: int) -> dict[str, int]:
    flow = Dataflow("t")
    keyed = op.key_on("k", op.input("in", flow, TestingSource(keys * 3)), lambda k: k)
    out: list[Any] = []
    op.output("o", op.stateful_map("s", keyed, lambda st, k: (st, threading.get_ident())),
              TestingSink(out))
    cluster_main(flow, [], 0, worker_count_per_proc=workers)
    seen: dict[str, set[int]] = {}
    for key, thread in out:
        seen.setdefault(key, set()).add(thread)
    assert all(len(t) == 1 for t in seen.values())
    return {k: next(iter(t)) for k, t in seen.items()}


def test_one_worker_keeps_the_plain_keys() -> None:
    r = routing_for(1, 4, 4)
    assert r.partition_keys == r.shard_keys == ("0", "1", "2", "3") and r.definition() is None


def test_plain_keys_pile_up_on_one_worker_and_routed_keys_do_not() -> None:
    # The reason for flows.routing: Bytewax hashes "0".."3" onto one worker of two.
    assert len(set(threads_of(["0", "1", "2", "3"], 2).values())) == 1
    shard_keys = list(routing_for(2, 4, 4).shard_keys)
    assert sorted(Counter(threads_of(shard_keys, 2).values()).values()) == [2, 2]
    assert sorted(Counter(threads_of(list(routing_for(3, 4, 6).shard_keys), 3).values()
                          ).values()) == [2, 2, 2]


class _Part(StatefulSourcePartition[Any, None]):
    def __init__(self, partition: int, key: str) -> None:
        self._items: list[Any] | None = [(key, (partition, threading.get_ident()))] * 5

    def next_batch(self) -> list[Any]:
        if self._items is None:
            raise StopIteration
        items, self._items = self._items, None
        return items

    def snapshot(self) -> None:
        return None


class _Source(FixedPartitionedSource[Any, None]):
    def __init__(self, keys: tuple[str, ...]) -> None:
        self._keys = keys

    def list_parts(self) -> list[str]:
        return [str(p) for p in range(len(self._keys))]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _Part:
        return _Part(int(for_part), self._keys[int(for_part)])


def test_each_partition_is_validated_on_the_worker_that_reads_it() -> None:
    routing = routing_for(2, 4, 4)
    flow = Dataflow("t")
    items = op.input("in", flow, _Source(routing.partition_keys))
    out: list[Any] = []
    local = op.stateful_map("s", items,
                            lambda st, v: (st, (v[0], v[1] == threading.get_ident())))
    op.output("o", local, TestingSink(out))
    cluster_main(flow, [], 0, worker_count_per_proc=2)
    assert {p for _, (p, _) in out} == {0, 1, 2, 3}
    assert all(same for _, (_, same) in out)


def test_a_different_worker_count_is_a_different_recovery_definition() -> None:
    one = flow_definition(("a",), DEFAULT_VIEWS, routing_for(1, 4, 4))
    two = flow_definition(("a",), DEFAULT_VIEWS, routing_for(2, 4, 4))
    assert one == flow_definition(("a",), DEFAULT_VIEWS)  # one-worker stores unchanged
    assert one != two and "worker count" in _changes(one, two)
