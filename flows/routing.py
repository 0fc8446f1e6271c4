"""State keys that spread over the workers of a multi-worker run.

Bytewax sends every item of a keyed stateful step to the worker its key hashes
to, and with a handful of keys the hash can put them all on one worker:
measured with 2 workers, ``"0"``, ``"1"``, ``"2"`` and ``"3"`` all land on
worker 0, so the validation of every partition and every feature shard ran on
one worker while the other only read Kafka and shipped it everything (two
processes were 1.0x one). Bytewax exposes no routing hook, so we *ask* it:
a tiny probe dataflow on the same number of workers records where candidate
keys and source partitions land, and we pick, per partition, a key that stays
on the worker reading that partition (raw polls are never pickled across
processes) and, per feature shard, keys that spread the shards evenly.

The probe runs the dataflow in threads of this process; Bytewax routes by the
global worker index, so the answer holds for the same worker count spread
over processes too. One worker (the default) needs no probe and keeps the
plain keys ``"0".."n-1"``.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import Any

CANDIDATES = 512
"""Candidate keys probed; plenty for dozens of slots on a few workers."""


@dataclass(frozen=True)
class Routing:
    """Bytewax keys of the per-partition and per-shard steps."""

    partition_keys: tuple[str, ...]
    shard_keys: tuple[str, ...]

    def partition_key(self, partition: int) -> str:
        """The validate step's key of ``partition``."""
        return self.partition_keys[partition]

    def definition(self) -> dict[str, Any] | None:
        """What recovery state depends on (``None`` for the plain one-worker keys)."""
        if self.partition_keys == plain(len(self.partition_keys)) and \
                self.shard_keys == plain(len(self.shard_keys)):
            return None
        return {"partitions": list(self.partition_keys), "shards": list(self.shard_keys)}


def plain(n: int) -> tuple[str, ...]:
    """The one-worker keys ``"0".."n-1"``."""
    return tuple(str(i) for i in range(n))


@functools.cache
def routing_for(workers: int, partitions: int, shards: int) -> Routing:
    """Keys for ``partitions`` validate slots and ``shards`` feature shards on ``workers``."""
    if workers <= 1:
        return Routing(plain(partitions), plain(shards))
    key_worker, part_worker = _probe(workers, partitions)
    by_worker: dict[int, list[str]] = {w: [] for w in range(workers)}
    for key in sorted(key_worker, key=lambda k: int(k[1:])):
        by_worker[key_worker[key]].append(key)
    taken: set[str] = set()

    def take(worker: int) -> str:
        for key in by_worker[worker]:
            if key not in taken:
                taken.add(key)
                return key
        msg = f"no free probe key routes to worker {worker} of {workers}"
        raise RuntimeError(msg)

    partition_keys = tuple(take(part_worker[p]) for p in range(partitions))
    shard_keys = tuple(take(s % workers) for s in range(shards))
    return Routing(partition_keys, shard_keys)


def _probe(workers: int, partitions: int) -> tuple[dict[str, int], dict[int, int]]:
    """Where Bytewax puts candidate state keys and source partitions, by worker index."""
    import bytewax.operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
    from bytewax.outputs import DynamicSink, StatelessSinkPartition
    from bytewax.testing import cluster_main

    lock = threading.Lock()
    worker_of_thread: dict[int, int] = {}
    part_thread: dict[int, int] = {}
    key_thread: dict[str, int] = {}

    class _Part(StatefulSourcePartition[str, None]):
        def __init__(self, keys: list[str]) -> None:
            self._keys: list[str] | None = keys

        def next_batch(self) -> list[str]:
            if self._keys is None:
                raise StopIteration
            keys, self._keys = self._keys, None
            return keys

        def snapshot(self) -> None:
            return None

    class _Source(FixedPartitionedSource[str, None]):
        def list_parts(self) -> list[str]:
            return [str(p) for p in range(partitions)]

        def build_part(self, step_id: str, for_part: str, resume_state: None) -> _Part:
            with lock:
                part_thread[int(for_part)] = threading.get_ident()
            # Every candidate key comes from partition 0 only, once.
            return _Part([f"k{i}" for i in range(CANDIDATES)] if for_part == "0" else [])

    class _Seen(StatelessSinkPartition[Any]):
        def write_batch(self, items: list[Any]) -> None:
            with lock:
                for key, _ in items:
                    key_thread[key] = threading.get_ident()

    class _Sink(DynamicSink[Any]):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> _Seen:
            with lock:
                worker_of_thread[threading.get_ident()] = worker_index
            return _Seen()

    flow = Dataflow("kappa_routing_probe")
    keyed = op.key_on("key", op.input("in", flow, _Source()), lambda k: k)
    # A stateful step: its output is produced on the worker that owns the key.
    owned = op.stateful_map("own", keyed, lambda state, k: (state, k))
    op.output("out", owned, _Sink())
    cluster_main(flow, [], 0, worker_count_per_proc=workers)
    return ({k: worker_of_thread[t] for k, t in key_thread.items()},
            {p: worker_of_thread[t] for p, t in part_thread.items()})
