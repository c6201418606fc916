"""Ingest's Ray layer: a split's index rows as a Ray Dataset ``{id, label, bytes}`` whose read tasks fetch their own
image bytes (:func:`ddoq_ray.data.read_bytes`), so the driver never holds images. The pure core (listing,
decoding a selection) is :mod:`ddoq_ray.data`."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from .data import read_bytes
from .parquet_rows import read_parquet_table


def read_split(index: pa.Table, image_column: str, rows_per_block: int = 2048):
    """A Ray Dataset ``{id, label, bytes}`` over an index from :func:`list_split`, in blocks of ``rows_per_block``
    consecutive index rows (:func:`read_blocks`)."""
    slim = index.select(["id", "label", "file", "row"])
    return read_blocks([slim.slice(s, rows_per_block) for s in range(0, slim.num_rows, rows_per_block)],
                       image_column)


def read_index_blocks(index_loc: str, blocks: list[list[tuple[int, int]]], image_column: str):
    """A Ray Dataset ``{id, label, bytes, pos}``, one block per entry of ``blocks`` (row ranges ``[start, stop)``
    of the index file ``index_loc``, a Parquet copy of a :func:`list_split` index; ``pos`` is the row in it).

    Each block's task reads its index rows from that file (only the row groups holding them) and then its images,
    so the driver ships a few integers per block, not the index: blocks of the index itself, put into the object
    store by the driver, kept a second copy of it in the driver's shared pages (docs/benchmarks.md, stand-in run).
    """
    import ray

    items = [{"ranges": [list(r) for r in b]} for b in blocks]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))  # one block per entry

    def _rows(batch: pa.Table) -> pa.Table:
        pos = np.concatenate([np.arange(a, b, dtype=np.int64) for rs in batch.column("ranges").to_pylist()
                              for a, b in rs])
        rows = read_parquet_table(index_loc, ["id", "label", "file", "row"], pos)
        return rows.append_column("pos", pa.array(pos))

    return _with_bytes(ds.map_batches(_rows, batch_format="pyarrow", batch_size=None, num_cpus=0.25),
                       image_column, ("pos",))


def read_blocks(blocks: list[pa.Table], image_column: str, keep: tuple[str, ...] = ()):
    """A Ray Dataset ``{id, label, bytes, *keep}``, one block per given slice of an index (columns ``id``,
    ``label``, ``file``, ``row`` and ``keep``, passed through unchanged).

    Each block reads its own rows (the row groups that hold them, per Parquet file; or one file read per image), so
    the driver never holds image bytes and a 1.28 M-image ImageNet split streams through the cluster.
    """
    import ray

    # One block per slice of the index (no all-to-all repartition: it needs whole CPUs that a full actor pool
    # on a small node never frees, the Ray Data deadlock of env notes G6).
    ds = ray.data.from_arrow([b.select(["id", "label", "file", "row", *keep]) for b in blocks])
    return _with_bytes(ds, image_column, keep)


def _with_bytes(ds, image_column: str, keep: tuple[str, ...]):
    """Map index rows (``id, label, file, row, *keep``) to ``{id, label, bytes, *keep}``, one task per block."""

    def _load(batch: pa.Table) -> pa.Table:
        raw = read_bytes(batch, image_column)
        return pa.table({"id": batch.column("id"), "label": batch.column("label"),
                         "bytes": pa.array(raw, pa.binary()), **{k: batch.column(k) for k in keep}})

    return ds.map_batches(_load, batch_format="pyarrow", batch_size=None, num_cpus=0.25)
