"""The ``kappa`` command: one entry point, JSON on stdout, one-line errors on stderr.

Every expected failure (bad argument, service down, missing topic) ends as a
single ``kappa: error: ...`` line and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from kappa.cliargs import emit, positive_int, share
from kappa.errors import KappaError

EXIT_ERROR = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage problem in one line."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"kappa: error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(EXIT_USAGE)


def _settings(args: argparse.Namespace) -> Any:
    from kappa.settings import Settings

    settings = Settings.from_env()
    return settings.with_topic(getattr(args, "topic", None))


def cmd_up(args: argparse.Namespace) -> None:
    """Start the embedded stack."""
    from kappa.stack import up

    emit(up(_settings(args), broker_port=args.broker_port, redis_port=args.redis_port))


def cmd_down(args: argparse.Namespace) -> None:
    """Stop what ``up`` started."""
    from kappa.stack import down

    emit(down(_settings(args)))


def cmd_status(args: argparse.Namespace) -> None:
    """Endpoints, topics, tables."""
    from kappa.stack import status

    emit(status(_settings(args)))


def _generator_config(args: argparse.Namespace, lateness_s: float) -> Any:
    from kappa.generator import GeneratorConfig

    start_ms = args.start_ms
    # Default density: about one event per user every 20 simulated seconds.
    per_second = args.sim_rate if args.sim_rate is not None else max(1.0, args.users / 20)
    if args.rate is not None:
        # Real-time production: simulated ingest time follows the wall clock, so
        # a live run sees record timestamps close to now.
        per_second = args.rate
        if start_ms is None:
            start_ms = time.time_ns() // 1_000_000
    return GeneratorConfig(
        events=args.events, users=args.users, items=args.items, seed=args.seed,
        bad_rate=args.bad_rate, late_rate=args.late_rate, dup_rate=args.dup_rate,
        schema_version=args.schema_version, start_ms=start_ms,
        events_per_sim_second=per_second, allowed_lateness_s=lateness_s,
        max_out_of_order_s=min(30.0, lateness_s / 2),
        amount_scale=args.amount_scale, scale_from_ms=args.scale_from_ms,
    )


def cmd_produce(args: argparse.Namespace) -> None:
    """Produce the seeded demo workload."""
    from kappa.errors import ConfigError
    from kappa.produce import pregenerate, produce

    settings = _settings(args)
    config = _generator_config(args, settings.allowed_lateness_s)
    records = None
    if args.pregenerate:
        if args.rate is None or args.start_ms is not None:
            msg = "--pregenerate needs --rate and no --start-ms"
            raise ConfigError(msg)
        config, records = pregenerate(config)
    emit(produce(settings, config, rate=args.rate, progress=not args.no_progress,
                 records=records))


def cmd_run(args: argparse.Namespace) -> None:
    """Run the dataflow."""
    settings = _settings(args)
    if args.processes > 1 and not settings.addresses:
        from flows.cluster import run_cluster

        # The children start before this process imports the dataflow (1.2 s): the
        # cluster starts only once every process reaches it, and imports done one
        # after the other cost a two-process bounded run about a second.
        argv = [a for a in sys.argv[1:]] if args.argv is None else args.argv
        emit(run_cluster(settings, args.processes, _without_processes(argv),
                         lambda s: _run_here(args, s)))
        return
    emit(_run_here(args, settings))


def _run_here(args: argparse.Namespace, settings: Any) -> dict[str, Any]:
    from flows.run import RunOptions, run
    from flows.views import load_views, select_views

    views = select_views(args.views.split(",") if args.views else None,
                         load_views(settings.views_module))
    options = RunOptions(bounded=args.bounded, views=views,
                         recovery=settings.recovery and not args.no_recovery)
    return run(settings, options)


def _without_processes(argv: list[str]) -> list[str]:
    """The children repeat our arguments minus ``--processes N``."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--processes":
            skip = True
            continue
        if arg.startswith("--processes="):
            continue
        out.append(arg)
    return out


def cmd_features_get(args: argparse.Namespace) -> None:
    """Online lookup through the current-version pointer."""
    from flows.views import load_views, views_by_name
    from replay.versions import current_for
    from sinks.redis import redis_client
    from sinks.redis_documents import read_features

    settings = _settings(args)
    views = views_by_name(load_views(settings.views_module))
    if args.view not in views:
        msg = f"unknown view {args.view!r}; known: {', '.join(views)}"
        raise KappaError(msg)
    version = current_for(settings)
    client = redis_client(settings.require_redis())
    try:
        emit(read_features(client, version.redis_prefix, views[args.view],
                            list(args.entities)))
    finally:
        client.close()


