"""A split's index on disk, so the driver does not hold it (issue 15; docs/benchmarks.md, stand-in run).

:func:`list_split_file` writes the index of :func:`ddoq_ray.data.list_split` (the same rows, columns and schema
metadata) to one Parquet file with row groups of :data:`ROWS_PER_GROUP` rows. A Parquet split (the HF layout of
ImageNet-1K) is listed file by file: the driver keeps 8 bytes per row of labels and 8 of id hashes while it
lists, never the index itself (the in-memory listing peaked at ~107 bytes per row, 1.6x the index). Other
formats are listed in memory as before and then written.

:class:`IndexFile` reads it back: the labels, the ids of a row range, the rows of given ids (streamed), or the
whole table. The file is the driver's private working copy (:class:`ddoq_ray.context.Run` keeps it in a
temporary folder deleted with the run object; it is listed afresh by every run, so it is never stale); the
encode attempt keeps its own copy (``<attempt>/index.parquet``).
"""

from __future__ import annotations

import shutil
import weakref

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import storage
from .config import DataConfig
from .errors import DataError
from .id_checks import duplicate_positions, id_hashes
from .parquet_rows import read_parquet_table

ROWS_PER_GROUP = 2048  # row groups of the index file; encode cuts its read blocks on this grid (ROWS_PER_BLOCK)


class IndexFile:
    """The index written by :func:`list_split_file` (or :func:`write_index_file`) at ``loc``.

    Columns as :func:`ddoq_ray.data.list_split`: ``id`` (string), ``label`` (int64), ``orig_label`` (int64),
    ``file`` (dictionary<int32, binary>), ``row`` (int64), in index order.
    """

    def __init__(self, loc: str):
        self.loc = loc
        fs, path = storage.resolve(loc)
        meta = pq.ParquetFile(path, filesystem=fs).metadata
        self.num_rows: int = meta.num_rows
        self.metadata: dict | None = meta.schema.to_arrow_schema().metadata

    def delete_with(self, folder: str) -> IndexFile:
        """Delete the local ``folder`` (holding this file) when this object is garbage-collected or the process
        exits, so the file lives exactly as long as someone can read it."""
        weakref.finalize(self, shutil.rmtree, folder, True)
        return self

    def _file(self) -> pq.ParquetFile:
        fs, path = storage.resolve(self.loc)
        return pq.ParquetFile(path, filesystem=fs)

    def labels(self) -> np.ndarray:
        """int64 ``[num_rows]``: the ``label`` column."""
        return self._file().read(columns=["label"]).column("label").to_numpy()

    def ids(self, start: int, stop: int) -> pa.Array:
        """The ids of rows ``[start, stop)`` (string), reading only the row groups that hold them."""
        t = read_parquet_table(self.loc, ["id"], np.arange(start, stop, dtype=np.int64))
        return t.column("id").combine_chunks()

    def rows_with_ids(self, ids, columns: list[str] | None = None) -> pa.Table:
        """The rows whose id is in ``ids`` (a small collection: a report's or a subset's images), in index
        order, scanning one row group at a time (the driver never holds the whole index)."""
        want = pa.array(sorted(set(ids)), pa.string())
        parts = []
        for batch in self._file().iter_batches(batch_size=ROWS_PER_GROUP, columns=columns):
            hit = pc.is_in(batch.column("id"), value_set=want)
            if pc.any(hit).as_py():
                parts.append(pa.Table.from_batches([batch.filter(hit)]))
        return (pa.concat_tables(parts) if parts else
                self._file().schema_arrow.empty_table().select(columns or self._file().schema_arrow.names))

    def table(self) -> pa.Table:
        """The whole index as one Arrow table (its schema metadata included): for consumers that need every row
        (a CIFAR-sized teacher or student set), not for ImageNet-scale driver code."""
        return self._file().read()


