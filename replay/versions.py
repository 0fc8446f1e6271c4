"""Output versions and the one pointer readers follow.

A version is a complete set of outputs: Iceberg tables in namespace
``<base>_<name>`` (the live default is the base namespace itself) and Redis
keys under ``<prefix>@<name>`` (the default: ``<prefix>``). Readers never
name a version: they follow the pointer at ``<prefix>@current``, a small JSON
document switched with one atomic ``SET`` — so every read sees the old version
or the new one, never a mix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from kappa.errors import ConfigError

DEFAULT_VERSION = "live"
_NAME = re.compile(r"[a-z][a-z0-9_]{0,39}\Z")


@dataclass(frozen=True, kw_only=True)
class Version:
    """Where one version's outputs live."""

    name: str
    namespace: str
    redis_prefix: str

    def to_json(self) -> bytes:
        """The pointer document."""
        return orjson.dumps({"version": self.name, "namespace": self.namespace,
                             "redis_prefix": self.redis_prefix})

    @classmethod
    def from_json(cls, raw: bytes | str) -> Version:
        """Parse a pointer document."""
        data: dict[str, Any] = orjson.loads(raw)
        return cls(name=data["version"], namespace=data["namespace"],
                   redis_prefix=data["redis_prefix"])


def version_for(name: str, *, base_namespace: str, base_prefix: str) -> Version:
    """The outputs of version ``name`` (``live`` is the base namespace and prefix)."""
    if name == DEFAULT_VERSION:
        return Version(name=name, namespace=base_namespace, redis_prefix=base_prefix)
    if not _NAME.match(name) or name == "current":
        msg = (f"version name must be 1-40 lower-case letters, digits or _ starting with a "
               f"letter, got {name!r}")
        raise ConfigError(msg)
    return Version(name=name, namespace=f"{base_namespace}_{name}",
                   redis_prefix=f"{base_prefix}@{name}")


def pointer_key(base_prefix: str) -> str:
    """The Redis key of the current-version pointer."""
    return f"{base_prefix}@current"


def current_version(client: Any, *, base_namespace: str, base_prefix: str) -> Version:
    """The version readers use now (the live default when nothing was promoted)."""
    raw = client.get(pointer_key(base_prefix))
    if raw is None:
        return version_for(DEFAULT_VERSION, base_namespace=base_namespace,
                           base_prefix=base_prefix)
    return Version.from_json(raw)


def set_current(client: Any, version: Version, *, base_prefix: str) -> None:
    """Point readers at ``version`` with one atomic SET."""
    client.set(pointer_key(base_prefix), version.to_json())


def current_for(settings: Any) -> Version:
    """The current version for ``settings`` (one short-lived Redis connection)."""
    from sinks.redis import redis_client

    client = redis_client(settings.require_redis())
    try:
        return current_version(client, base_namespace=settings.namespace,
                               base_prefix=settings.redis_prefix)
    finally:
        client.close()