def cmd_replay(args: argparse.Namespace) -> None:
    """Backfill by replaying the log into a new version."""
    from flows.views import load_views, select_views
    from replay.run import ReplayRequest, replay

    settings = _settings(args)
    views = select_views(args.views.split(",") if args.views else None,
                         load_views(settings.views_module))
    emit(replay(settings, ReplayRequest(
        version=args.version, from_text=args.from_, to_text=args.to, views=views,
        source=args.source, promote=args.promote, finalize=not args.open_end,
        progress=not args.no_progress)))


def cmd_versions(args: argparse.Namespace) -> None:
    """Version lifecycle."""
    from replay import manage

    settings = _settings(args)
    if args.versions_command == "list":
        emit(manage.list_versions(settings))
    elif args.versions_command == "verify":
        report = manage.verify(settings, args.name, sample=args.sample)
        emit(report)
        if not report["ok"]:
            raise SystemExit(EXIT_ERROR)
    elif args.versions_command == "promote":
        emit(manage.promote(settings, args.name))
    else:
        emit(manage.drop(settings, args.name))


def cmd_schemas_list(args: argparse.Namespace) -> None:
    """Registered schemas."""
    from schemas.registry import open_registry

    emit(open_registry(_settings(args).schema_registry_url).list())


def cmd_schemas_check(args: argparse.Namespace) -> None:
    """Compatibility check of schemas/."""
    from schemas.compat import check_directory

    problems = check_directory(args.dir)
    emit({"ok": not problems, "problems": problems})
    if problems:
        raise SystemExit(EXIT_ERROR)


def cmd_maintain(args: argparse.Namespace) -> None:
    """Iceberg table upkeep: compact, expire snapshots, remove orphans."""
    from sinks.iceberg import open_catalog
    from sinks.maintenance import MaintenanceConfig, maintain_tables

    settings = _settings(args)
    names = [n.strip() for n in args.tables.split(",") if n.strip()] if args.tables else None
    catalog = open_catalog(settings.catalog_uri, settings.warehouse)
    emit(maintain_tables(catalog, settings.namespace, names,
                         MaintenanceConfig.from_settings(settings), time.time(), args.dry_run))


