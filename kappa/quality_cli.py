"""``kappa quality report``: the data-quality subcommand (see ``kappa.quality``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kappa.cliargs import emit

AddFn = Callable[..., argparse.ArgumentParser]


def cmd_quality_report(args: argparse.Namespace) -> None:
    """Quality dimensions and drift per scope, as JSON or a table, plus a drift PNG."""
    from kappa.cliargs import parse_time
    from kappa.quality import build_report, plot_drift, read_profiles, render_table
    from kappa.settings import Settings
    from sinks.catalog import open_catalog

    settings = Settings.from_env()
    namespace = args.namespace or settings.namespace
    from_ms = parse_time(args.from_)
    to_ms = parse_time(args.to)
    reference_ms = None if args.reference is None else parse_time(args.reference)
    catalog = open_catalog(settings.catalog_uri, settings.warehouse)
    report = build_report(read_profiles(catalog, namespace, from_ms, to_ms),
                          threshold=args.threshold, reference_ms=reference_ms)
    plot = None
    if not args.no_plot:
        default = settings.home / "quality" / "drift.png"
        plot = str(plot_drift(report, Path(args.plot) if args.plot else default))
    series = report.pop("_series")
    report = {"namespace": namespace, "plot": plot, **report}
    if args.format == "table":
        sys.stdout.write(render_table({**report, "_series": series}) + "\n")
        if plot:
            sys.stdout.write(f"\ndrift plot: {plot}\n")
    else:
        emit(report)


def add_commands(sub: Any, add: AddFn) -> None:
    """Register ``kappa quality report`` on ``kappa``'s subparsers."""
    quality = add("quality", lambda a: None, "Data quality: dimensions and drift from profiles.")
    # type(quality): kappa's one-line-error parser class, for the nested subcommand too.
    qsub = quality.add_subparsers(dest="quality_command", required=True,
                                  parser_class=type(quality))
    p = add("report", cmd_quality_report,
            "Quality dimensions per profile window and drift (PSI) per view and field.", qsub)
    p.add_argument("--from", dest="from_", default="earliest",
                   help="first window start: ISO-8601 (UTC if no offset) or 'earliest'")
    p.add_argument("--to", default="now", help="windows starting before: ISO-8601 or 'now'")
    p.add_argument("--format", choices=("json", "table"), default="json")
    p.add_argument("--threshold", type=float, default=0.25, help="PSI counted as drift")
    p.add_argument("--reference", default=None,
                   help="start of a pinned reference window (default: the flow's trailing day)")
    p.add_argument("--namespace", default=None,
                   help="Iceberg namespace (default KAPPA_NAMESPACE; a replay's: kappa_<version>)")
    p.add_argument("--plot", default=None,
                   help="PNG path of the last day's drift (default $KAPPA_HOME/quality/drift.png)")
    p.add_argument("--no-plot", action="store_true")
