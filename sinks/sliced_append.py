"""Append a large Arrow table to an Iceberg table as ONE snapshot, written a slice at a time.

Why not ``Transaction.append`` for big buffers: for a partitioned table pyiceberg
filters every partition out of the whole input and ``combine_chunks`` it before
writing, so a commit briefly holds about three times its rows (measured on the
``events`` table: 100k rows, 34 MB of Arrow, peaked ~110 MB above the buffer).
Every kappa table is day-partitioned, and pyiceberg streams only unpartitioned
tables (apache/iceberg-python#2152). So the buffer is cut into slices of about
``slice_bytes`` and each slice goes through pyiceberg's own writer into one
fast (or merge) append: the same single snapshot, with the same summary, in a
few more data files, and the transient is bounded by a slice, not the buffer.

``_dataframe_to_data_files`` is pyiceberg's internal writer (``append`` itself
calls it); the dependency pin keeps the version this is tested with.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping

import pyarrow as pa
from pyiceberg.io import FileIO
from pyiceberg.io.pyarrow import _dataframe_to_data_files
from pyiceberg.table import TableProperties, Transaction
from pyiceberg.utils.properties import property_as_bool

SLICE_BYTES = 16 * 1024 * 1024
"""Arrow bytes per written slice: large enough for few files, small enough to bound memory."""


def slice_rows(data: pa.Table, slice_bytes: int) -> int:
    """Rows per slice so that a slice holds about ``slice_bytes`` of ``data``."""
    if data.num_rows == 0 or data.nbytes <= slice_bytes:
        return max(data.num_rows, 1)
    return max(1, data.num_rows * slice_bytes // data.nbytes)


def append_sliced(tx: Transaction, io: FileIO, data: pa.Table, properties: Mapping[str, str],
                  slice_bytes: int = SLICE_BYTES) -> int:
    """Stage ``data`` in ``tx`` as one append snapshot; returns the data files written.

    ``data`` must already have the table's Arrow schema (``TableWriter.add`` casts).
    """
    if slice_bytes < 1:
        msg = "slice_bytes must be >= 1"
        raise ValueError(msg)
    metadata = tx.table_metadata
    update = tx.update_snapshot(snapshot_properties=dict(properties))
    merge = property_as_bool(metadata.properties, TableProperties.MANIFEST_MERGE_ENABLED,
                             TableProperties.MANIFEST_MERGE_ENABLED_DEFAULT)
    files = 0
    with update.merge_append() if merge else update.fast_append() as append_files:
        counter = itertools.count(0)  # file names stay unique across slices
        step = slice_rows(data, slice_bytes)
        for offset in range(0, data.num_rows, step):
            for data_file in _dataframe_to_data_files(
                    table_metadata=metadata, write_uuid=append_files.commit_uuid,
                    df=data.slice(offset, step), io=io, counter=counter):
                append_files.append_data_file(data_file)
                files += 1
    return files
