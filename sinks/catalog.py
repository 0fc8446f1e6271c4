"""Where the Iceberg tables live: the sink's config, the catalog, and waiting out outages.

The catalog is a pyiceberg SQL catalog (SQLite locally, PostgreSQL in
production) named ``kappa``; pyiceberg's own configuration of that name
(``PYICEBERG_CATALOG__KAPPA__S3__*``) supplies the FileIO settings of an
``s3://`` warehouse.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar, cast

from pyiceberg.catalog import load_catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import NoSuchPropertyException
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from kappa.errors import ConfigError, ServiceUnavailable
from kappa.metrics import SINK_ERRORS
from kappa.settings import mask_url
from sinks.maintenance import MaintenanceConfig

if TYPE_CHECKING:
    from kappa.settings import Settings

log = logging.getLogger(__name__)


_T = TypeVar("_T")
"""What a retried catalog action returns."""

CATALOG_NAME = "kappa"


@dataclass(frozen=True, kw_only=True)
class IcebergConfig:
    """What the Iceberg sink needs, and nothing more.

    Attributes:
        catalog_uri: SQLAlchemy URI of the SQL catalog (``sqlite:///...``, ``postgresql://...``).
        warehouse: Warehouse location (``file:///...``, ``s3://...``).
        namespace: Namespace of the tables (a replay version gets its own).
        commit_interval_s: Minimum seconds between two commits of one table.
        max_buffer_rows: Commit early once this many rows are buffered, in memory or
            in data files already written for the next commit.
        file_bytes: Arrow bytes of buffered rows written as data files before the
            commit (``sinks.writer``); it also bounds the memory of a write.
        max_commit_attempts: Attempts per commit when it conflicts.
        backoff_base_s: First conflict backoff; doubles per attempt, fully jittered.
        backoff_max_s: Cap of one backoff sleep.
        writer_id: Recorded as ``kappa.writer`` in every snapshot summary.
        table_properties: Properties of tables this sink creates (e.g.
            ``commit.retry.num-retries``); existing tables keep theirs.
    """

    catalog_uri: str
    warehouse: str
    namespace: str = "kappa"
    commit_interval_s: float = 10.0
    max_buffer_rows: int = 100_000
    file_bytes: int = 8 * 1024 * 1024
    max_commit_attempts: int = 8
    backoff_base_s: float = 0.05
    backoff_max_s: float = 5.0
    writer_id: str = "kappa"
    table_properties: Mapping[str, str] = field(default_factory=lambda: dict(STREAMING_TABLE))
    commit_on_snapshot: bool = False
    """Commit at every Bytewax epoch snapshot (recovery on): rows buffered past an
    epoch would otherwise be lost by a crash, since the source resumes after them."""
    outage_backoff_max_s: float = 5.0
    """Catalog/warehouse outages are retried forever, backing off up to this."""
    maintenance: MaintenanceConfig | None = None
    """Table upkeep the committer runs after its commits (``None``: never)."""

    def __post_init__(self) -> None:
        if not self.catalog_uri or "://" not in self.catalog_uri:
            msg = f"Iceberg catalog URI must look like scheme://..., got {self.catalog_uri!r}"
            raise ConfigError(msg)
        if not self.warehouse:
            msg = "Iceberg warehouse location must be set"
            raise ConfigError(msg)
        if not self.namespace or not all(p.isidentifier() for p in self.namespace.split(".")):
            msg = f"Iceberg namespace must be dotted identifiers, got {self.namespace!r}"
            raise ConfigError(msg)
        if self.commit_interval_s <= 0:
            msg = "commit_interval_s must be > 0"
            raise ConfigError(msg)
        if self.max_buffer_rows < 1 or self.max_commit_attempts < 1 or self.file_bytes < 1:
            msg = "max_buffer_rows, file_bytes and max_commit_attempts must be >= 1"
            raise ConfigError(msg)
        if self.backoff_base_s < 0 or self.backoff_max_s < self.backoff_base_s:
            msg = "need 0 <= backoff_base_s <= backoff_max_s"
            raise ConfigError(msg)

    @classmethod
    def from_settings(cls, settings: Settings, *, namespace: str | None = None,
                      commit_on_snapshot: bool = False) -> IcebergConfig:
        """The sink's slice of the settings (``namespace`` overrides, e.g. for a replay)."""
        return cls(catalog_uri=settings.catalog_uri, warehouse=settings.warehouse,
                   namespace=namespace or settings.namespace,
                   commit_interval_s=settings.commit_interval_s,
                   max_buffer_rows=settings.max_buffer_rows,
                   file_bytes=settings.file_bytes,
                   commit_on_snapshot=commit_on_snapshot,
                   maintenance=MaintenanceConfig.from_settings(settings))


STREAMING_TABLE: dict[str, str] = {
    # A streaming committer writes a metadata file per commit; keeping the whole
    # metadata log makes every commit slower (measured: median commit latency after
    # 300 commits 1.16-1.42x the first with the default log, 1.03x with these).
    "write.metadata.previous-versions-max": "10",
    "write.metadata.delete-after-commit.enabled": "true",
}
"""Properties of tables the sink creates (existing tables keep theirs)."""


def retry_outages(action: Callable[[], _T], what: str, config: IcebergConfig,
                  sleep: Callable[[float], None] = time.sleep) -> _T:
    """Run ``action`` until the catalog/warehouse answers; other errors propagate.

    A partition is built lazily by Bytewax (on its first rows), so a catalog
    outage can hit while opening a table mid-run, not only while committing.
    """
    outage = 0
    while True:
        try:
            return action()
        except (ServiceUnavailable, SQLAlchemyError, OSError) as exc:
            outage += 1
            delay = min(config.outage_backoff_max_s, config.backoff_base_s * 2 ** min(outage, 10))
            SINK_ERRORS.labels(sink=f"iceberg:{what}").inc()
            log.warning("cannot %s (%s); retry %d in %.2fs", what,
                        str(exc).splitlines()[0][:200], outage, delay)
            sleep(delay)



def open_catalog(catalog_uri: str, warehouse: str) -> SqlCatalog:
    """Open (and initialise, if new) the SQL catalog named ``kappa``.

    For SQLite URIs the database's parent directory is created; for ``file://``
    warehouses the directory is created.

    Raises:
        ConfigError: The URI is malformed or names an unknown driver.
        ServiceUnavailable: The catalog database cannot be reached.
    """
    try:
        if catalog_uri.startswith("sqlite:///"):
            db_path = catalog_uri[len("sqlite:///"):]
            if db_path and db_path != ":memory:":
                Path(db_path).parent.mkdir(parents=True, exist_ok=True)
        if warehouse.startswith("file://"):
            Path(warehouse[len("file://"):]).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        msg = f"cannot create the local Iceberg catalog/warehouse directory: {exc}"
        raise ConfigError(msg) from exc
    for attempt in range(_INIT_RACE_ATTEMPTS):
        try:
            # load_catalog merges pyiceberg's own configuration of the catalog named "kappa"
            # (PYICEBERG_CATALOG__KAPPA__S3__ENDPOINT etc., or .pyiceberg.yaml): the FileIO
            # settings an s3:// warehouse on MinIO/S3 needs. URI and warehouse come from us.
            return cast(SqlCatalog, load_catalog(CATALOG_NAME, type="sql", uri=catalog_uri,
                                                 warehouse=warehouse))
        except (ArgumentError, NoSuchPropertyException, ValueError, ImportError) as exc:
            msg = f"invalid Iceberg catalog URI {mask_url(catalog_uri)}: {exc}".splitlines()[0]
            raise ConfigError(msg) from exc
        except (SQLAlchemyError, OSError) as exc:
            if _lost_init_race(exc) and attempt + 1 < _INIT_RACE_ATTEMPTS:
                # Two processes opened a brand-new catalog at once (a live run and a
                # replay started together): SqlCatalog's check-then-CREATE TABLE lost
                # the race. The winner's tables are there now; opening again finds them.
                time.sleep(0.05 * (attempt + 1))
                continue
            msg = f"cannot reach Iceberg catalog at {mask_url(catalog_uri)}: {exc}".splitlines()[0]
            raise ServiceUnavailable(msg) from exc
    msg = "open_catalog: retry loop ended without a result"  # pragma: no cover
    raise AssertionError(msg)  # pragma: no cover - the loop returns or raises


_INIT_RACE_ATTEMPTS = 5
"""Opening attempts when another process is creating the same catalog's tables."""


def _lost_init_race(exc: BaseException) -> bool:
    """Whether ``exc`` is another process winning the catalog's CREATE TABLE.

    Only that: a locked or unreachable catalog is an outage, which callers report
    and retry on their own schedule (``retry_outages``).
    """
    return "already exists" in str(exc)


