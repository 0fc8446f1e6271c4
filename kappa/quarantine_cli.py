"""``kappa quarantine list|show|redrive``: inspect the dead-letter topic and redrive from it.

:func:`add_commands` registers them on ``kappa``'s subparsers (kappa/cli.py
calls it), like ``serving.commands``. The logic is in ``sinks.redrive`` and
``sinks.redrive_ledger``; this module only turns arguments into calls.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from kappa.cliargs import emit, positive_int
from kappa.errors import ConfigError

AddFn = Callable[..., argparse.ArgumentParser]

_TIME_HELP = "record time: ISO-8601 (UTC if no offset), epoch milliseconds, 'earliest' or 'now'"
_LATENESS_NOTE = (
    "A redriven record is a new record: it gets a new Kafka timestamp (now) and goes to the "
    "partition it came from, so it lands in that partition's ingest-clock order. Lateness "
    "stays the flow's deterministic rule: an event whose ts is more than the allowed lateness "
    "(KAPPA_ALLOWED_LATENESS_S) behind its partition's clock is late, so a redriven event with "
    "an old ts is quarantined again as `late` unless the fix moves ts.")


def time_arg(text: str) -> int | None:
    """Argparse type: epoch ms, or what ``kappa replay`` accepts (None: unbounded)."""
    value = text.strip()
    if value.lstrip("-").isdigit():
        return int(value)
    from kappa.cliargs import parse_time

    try:
        return parse_time(value)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def coordinates(text: str) -> tuple[int, int]:
    """Argparse type: ``PARTITION:OFFSET``."""
    part, sep, off = text.partition(":")
    if not sep or not part.isdigit() or not off.isdigit():
        msg = f"expected PARTITION:OFFSET (e.g. 2:1041), got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return int(part), int(off)


def _settings(args: argparse.Namespace) -> Any:
    from kappa.settings import Settings

    return Settings.from_env().with_topic(getattr(args, "topic", None))


def _selection(args: argparse.Namespace) -> Any:
    from flows.validate import REASONS
    from sinks.redrive import Selection

    reasons = frozenset(r.strip() for r in args.reason.split(",") if r.strip()) if args.reason else None
    unknown = sorted((reasons or frozenset()) - set(REASONS))
    if unknown:
        msg = f"unknown reason {', '.join(unknown)}; reasons are {', '.join(REASONS)}"
        raise ConfigError(msg)
    if args.from_ is not None and args.to is not None and args.from_ >= args.to:
        msg = "--from must be before --to"
        raise ConfigError(msg)
    return Selection(reasons=reasons, from_ms=args.from_, to_ms=args.to)


def cmd_list(args: argparse.Namespace) -> None:
    """Counts by reason and the matching records' coordinates."""
    from sinks.redrive import list_quarantine

    emit(list_quarantine(_settings(args), _selection(args), args.limit))


def cmd_show(args: argparse.Namespace) -> None:
    """One quarantined record in full."""
    from sinks.redrive import show

    partition, offset = args.coordinates
    emit(show(_settings(args), partition, offset, dlq=args.dlq))


def cmd_redrive(args: argparse.Namespace) -> None:
    """Re-publish quarantined records to the source topic, exactly once each."""
    from sinks.redrive import redrive

    emit(redrive(_settings(args), _selection(args), fix_path=args.fix,
                 include_redriven=args.include_redriven, dry_run=args.dry_run))


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument("--reason", default=None,
                   help="only these reason codes (comma-separated, e.g. invalid_value,late)")
    p.add_argument("--from", dest="from_", type=time_arg, default=None,
                   help=f"records at or after this {_TIME_HELP}")
    p.add_argument("--to", type=time_arg, default=None, help=f"records before this {_TIME_HELP}")
    p.add_argument("--topic", default=None, help="source topic (default KAPPA_TOPIC)")


def add_commands(sub: Any, add: AddFn) -> None:
    """Register ``quarantine list|show|redrive`` with kappa/cli.py's ``add`` helper."""
    quarantine = add("quarantine", lambda a: None,
                     "Quarantined records: list, show, redrive (from <topic>.quarantine).",
                     parent=sub)
    qsub = quarantine.add_subparsers(dest="quarantine_command", required=True,
                                     parser_class=type(quarantine))

    p = add("list", cmd_list, "Counts by reason and the matching records' coordinates (JSON).",
            parent=qsub)
    _filters(p)
    p.add_argument("--limit", type=positive_int, default=100,
                   help="most records listed (counts cover all; default 100)")

    p = add("show", cmd_show,
            "One quarantined record in full: headers, reason, payload decoded or as hex/base64.",
            parent=qsub)
    p.add_argument("coordinates", type=coordinates, metavar="PARTITION:OFFSET",
                   help="the record's coordinates in the source topic (with --dlq: in the DLQ)")
    p.add_argument("--dlq", action="store_true",
                   help="PARTITION:OFFSET are coordinates in the DLQ topic")
    p.add_argument("--topic", default=None, help="source topic (default KAPPA_TOPIC)")

    p = add("redrive", cmd_redrive,
            "Re-publish matching quarantined records to the source topic, exactly once each "
            "(ledger <topic>.redrives), with headers kappa.redriven=1 and "
            "kappa.redrive.of=<topic>/<partition>/<offset>. " + _LATENESS_NOTE,
            parent=qsub)
    _filters(p)
    p.add_argument("--fix", default=None, metavar="SCRIPT",
                   help="Python file defining fix(event: dict) -> dict | None, applied to the "
                        "decoded event (None skips it); the result is re-encoded with the latest "
                        "schema. Without --fix records are redriven byte for byte")
    p.add_argument("--include-redriven", action="store_true",
                   help="also redrive records that were themselves redrives and failed again")
    p.add_argument("--dry-run", action="store_true", help="report what would happen, change nothing")