class _GroupWriter:
    """Parquet writer whose row groups are exactly ``ROWS_PER_GROUP`` rows (the last one shorter), whatever the
    sizes of the tables written to it."""

    def __init__(self, loc: str, schema: pa.Schema):
        self._out = storage.open_output(loc)
        self._w = pq.ParquetWriter(self._out, schema)
        self._buf: list[pa.Table] = []
        self._n = 0

    def write(self, t: pa.Table) -> None:
        self._buf.append(t)
        self._n += t.num_rows
        if self._n >= ROWS_PER_GROUP:
            t = pa.concat_tables(self._buf)
            full = (self._n // ROWS_PER_GROUP) * ROWS_PER_GROUP
            self._w.write_table(t.slice(0, full), row_group_size=ROWS_PER_GROUP)
            self._buf, self._n = [t.slice(full)], self._n - full

    def close(self) -> None:
        if self._n:
            self._w.write_table(pa.concat_tables(self._buf), row_group_size=ROWS_PER_GROUP)
        self._buf, self._n = [], 0
        if not self._out.closed:
            self._w.close()
            self._out.close()


def write_index_file(index: pa.Table, loc: str) -> IndexFile:
    """Write an in-memory index (from :func:`ddoq_ray.data.list_split`) as an :class:`IndexFile`."""
    storage.write_parquet(index, loc, row_group_size=ROWS_PER_GROUP)
    return IndexFile(loc)


def copy_columns(index: IndexFile, loc: str, columns: list[str]) -> None:
    """Write ``columns`` of ``index`` to the Parquet file ``loc`` (local or remote), one row group at a time, with
    the same ``ROWS_PER_GROUP`` row groups."""
    w = None
    try:
        for batch in index._file().iter_batches(batch_size=ROWS_PER_GROUP, columns=columns):
            t = pa.Table.from_batches([batch])
            w = w or _GroupWriter(loc, t.schema)
            w.write(t)
    finally:
        if w is not None:
            w.close()


def streamed_files(source: str, dcfg: DataConfig, train: str | None) -> list[str] | None:
    """The Parquet files of a train split whose labels are integers (listed file by file), else None."""
    from .data import detect_format, parquet_files

    if train is not None or detect_format(source, dcfg.format) != "parquet":
        return None
    files = parquet_files(source)
    fs, path = storage.resolve(files[0], field="data")
    schema = pq.read_schema(path, filesystem=fs)
    label = schema.field(dcfg.label_column).type if dcfg.label_column in schema.names else None
    return None if label is None or pa.types.is_string(label) or pa.types.is_large_string(label) else files


def list_split_file(source: str, dcfg: DataConfig, loc: str, max_per_class: int | None = None,
                    train: str | None = None) -> tuple[IndexFile, list[str]]:
    """:func:`ddoq_ray.data.list_split`, written to the local or remote file ``loc`` instead of returned.

    The result equals ``list_split``'s (rows, values, order, schema metadata; tested). Same errors (DataError,
    FormatError). A train split of Parquet files with integer labels is listed file by file (see module
    docstring): a raw pass writes ``loc + ".raw"`` (deleted after), the rows to keep are chosen from the labels,
    and a second pass writes the kept rows with their labels.
    """
    from .data import check_unique_ids, label_plan, list_split, load_classes, parquet_part

    files = streamed_files(source, dcfg, train)
    if files is None:
        index, classes = list_split(source, dcfg, max_per_class, train)
        return write_index_file(index, loc), classes
    raw_loc = loc + ".raw"
    orig_parts, hash_parts, writer, out = [], [], None, None
    try:
        for f in files:
            part = parquet_part(f, dcfg)
            if pa.types.is_string(part.column("orig_label").type):
                raise DataError(f"{f}: string labels in {dcfg.label_column!r} while {files[0]} has integers")
            writer = writer or _GroupWriter(raw_loc, part.schema)
            writer.write(part)
            orig_parts.append(part.column("orig_label").to_numpy())
            hash_parts.append(id_hashes(part.column("id")))
            del part
        if writer is not None:
            writer.close()
            writer = None
        if not orig_parts or not sum(map(len, orig_parts)):
            raise DataError(f"{source}: split has no images")
        # Peak ~30 bytes per row from here on (labels, mask, hashes; each array freed as soon as it is done with).
        orig = np.concatenate(orig_parts)
        del orig_parts
        _, mask, label, classes = label_plan(orig, load_classes(dcfg, source), dcfg, max_per_class, None, source)
        del orig
        start, taken = 0, 0
        fs, raw_path = storage.resolve(raw_loc)
        for batch in pq.ParquetFile(raw_path, filesystem=fs).iter_batches(batch_size=ROWS_PER_GROUP):
            keep = mask[start:start + batch.num_rows]
            start += batch.num_rows
            t = pa.Table.from_batches([batch]).filter(pa.array(keep))
            t = t.append_column("label", pa.array(label[taken:taken + t.num_rows])).select(_columns())
            taken += t.num_rows
            out = out or _GroupWriter(loc, t.schema)
            out.write(t)
    finally:  # closes what an error left open (close is idempotent), then drops the raw pass
        for w in (writer, out):
            if w is not None:
                w.close()
        storage.delete_file(raw_loc)
    all_kept = bool(mask.all())
    del label
    hashes = np.concatenate(hash_parts)
    del hash_parts
    if not all_kept:
        hashes = hashes[mask]
    del mask
    index = IndexFile(loc)
    dup = duplicate_positions(hashes)  # rows whose hashes collide, compared as strings
    del hashes
    if dup.size:
        check_unique_ids(read_parquet_table(loc, ["id"], dup).column("id"), source)
    return index, classes


def _columns() -> list[str]:
    from .data import INDEX_COLUMNS

    return INDEX_COLUMNS


def id_slice(index: pa.Table | IndexFile, start: int, stop: int) -> pa.Array | pa.ChunkedArray:
    """The ids of rows ``[start, stop)`` of an in-memory index or an :class:`IndexFile`."""
    if isinstance(index, IndexFile):
        return index.ids(start, stop)
    return index.column("id").slice(start, stop - start)
