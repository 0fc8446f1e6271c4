"""Re-publish quarantined records to their source topic, exactly once each.

A redrive re-publishes each selected record to the *source* topic, in the
partition it came from, with its original key and headers (value fixed by
``--fix`` or the original bytes) and ``kappa.redriven=1``,
``kappa.redrive.of=<topic>/<partition>/<offset>``. Exactly once per quarantined
record, across crashes and reruns, through the ledger in ``sinks.redrive_ledger``.
The records come from the DLQ topic (``sinks.dlq_reader``). Keeping the source
partition keeps an event and its re-sends together, which is what makes the
flow's per-partition dedup ("first by offset") and lateness clock apply.

Lateness: a redriven record is a *new* record, so its Kafka timestamp is now,
and it lands in its partition's clock order. The flow's rule is deterministic:
an event is late when its ``ts`` is more than the allowed lateness behind its
partition's ingest clock (running max of record timestamps). A redriven event
whose ``ts`` is far in the past is therefore late again — quarantined as
``late`` — unless the fix moves ``ts`` (or the lateness is raised). Rewriting
the record timestamp to the event's own time instead would put it behind its
partition's clock, where the same rule calls it late anyway, and would break
the non-decreasing record time that seek-by-time relies on.

With ``--fix``, a fixed event that the flow's field rules or future check would
reject at once is not produced (``still_invalid``); it stays quarantined for a
better fix. The summary's ``will_be_late`` forecasts how many produced events
the flow will call late again (their ts is older than now minus this process's
``KAPPA_ALLOWED_LATENESS_S``).

A quarantined record that is itself a redrive (its headers carry
``kappa.redriven``) failed again; it is skipped unless asked for, so redriving
the same selection twice cannot loop a record through the flow.
"""

from __future__ import annotations

import base64
import runpy
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer

from flows.validate import check_fields
from kappa.errors import ConfigError, SchemaError
from kappa.settings import Settings
from schemas.registry import SUBJECT, open_registry
from schemas.serde import DecodeError, Decoder, encode
from sinks.dlq_reader import (
    REDRIVE_OF,
    REDRIVEN,
    QuarantinedRecord,
    Selection,
    find_record,
    open_consumer,
    read_quarantine,
    text,
    topic_partitions,
)
from sinks.redrive_ledger import CHUNK, Intent, Item, Ledger, Publisher, origin_text

_ERROR_SAMPLES = 20

Fix = Callable[[dict[str, Any]], dict[str, Any] | None]


def describe(settings: Settings, rec: QuarantinedRecord, redriven: bool) -> dict[str, Any]:
    """``show``: the record in full, its payload decoded when it decodes."""
    payload: dict[str, Any] = {"bytes": len(rec.value or b"")}
    try:
        event, schema_id = Decoder(open_registry(settings.schema_registry_url)).decode(
            rec.value or b"")
        payload.update(decoded=event, schema_id=schema_id)
    except DecodeError as exc:
        payload.update(decoded=None, decode_error=str(exc), hex=(rec.value or b"").hex(),
                       base64=base64.b64encode(rec.value or b"").decode())
    return {**rec.summary(redriven), "schema_id": rec.schema_id,
            "headers": [[n, text(v)] for n, v in rec.headers],
            "original_headers": [[n, text(v)] for n, v in rec.original_headers],
            "payload": payload}


def load_fix(path: str | Path) -> Fix:
    """The ``fix(event) -> event | None`` function of a Python file.

    Raises:
        ConfigError: The file is missing, does not run, or defines no callable ``fix``.
    """
    try:
        namespace = runpy.run_path(str(path))
    except Exception as exc:  # noqa: BLE001 - any failure of the user's script is one line
        msg = f"--fix {path}: cannot load: {type(exc).__name__}: {exc}"
        raise ConfigError(msg) from exc
    fix = namespace.get("fix")
    if not callable(fix):
        msg = f"--fix {path}: defines no function fix(event: dict) -> dict | None"
        raise ConfigError(msg)
    return fix  # type: ignore[no-any-return]


