"""``kappa demo``: the whole product in one command on the embedded stack.

The demo owns the default topic, namespace and key prefix of the *local* stack
and resets them first, so it can be run again and again with the same result.
It refuses to reset anything when the settings point at external services.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from typing import Any

from confluent_kafka.admin import AdminClient

from flows.recovery import RecoveryStore
from kappa.errors import ConfigError
from kappa.settings import Settings

_EXTERNAL = ("KAPPA_BOOTSTRAP_SERVERS", "KAPPA_REDIS_URL", "KAPPA_CATALOG_URI")


def _reset(settings: Settings) -> None:
    """Delete the demo topic pair, the namespace's tables and the key prefix."""
    from sinks.iceberg import open_catalog
    from sinks.redis import redis_client

    admin = AdminClient(dict[str, Any](settings.kafka_client_config()))
    existing = admin.list_topics(timeout=10).topics
    doomed = [t for t in (settings.topic, settings.quarantine_topic) if t in existing]
    if doomed:
        for future in admin.delete_topics(doomed, operation_timeout=10).values():
            future.result()
    catalog = open_catalog(settings.catalog_uri, settings.warehouse)
    if (settings.namespace,) in catalog.list_namespaces():
        for identifier in catalog.list_tables(settings.namespace):
            catalog.purge_table(identifier)
    store = RecoveryStore.for_outputs(settings)
    if store.path.exists():
        shutil.rmtree(store.path)
    client = redis_client(settings.require_redis())
    try:
        keys = list(client.scan_iter(match=f"{settings.redis_prefix}:*", count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i:i + 1000])
    finally:
        client.close()


def demo(*, events: int, users: int, items: int, seed: int) -> dict[str, Any]:
    """Up, reset, produce, run bounded; return a summary with sample features."""
    from flows.run import RunOptions, run
    from flows.views import DEFAULT_VIEWS
    from kappa.generator import GeneratorConfig
    from kappa.produce import produce
    from kappa.stack import status, up
    from sinks.redis import redis_client
    from sinks.redis_documents import read_features

    external = [name for name in _EXTERNAL if os.environ.get(name)]
    if external:
        msg = f"kappa demo runs on the embedded stack only; unset {', '.join(external)}"
        raise ConfigError(msg)
    up(Settings.from_env())
    settings = Settings.from_env()
    _reset(settings)
    config = GeneratorConfig(events=events, users=users, items=items, seed=seed,
                             events_per_sim_second=max(1.0, users / 20))
    produced = produce(settings, config, progress=True)
    ran = run(settings, RunOptions(bounded=True))

    from kappa.generator import generate

    config = GeneratorConfig(events=min(events, 2000), users=users, items=items, seed=seed,
                             events_per_sim_second=max(1.0, users / 20))
    users_seen: Counter[str] = Counter()
    items_seen: Counter[str] = Counter()
    for rec in generate(config):
        if rec.kind == "good":
            users_seen[rec.key.decode()] += 1
    client = redis_client(settings.require_redis())
    try:
        samples: dict[str, Any] = {}
        top_users = [u for u, _ in users_seen.most_common(3)]
        for view in DEFAULT_VIEWS:
            if view.entity == "user_id":
                samples[view.name] = read_features(client, settings.redis_prefix, view, top_users)
        item_view = next(v for v in DEFAULT_VIEWS if v.entity == "item_id")
        keys = [k.decode().rsplit(":", 1)[1] for k in client.scan_iter(
            match=f"{settings.redis_prefix}:{item_view.name}:*", count=100)]
        items_seen.update(keys[:3])
        samples[item_view.name] = read_features(client, settings.redis_prefix, item_view,
                                                sorted(items_seen))
    finally:
        client.close()
    tables = status(settings).get("tables", {})
    return {
        "produced": produced,
        "run": ran,
        "features": samples,
        "quality": _quality(settings),
        "tables": {name: info.get("rows") for name, info in tables.items()
                   if name.startswith(f"{settings.namespace}.")},
        "try": [
            f"kappa features get user_activity_1m {' '.join(top_users)}",
            "kappa status",
            "kappa quality report --format table",
            "kappa quarantine list --limit 5",
        ],
    }


def _quality(settings: Settings) -> dict[str, Any]:
    """Overall quality dimensions of the run and how many windows drifted (from profiles)."""
    from kappa.quality import build_report, read_profiles
    from sinks.iceberg import open_catalog

    catalog = open_catalog(settings.catalog_uri, settings.warehouse)
    report = build_report(read_profiles(catalog, settings.namespace, None, None))
    return {**report["quality"], "drift_alerts": len(report["alerts"])}

