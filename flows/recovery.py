"""Where a flow's checkpoints live, and what they may be resumed with.

One recovery store per set of outputs (topic, Iceberg namespace, Redis prefix):
two runs writing different outputs never share state, and a run always resumes
the state that produced the outputs it writes to. The store remembers the shard
count (entities are routed to shards by hash, so changing it would orphan state)
and whether a bounded run already finalized every window.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from bytewax.recovery import RecoveryConfig, init_db_dir

from kappa.errors import ConfigError
from kappa.settings import Settings

FLOW_FILE = "flow.json"
COMPLETE_FILE = "complete.json"


@dataclass(frozen=True, kw_only=True)
class RecoveryStore:
    """A directory of Bytewax recovery partitions plus our two small files."""

    path: Path
    partitions: int
    backup_interval_s: float

    @classmethod
    def for_outputs(cls, settings: Settings, suffix: str = "") -> RecoveryStore:
        """The store of ``settings``' outputs under ``KAPPA_RECOVERY_DIR``.

        ``suffix`` separates a second job writing to the same outputs (a backfill
        of new views into an existing version) from the job that owns them.
        """
        base = settings.recovery_dir or settings.home / "recovery"
        name = f"{settings.topic}--{settings.namespace}--{settings.redis_prefix}"
        if suffix:
            name += f"--{suffix}"
        return cls(path=base / name, partitions=settings.recovery_partitions,
                   backup_interval_s=settings.backup_interval_s)

    @property
    def exists(self) -> bool:
        """Whether a previous run left checkpoints here."""
        return (self.path / FLOW_FILE).exists()

    def open(self, *, shards: int, partitions: int,
             definition: dict[str, Any] | None = None) -> RecoveryConfig:
        """Create the store if new, or check it fits this run; return Bytewax's config.

        Args:
            shards: Feature shard count (entities are routed by hash modulo it).
            partitions: Source partition count.
            definition: The flow's stateful step ids and view definitions; state
                pickled by one definition cannot be resumed by another.

        Raises:
            ConfigError: The store was made with another shard or partition count,
                or by a different flow definition (an upgrade that needs a replay).
        """
        identity = {"shards": shards, "source_partitions": partitions}
        flow_file = self.path / FLOW_FILE
        if flow_file.exists():
            recorded = json.loads(flow_file.read_text())
            if {k: recorded.get(k) for k in identity} != identity:
                msg = (f"recovery store {self.path} was created with "
                       f"{ {k: recorded.get(k) for k in identity} }, this run has {identity}; "
                       "keep KAPPA_SHARDS and the topic's partitions, or write to new outputs "
                       "(KAPPA_NAMESPACE/KAPPA_REDIS_PREFIX)")
                raise ConfigError(msg)
            before = recorded.get("definition")
            if definition is not None and before is not None and before != definition:
                changed = _changes(before, definition)
                msg = (f"recovery state in {self.path} was written by a different flow "
                       f"definition ({changed}); it cannot be resumed. Replay into a new "
                       "version instead: kappa replay --version NAME, then kappa versions "
                       "promote NAME")
                raise ConfigError(msg)
        else:
            self.path.mkdir(parents=True, exist_ok=True)
            init_db_dir(self.path, self.partitions)
            flow_file.write_text(json.dumps({**identity, "definition": definition}))
        return RecoveryConfig(str(self.path),
                              backup_interval=timedelta(seconds=self.backup_interval_s))

    def completed(self) -> dict[str, Any] | None:
        """What a finished bounded run recorded (end offsets of every process), if any."""
        files = sorted(self.path.glob("complete*.json"))
        if not files:
            return None
        ends: dict[str, int] = {}
        for path in files:
            for p, o in json.loads(path.read_text())["end_offsets"].items():
                ends[p] = max(o, ends.get(p, 0))
        return {"end_offsets": ends}

    def mark_completed(self, end_offsets: dict[int, int], process_id: int | None = None) -> None:
        """Record that every window is final up to ``end_offsets`` (this process's partitions)."""
        name = COMPLETE_FILE if not process_id else f"complete-{process_id}.json"
        tmp = self.path / (name + ".tmp")
        tmp.write_text(json.dumps({"end_offsets": {str(p): o for p, o in end_offsets.items()}}))
        tmp.replace(self.path / name)


def flow_definition(steps: tuple[str, ...], views: tuple[Any, ...],
                    routing: Any | None = None) -> dict[str, Any]:
    """The parts of a flow its recovery state depends on.

    ``routing`` (``flows.routing.Routing``): state keys of a multi-worker run; the
    plain one-worker keys add nothing, so one-worker stores keep their definition.
    """
    out: dict[str, Any] = {"steps": list(steps), "views": [v.definition() for v in views]}
    keys = routing.definition() if routing is not None else None
    if keys is not None:
        out["keys"] = keys
    return out


def _changes(before: dict[str, Any], after: dict[str, Any]) -> str:
    """A short human description of what differs between two definitions."""
    notes = []
    if before.get("keys") != after.get("keys"):
        notes.append("worker count (state keys are spread per worker count; resume with the "
                     "same --processes / KAPPA_WORKERS_PER_PROCESS)")
    if before.get("steps") != after.get("steps"):
        notes.append(f"step ids {before.get('steps')} -> {after.get('steps')}")
    old = {v["name"]: v for v in before.get("views", [])}
    new = {v["name"]: v for v in after.get("views", [])}
    for name in sorted(old.keys() | new.keys()):
        if name not in new:
            notes.append(f"view {name} removed")
        elif name not in old:
            notes.append(f"view {name} added")
        elif old[name] != new[name]:
            notes.append(f"view {name} changed")
    return "; ".join(notes) or "definition changed"
