"""``kappa serve``, ``kappa history`` and ``kappa verify``: the read-path subcommands.

:func:`add_commands` registers them on ``kappa``'s subparsers (kappa/cli.py
calls it), so the read path brings its own CLI without forking the entry point.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kappa.cliargs import emit, port, positive_int
from kappa.errors import ConfigError, KappaError

AddFn = Callable[..., argparse.ArgumentParser]


def _settings() -> Any:
    from kappa.settings import Settings

    return Settings.from_env()


def cmd_serve(args: argparse.Namespace) -> None:
    """Run the HTTP feature API until SIGTERM/SIGINT."""
    from serving.http import ServerConfig, serve
    from sinks.redis import redis_client

    settings = _settings()
    url = settings.require_redis()
    redis_client(url).close()  # fail fast, in one line, when Redis is unreachable
    token = settings.api_token
    config = ServerConfig(redis_url=url, prefix=settings.redis_prefix, host=args.host,
                          port=args.port, token=token, max_batch=args.max_batch)

    def ready(port: int) -> None:
        sys.stderr.write(f"kappa: serving on http://{args.host}:{port} "
                         f"(auth {'on' if token else 'off'})\n")
        sys.stderr.flush()

    serve(config, ready)


def cmd_history(args: argparse.Namespace) -> None:
    """Point-in-time training set from the Iceberg feature history."""
    import pyarrow.parquet as pq

    from replay.versions import current_version
    from serving.history import get_historical_features, read_entity_file
    from sinks.iceberg import open_catalog
    from sinks.redis import redis_client

    settings = _settings()
    features = [f.strip() for f in args.features.split(",") if f.strip()]
    if not features:
        msg = "--features needs at least one view or view:feature"
        raise ConfigError(msg)
    entity_df = read_entity_file(args.entities)
    namespace = settings.namespace
    if settings.redis_url:  # follow the version pointer when Redis is configured
        client = redis_client(settings.redis_url)
        try:
            namespace = current_version(client, base_namespace=settings.namespace,
                                        base_prefix=settings.redis_prefix).namespace
        finally:
            client.close()
    catalog = open_catalog(settings.catalog_uri, settings.warehouse)
    out = get_historical_features(catalog, namespace, entity_df, features,
                                  timestamp_column=args.timestamp_column)
    path = Path(args.out)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(out, path)
    except OSError as exc:
        msg = f"cannot write {path}: {exc}"
        raise KappaError(msg) from exc
    feature_columns = out.column_names[entity_df.num_columns:]
    emit({"out": str(path), "rows": out.num_rows, "namespace": namespace,
           "columns": feature_columns,
           "non_null": {c: out.num_rows - out.column(c).null_count for c in feature_columns}})


def cmd_verify(args: argparse.Namespace) -> None:
    """Online/offline consistency report; exit code 1 on any mismatch."""
    from flows.views import select_views
    from serving.client import FeatureClient
    from serving.verify import verify
    from sinks.iceberg import open_catalog

    settings = _settings()
    views = select_views(args.views.split(",") if args.views else None)
    catalog = open_catalog(settings.catalog_uri, settings.warehouse)
    with FeatureClient.from_settings(settings) as client:
        report = verify(client, catalog, sample=args.sample, views=views, seed=args.seed)
    emit(report)
    if not report["ok"]:
        raise SystemExit(1)


def add_commands(sub: Any, add: AddFn) -> None:
    """Register ``serve``, ``history`` and ``verify`` with kappa/cli.py's ``add`` helper."""
    p = add("serve", cmd_serve, "HTTP online feature API with /metrics and /health.", parent=sub)
    p.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    p.add_argument("--port", type=port, default=8000, help="listen port (default 8000; 0: any)")
    p.add_argument("--max-batch", type=positive_int, default=1000,
                   help="most entities per POST /features (default 1000)")

    p = add("history", cmd_history,
            "Point-in-time-correct training set from Iceberg (Parquet/CSV in, Parquet out).",
            parent=sub)
    p.add_argument("--entities", required=True,
                   help="Parquet or CSV file of entity ids (user_id/item_id) and timestamps")
    p.add_argument("--features", required=True, help="comma-separated VIEW or VIEW:FEATURE")
    p.add_argument("--out", required=True, help="output Parquet file")
    p.add_argument("--timestamp-column", default="timestamp",
                   help="name of the timestamp column (default: timestamp)")

    p = add("verify", cmd_verify,
            "Check sampled online vectors against the latest final offline rows (JSON).",
            parent=sub)
    p.add_argument("--sample", type=positive_int, default=100, help="entities per view (default 100)")
    p.add_argument("--views", default=None, help="comma-separated view names (default: all)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default: random)")
