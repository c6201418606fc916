"""Reading given rows of one Parquet file through only the row groups that hold them (image shards of the HF
layout, the encode attempt's ``index.parquet``), on any filesystem :mod:`ddoq_ray.storage` resolves."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import storage


def _row_group_offsets(pf: pq.ParquetFile) -> np.ndarray:
    """int64 ``[num_row_groups + 1]``: the first row of each row group of a Parquet file, then its row count."""
    meta = pf.metadata
    return np.cumsum([0] + [meta.row_group(i).num_rows for i in range(meta.num_row_groups)], dtype=np.int64)


def read_parquet_rows(loc: str, column: str, rows: np.ndarray) -> list:
    """The values of ``column`` at file rows ``rows`` (int64, any order) of one Parquet file, reading only the
    row groups that hold them (``pyarrow.parquet.ParquetFile.read_row_groups``), so a block of 2,048 rows of a
    large shard reads a few row groups instead of the whole column.

    Returns:
        Python values in the order of ``rows`` (``dict`` for a struct column such as HF's ``{bytes, path}``).
    """
    return read_parquet_table(loc, [column], rows).column(column).to_pylist()


def read_parquet_table(loc: str, columns: list[str], rows: np.ndarray) -> pa.Table:
    """Columns ``columns`` at file rows ``rows`` (int64, any order) of one Parquet file, in the order of ``rows``,
    reading only the row groups that hold them."""
    fs, path = storage.resolve(loc)
    pf = pq.ParquetFile(path, filesystem=fs)
    offsets = _row_group_offsets(pf)
    group = np.searchsorted(offsets, rows, side="right") - 1  # row group of each row
    groups = np.unique(group)
    sizes = np.diff(offsets)[groups]
    start_in_read = np.zeros(offsets.size - 1, dtype=np.int64)  # where each read group starts in the read table
    start_in_read[groups] = np.cumsum(sizes) - sizes
    t = pf.read_row_groups(groups.tolist(), columns=columns)
    return t.take(pa.array(start_in_read[group] + rows - offsets[group]))