def cmd_demo(args: argparse.Namespace) -> None:
    """Up, produce, run bounded, show features and table counts."""
    from kappa.demo import demo

    emit(demo(events=args.events, users=args.users, items=args.items, seed=args.seed))


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree (exposed for tests and docs)."""
    parser = _Parser(prog="kappa", description="Stream-first Kappa feature pipeline.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(name: str, func: Callable[[argparse.Namespace], None], help_text: str,
            parent: Any = sub) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    p = add("up", cmd_up, "Start the embedded local stack (broker, Redis, Iceberg catalog).")
    p.add_argument("--broker-port", type=positive_int, default=None)
    p.add_argument("--redis-port", type=positive_int, default=None)
    add("down", cmd_down, "Stop the processes `kappa up` started.")
    add("status", cmd_status, "Show endpoints, topics with end offsets, tables with row counts.")

    p = add("produce", cmd_produce, "Produce the seeded demo workload to the topic.")
    p.add_argument("--events", type=positive_int, required=True, help="records to produce")
    p.add_argument("--users", type=positive_int, default=1000)
    p.add_argument("--items", type=positive_int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bad-rate", type=share, default=0.02)
    p.add_argument("--late-rate", type=share, default=0.01)
    p.add_argument("--dup-rate", type=share, default=0.01)
    p.add_argument("--schema-version", type=int, choices=(1, 2), default=1)
    p.add_argument("--rate", type=float, default=None,
                   help="events/s in real time; record timestamps then follow the wall clock")
    p.add_argument("--pregenerate", action="store_true",
                   help="with --rate: generate every record first, then only send in real time "
                        "(keeps generation off the CPU of a flow measured on the same host)")
    p.add_argument("--start-ms", type=int, default=None,
                   help="simulated ingest time of the first record (epoch ms)")
    p.add_argument("--sim-rate", type=float, default=None,
                   help="simulated ingest events/s (default: users/20); ignored with --rate")
    p.add_argument("--amount-scale", type=float, default=1.0,
                   help="multiply amounts from --scale-from-ms on (inject drift, e.g. 0.5)")
    p.add_argument("--scale-from-ms", type=int, default=None,
                   help="simulated ingest time (epoch ms) the amount scale starts at")
    p.add_argument("--topic", default=None)
    p.add_argument("--no-progress", action="store_true")

    p = add("run", cmd_run, "Run the dataflow (live, or --bounded to stop when caught up).")
    p.add_argument("--bounded", action="store_true",
                   help="stop at the end of every partition; every window ends final")
    p.add_argument("--topic", default=None)
    p.add_argument("--views", default=None, help="comma-separated view names (default: all)")
    p.add_argument("--processes", type=positive_int, default=1,
                   help="run N Bytewax processes on this host as one cluster (default 1)")
    p.add_argument("--no-recovery", action="store_true",
                   help="no checkpoints: start from the beginning, keep no state (KAPPA_RECOVERY=0)")

    features = add("features", lambda a: None, "Online feature lookups.")
    fsub = features.add_subparsers(dest="features_command", required=True, parser_class=_Parser)
    p = add("get", cmd_features_get, "Latest feature vector of entities (JSON).", fsub)
    p.add_argument("view")
    p.add_argument("entities", nargs="+")

    schemas = add("schemas", lambda a: None, "Schema registry commands.")
    ssub = schemas.add_subparsers(dest="schemas_command", required=True, parser_class=_Parser)
    add("list", cmd_schemas_list, "List registered schemas (JSON).", ssub)
    p = add("check", cmd_schemas_check, "Check schemas/ for backward compatibility.", ssub)
    p.add_argument("--dir", default=None, help="schema directory (default: the shipped one)")

    p = add("replay", cmd_replay, "Replay the log over [--from, --to) into a new version.")
    p.add_argument("--from", dest="from_", default="earliest",
                   help="ISO-8601 time (UTC if no offset) or 'earliest' (default)")
    p.add_argument("--to", default="now", help="ISO-8601 time or 'now' (default): end pinned at start")
    p.add_argument("--version", required=True, help="output version name (e.g. v2)")
    p.add_argument("--views", default=None, help="comma-separated view names (default: all)")
    p.add_argument("--source", choices=("auto", "kafka", "iceberg"), default="auto",
                   help="auto: Kafka where retained, the Iceberg log archive before that")
    p.add_argument("--promote", action="store_true", help="switch readers to it when done")
    p.add_argument("--open-end", action="store_true",
                   help="leave windows open at the end so `kappa run` can continue the version")
    p.add_argument("--topic", default=None)
    p.add_argument("--no-progress", action="store_true")

    versions = add("versions", lambda a: None, "Output versions: list, verify, promote, drop.")
    vsub = versions.add_subparsers(dest="versions_command", required=True, parser_class=_Parser)
    add("list", cmd_versions, "Versions, their tables, and which one readers use.", vsub)
    p = add("verify", cmd_versions, "Compare a version with the current one (JSON report).",
            vsub)
    p.add_argument("name")
    p.add_argument("--sample", type=positive_int, default=200, help="entities per view")
    p = add("promote", cmd_versions, "Switch readers to a version atomically.", vsub)
    p.add_argument("name")
    p = add("drop", cmd_versions, "Remove a non-current version's tables, keys and state.", vsub)
    p.add_argument("name")

    p = add("maintain", cmd_maintain,
            "Iceberg upkeep: compact small files, expire snapshots, remove orphaned files.")
    p.add_argument("--tables", default=None,
                   help="comma-separated table names (default: every table of KAPPA_NAMESPACE)")
    p.add_argument("--dry-run", action="store_true", help="report what would change, change nothing")

    p = add("demo", cmd_demo, "Start the stack, produce, run bounded, show features and counts.")
    p.add_argument("--events", type=positive_int, default=20_000)
    p.add_argument("--users", type=positive_int, default=500)
    p.add_argument("--items", type=positive_int, default=200)
    p.add_argument("--seed", type=int, default=7)

    from serving.commands import add_commands

    add_commands(sub, add)
    from kappa.quarantine_cli import add_commands as add_quarantine_commands

    add_quarantine_commands(sub, add)
    from kappa.quality_cli import add_commands as add_quality_commands

    add_quality_commands(sub, add)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kappa`` console script."""
    args = build_parser().parse_args(argv)
    args.argv = list(argv) if argv is not None else None
    try:
        from kappa.logs import setup_logging

        setup_logging()
        args.func(args)
    except KappaError as exc:
        sys.stderr.write(f"kappa: error: {exc}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("kappa: interrupted\n")
        return 130
    except Exception as exc:  # a library error we did not wrap: still one line
        if os.environ.get("KAPPA_DEBUG"):
            raise
        sys.stderr.write(f"kappa: error: {type(exc).__name__}: {exc}\n")
        return EXIT_ERROR
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