@dataclass(frozen=True, kw_only=True)
class Prepared:
    """A record ready to re-publish."""

    record: QuarantinedRecord
    value: bytes | None
    ts: int | None = None
    """The event's ``ts`` when it decodes (for the lateness forecast)."""

    @property
    def item(self) -> Item:
        """Its ledger item."""
        rec = self.record
        return (rec.source_partition, rec.source_offset, rec.dlq_partition, rec.dlq_offset)

    def headers(self) -> list[tuple[str, bytes | None]]:
        """Original headers (minus an earlier redrive's marks) plus this redrive's marks."""
        rec = self.record
        own = [(n, v) for n, v in rec.original_headers if n not in (REDRIVEN, REDRIVE_OF)]
        return [*own, (REDRIVEN, b"1"),
                (REDRIVE_OF, origin_text(rec.source_topic, *rec.origin).encode())]


class Redriver:
    """The steps of a redrive (a test drives them one by one to simulate a crash)."""

    def __init__(self, settings: Settings, fix: Fix | None = None) -> None:
        self.settings = settings
        self.kafka = settings.kafka_client_config()
        self.fix = fix
        registry = open_registry(settings.schema_registry_url)
        self.decoder = Decoder(registry)
        self.schema = registry.latest(SUBJECT)
        topic_partitions(self.kafka, settings.topic)
        self.ledger = Ledger.load(self.kafka, settings.topic)
        self.consumer: Consumer = open_consumer(self.kafka, f"kappa-redrive-{settings.topic}")
        self._publisher: Publisher | None = None

    @property
    def publisher(self) -> Publisher:
        """Made on first use, so a dry run never creates a producer."""
        if self._publisher is None:
            self._publisher = Publisher(self.kafka)
        return self._publisher

    def prepare(self, rec: QuarantinedRecord) -> Prepared | tuple[str, str]:
        """The record to publish, or ``(outcome, detail)`` why not."""
        try:
            event: dict[str, Any] | None = self.decoder.decode(rec.value or b"")[0]
        except DecodeError as exc:
            if self.fix is not None:
                return "undecodable", str(exc)
            event = None
        if self.fix is None or event is None:
            return Prepared(record=rec, value=rec.value, ts=event["ts"] if event else None)
        try:
            fixed = self.fix(event)
        except Exception as exc:  # noqa: BLE001 - the user's fix failing is data, not a crash
            return "fix_errors", f"fix raised {type(exc).__name__}: {exc}"
        if fixed is None:
            return "skipped_by_fix", ""
        if not isinstance(fixed, dict):
            return "fix_errors", f"fix returned {type(fixed).__name__}, not dict or None"
        problem = check_fields(fixed)
        if problem is not None:
            return "still_invalid", f"{problem[0]}: {problem[1]}"
        try:
            value = encode(fixed, self.schema)
        except SchemaError as exc:
            return "fix_errors", str(exc)
        # The record is stamped now, so a ts beyond the tolerance would be quarantined at once.
        ahead_ms = fixed["ts"] - time.time_ns() // 1_000_000
        if ahead_ms > self.settings.future_tolerance_s * 1000:
            return "still_invalid", f"future_timestamp: ts is {ahead_ms / 1000:.0f}s after now"
        return Prepared(record=rec, value=value, ts=fixed["ts"])

    def will_be_late(self, prepared: list[Prepared]) -> int:
        """How many the flow will call late again (forecast with this process's lateness).

        Their record timestamp is now and a partition clock never goes back, so an
        event whose ts is older than now minus the lateness is certainly late.
        """
        cutoff = time.time_ns() // 1_000_000 - int(self.settings.allowed_lateness_s * 1000)
        return sum(1 for p in prepared if p.ts is not None and p.ts < cutoff)

    def begin(self, chunk: list[Prepared]) -> Intent:
        """Write the chunk's open intent (creating the ledger topic on first use)."""
        self.ledger.ensure_topic()
        return self.ledger.begin(self.publisher, self.consumer, [p.item for p in chunk])

    def publish(self, chunk: Iterable[Prepared]) -> None:
        """Produce to the source partitions, timestamped now, and wait for every ack."""
        for p in chunk:
            self.publisher.send(self.settings.topic, partition=p.record.source_partition,
                                key=p.record.key, value=p.value, headers=p.headers(),
                                timestamp_ms=time.time_ns() // 1_000_000)
        self.publisher.flush()

    def reconcile(self, *, write: bool = True) -> int:
        """Settle intents a crash left open; how many of their records are on the topic."""
        open_intents = self.ledger.open_intents()
        if not open_intents:
            return 0
        found = self.ledger.find_produced(self.consumer, open_intents)
        for intent in open_intents:
            if write:
                self.ledger.finish(self.publisher, intent, found)
            else:  # a dry run: account for them without writing
                self.ledger.intents[intent.id] = Intent(
                    id=intent.id, state="done", created_ms=intent.created_ms, ends=intent.ends,
                    items=tuple(i for i in intent.items if (i[0], i[1]) in found))
        return len(found)

    def run(self, selection: Selection, *, include_redriven: bool = False,
            dry_run: bool = False) -> dict[str, Any]:
        """Reconcile, select, prepare and publish in ledger-guarded chunks; the JSON summary."""
        recovered = self.reconcile(write=not dry_run)
        records, _ = read_quarantine(self.settings, selection)
        done = self.ledger.done_origins()
        counts: Counter[str] = Counter()
        errors: list[dict[str, Any]] = []
        todo: list[Prepared] = []
        for rec in records:
            if rec.source_topic != self.settings.topic:
                counts["other_topic"] += 1
            elif rec.origin in done:
                counts["already_redriven"] += 1
            elif rec.redrive_of is not None and not include_redriven:
                counts["skipped_redrives"] += 1
            else:
                outcome = self.prepare(rec)
                if isinstance(outcome, Prepared):
                    todo.append(outcome)
                    continue
                counts[outcome[0]] += 1
                if outcome[0] != "skipped_by_fix" and len(errors) < _ERROR_SAMPLES:
                    errors.append({"source": f"{rec.source_partition}:{rec.source_offset}",
                                   "outcome": outcome[0], "error": outcome[1]})
        if not dry_run:
            for start in range(0, len(todo), CHUNK):
                chunk = todo[start:start + CHUNK]
                intent = self.begin(chunk)
                self.publish(chunk)
                self.ledger.finish(self.publisher, intent, intent.origins())
        summary = {"topic": self.settings.topic, "dlq": self.settings.quarantine_topic,
                   "dry_run": dry_run, "matched": len(records),
                   "redriven": 0 if dry_run else len(todo),
                   "already_redriven": counts["already_redriven"],
                   "skipped_by_fix": counts["skipped_by_fix"], "fix_errors": counts["fix_errors"],
                   "still_invalid": counts["still_invalid"], "undecodable": counts["undecodable"],
                   "skipped_redrives": counts["skipped_redrives"],
                   "other_topic": counts["other_topic"], "recovered_from_crash": recovered,
                   "will_be_late": self.will_be_late(todo),
                   "errors": errors}
        if dry_run:
            summary["would_redrive"] = len(todo)
        return summary

    def close(self) -> None:
        """Release the clients (everything produced was already flushed)."""
        self.consumer.close()


def redrive(settings: Settings, selection: Selection, *, fix_path: str | None = None,
            include_redriven: bool = False, dry_run: bool = False) -> dict[str, Any]:
    """``kappa quarantine redrive``: see the module docstring."""
    fix = load_fix(fix_path) if fix_path else None
    redriver = Redriver(settings, fix)
    try:
        return redriver.run(selection, include_redriven=include_redriven, dry_run=dry_run)
    finally:
        redriver.close()


def list_quarantine(settings: Settings, selection: Selection, limit: int) -> dict[str, Any]:
    """``kappa quarantine list``: counts by reason and the first ``limit`` records."""
    records, ends = read_quarantine(settings, selection)
    ledger = Ledger.load(settings.kafka_client_config(), settings.topic)
    done = ledger.done_origins()
    rows = [r.summary(r.source_topic == settings.topic and r.origin in done) for r in records]
    return {"dlq": settings.quarantine_topic, "end_offsets": {str(p): e for p, e in ends.items()},
            "open_redrives": len(ledger.open_intents()),
            "matched": len(records), "by_reason": dict(sorted(Counter(r.reason for r in records).items())),
            "redriven": sum(1 for r in rows if r["redriven"]),
            "records": rows[:limit], "truncated": len(rows) > limit}


def show(settings: Settings, partition: int, offset: int, *, dlq: bool = False) -> dict[str, Any]:
    """``kappa quarantine show``: one record in full."""
    rec, others = find_record(settings, partition, offset, dlq=dlq)
    done = Ledger.load(settings.kafka_client_config(), settings.topic).done_origins()
    doc = describe(settings, rec, rec.source_topic == settings.topic and rec.origin in done)
    doc["other_copies"] = others
    return doc
