"""A big buffer is written slice by slice (bounded memory) and appended as one snapshot."""

from __future__ import annotations

import itertools
import uuid
from dataclasses import replace

import pyarrow as pa
import pytest
from pyiceberg.catalog.sql import SqlCatalog

from flows.records import RawRecord
from kappa.settings import Settings
from sinks import tables
from sinks.iceberg import IcebergConfig, TableWriter, open_catalog
from sinks.sliced_append import append_files, slice_rows, write_files

T0 = 1_700_000_000_000
HOUR_MS = 3_600_000


def _rows(n: int, step_ms: int = HOUR_MS) -> pa.Table:
    # One record per hour: the rows span several day partitions, so slices cross them.
    return tables.log_rows([
        RawRecord("t", i % 3, i, T0 + i * step_ms, f"k{i}".encode(), f"v{i}".encode() * 20, ())
        for i in range(n)
    ])


def test_slice_rows_bounds_bytes_per_slice() -> None:
    data = _rows(100)
    assert slice_rows(data, data.nbytes) == 100
    assert slice_rows(data, data.nbytes // 4) in (24, 25)  # floor of a quarter
    assert slice_rows(data, 1) == 1
    assert slice_rows(data.slice(0, 0), 10) == 1


@pytest.mark.parametrize(("merge", "step_ms"), [("false", HOUR_MS), ("true", HOUR_MS),
                                               ("false", 1000)])
def test_one_snapshot_many_files_same_rows(settings: Settings, merge: str, step_ms: int) -> None:
    """Across day partitions or all in one day (file names must not repeat across slices)."""
    config = IcebergConfig.from_settings(settings)
    config = replace(config, table_properties={**config.table_properties,
                                               "commit.manifest-merge.enabled": merge})
    catalog: SqlCatalog = open_catalog(config.catalog_uri, config.warehouse)
    schema, spec = tables.table_spec("log")
    writer = TableWriter(catalog, config, "log", schema, spec)
    data = _rows(120, step_ms).cast(writer.table.schema().as_arrow())
    written = write_files(writer.table.metadata, writer.table.io, data, uuid.uuid4(),
                          itertools.count(0), slice_bytes=data.nbytes // 5)
    with writer.table.transaction() as tx:
        files = append_files(tx, written, {"kappa.rows": "120"})
    table = catalog.load_table((config.namespace, "log"))
    (snap,) = table.snapshots()
    assert snap.summary["kappa.rows"] == "120"
    assert snap.summary["added-records"] == "120"
    paths = [task.file.file_path for task in table.scan().plan_files()]
    assert files == len(paths) == len(set(paths))
    assert files >= 5  # five slices (each split further by day)
    back = table.scan().to_arrow().sort_by("offset")
    assert back.to_pylist() == data.to_pylist()


def test_slice_bytes_must_be_positive(settings: Settings) -> None:
    config = IcebergConfig.from_settings(settings)
    catalog = open_catalog(config.catalog_uri, config.warehouse)
    schema, spec = tables.table_spec("log")
    writer = TableWriter(catalog, config, "log", schema, spec)
    with pytest.raises(ValueError, match="slice_bytes"):
        write_files(writer.table.metadata, writer.table.io, _rows(3), uuid.uuid4(),
                    itertools.count(0), slice_bytes=0)
