"""The encode stage's artifact: latents in hive-partitioned Parquet, their meta and the skipped rows.

Schema (``<run>/encode/<attempt>/``; the writer is :mod:`ddoq_ray.encode`):
- ``latents/shard=<s>/status=ok/label=<c>/*.parquet``: ``id`` (string), ``error`` (string, empty), ``latent``
  (``arrow.fixed_shape_tensor<float32>[C,h,w]``); ``status=skipped`` holds unusable rows (``error`` says why,
  ``latent`` is zeros);
- ``meta.json``: VAE ref and kind, image size, latent shape and mode; ``skipped.parquet``: ``id``, ``label``,
  ``error``; ``shards.json`` and ``done/<s>.json``: the shard plan and one marker per finished shard;
  ``index.parquet``: the encoded index (``id``, ``label``, ``file``, ``row``).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import storage
from ..errors import DdoqError

META = "meta.json"


class LatentMismatchError(DdoqError, ValueError):
    """Latents on disk were made by another VAE or at another shape than the run asks for."""


def to_tensor_array(x: np.ndarray) -> pa.Array:
    """float32 ``[n, *shape]`` -> Arrow-native ``fixed_shape_tensor`` (shape kept in the Parquet schema)."""
    return pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(x, dtype=np.float32))


def scan(out: str, columns: list[str] | None = None, status: str | None = None,
         label: int | None = None) -> pa.Table:
    """Read the latents table of an encode folder with plain pyarrow (any filesystem; hive partitions ``shard``,
    ``status`` and ``label`` become columns), one shard folder at a time: a dataset over every file of a
    1,000-class run (one file per shard, label and status) held ~20 KB of fragment metadata per file in the
    driver at once (docs/benchmarks.md, ImageNet-shaped stand-in), a shard's files only a shard's worth.

    Returns:
        the requested ``columns`` (default: ``id``, ``error``, ``latent``, ``shard``, ``status``, ``label``) of
        the rows matching ``status`` / ``label``, shards in name order.
    """
    root = storage.join(out, "latents")
    names = shard_dirs(root)
    if not names:
        raise FileNotFoundError(f"{root}: no shard=* folders (not an encode attempt folder?)")
    return pa.concat_tables([scan_shard(out, n.split("=", 1)[1], columns, status, label) for n in names])


def shard_files(out: str, shard: str) -> list[tuple[str, str, int]]:
    """``(location, status, label)`` of every Parquet file under ``latents/shard=<shard>`` (one recursive listing;
    the hive keys come from the folder names), sorted by path; ``[]`` when the folder does not exist."""
    d = storage.join(out, "latents", f"shard={shard}")
    files = []
    for rel, _ in storage.walk_files(d):
        parts = rel.split("/")
        if len(parts) != 3 or not parts[2].endswith(".parquet"):
            continue
        st, lab = parts[0].removeprefix("status="), parts[1].removeprefix("label=")
        files.append((storage.join(d, rel), st, int(lab)))
    return files


def read_file(loc: str, columns: list[str] | None = None) -> pa.Table:
    """One latent file with ``pyarrow.parquet.ParquetFile`` (footer + the columns asked for).

    Not ``pyarrow.dataset``: a dataset per shard kept ~1 KB per distinct file in the driver after it was dropped
    (in a micro-test over the stand-in's 32 shards RSS grew ~1-3 MB per shard and never came back); file by file stays
    flat at the same speed."""
    with storage.open_input(loc) as f:
        return pq.ParquetFile(f).read(columns=columns)


def file_rows(loc: str) -> int:
    """Row count of one Parquet file from its footer (no column read)."""
    with storage.open_input(loc) as f:
        return pq.ParquetFile(f).metadata.num_rows


def scan_shard(out: str, shard: str, columns: list[str] | None = None, status: str | None = None,
               label: int | None = None) -> pa.Table:
    """:func:`scan` of one shard folder ``latents/shard=<shard>`` (one chunk per column), read file by file
    (:func:`read_file`); an absent folder gives an empty table."""
    cols = list(columns) if columns is not None else ["id", "error", "latent", "shard", "status", "label"]
    read = [c for c in cols if c not in ("shard", "status", "label")]
    parts = []
    for loc, st, lab in shard_files(out, shard):
        if (status is not None and st != status) or (label is not None and lab != label):
            continue
        t = read_file(loc, read)
        n = t.num_rows
        t = t.append_column("status", pa.repeat(pa.scalar(st, pa.string()), n))
        t = t.append_column("label", pa.repeat(pa.scalar(lab, pa.int64()), n))
        parts.append(t.append_column("shard", pa.repeat(pa.scalar(shard, pa.string()), n)))
    if not parts:
        return pa.table({c: pa.array([], pa.int64() if c == "label" else pa.string()) for c in cols})
    return pa.concat_tables(parts).select(cols).combine_chunks()  # one chunk per shard, not one per file


def class_files(out: str, label: int, status: str = "ok") -> list[str]:
    """The Parquet files of one class: ``latents/shard=*/status=<status>/label=<label>/*.parquet``, found by listing
    only those folders (one listing of ``latents/`` plus one per shard), never the whole dataset: a 1,000-class
    run has ~1,000 files per shard, and discovering all of them for each class task was quadratic in the
    class count (docs/benchmarks.md, ImageNet-shaped stand-in)."""
    root = storage.join(out, "latents")
    files = []
    for shard in shard_dirs(root):
        d = storage.join(root, shard, f"status={status}", f"label={label}")
        files += [storage.join(d, f) for f in storage.listdir(d) if f.endswith(".parquet")]
    return files


def shard_dirs(root: str) -> list[str]:
    """The ``shard=<s>`` folder names under an attempt's ``latents/``, sorted."""
    return [n for n in storage.listdir(root) if n.startswith("shard=")]


def _read_files(files: list[str], columns: list[str]) -> pa.Table:
    if not files:
        return pa.table({c: pa.array([], pa.string()) for c in columns})
    return pa.concat_tables([read_file(f, columns) for f in files])


def read_class_latents(out: str, label: int) -> tuple[list[str], np.ndarray]:
    """All usable latents of one class, sorted by id (deterministic regardless of write order or sharding).

    Returns:
        ``(ids, latents float32 [n, C, h, w])``.
    """
    t = _read_files(class_files(out, label), ["id", "latent"])
    if t.num_rows == 0:
        return [], np.zeros((0,), dtype=np.float32)
    t = t.sort_by("id")
    col = t.column("latent").combine_chunks()
    return t.column("id").to_pylist(), col.to_numpy_ndarray().astype(np.float32, copy=False)


def read_meta(out: str) -> dict:
    return storage.read_json(storage.join(out, META))


def check_meta(meta: dict, vae: str, shape: tuple[int, ...]) -> None:
    """Refuse latents made by a different VAE or at a different shape than the decoder expects.

    Raises:
        LatentMismatchError: naming both values and how to fix it.
    """
    if meta["vae"] != vae or tuple(meta["latent_shape"]) != tuple(shape):
        raise LatentMismatchError(
            f"latents were made with VAE {meta['vae']!r} at shape {tuple(meta['latent_shape'])}, but the decoder is "
            f"{vae!r} at {tuple(shape)}; re-run the encode stage with the decoder's VAE (encode.vae) and image size")


def ids_by_class(encode_dir: str) -> dict[int, list[str]]:
    """The ids of the usable (``status=ok``) latents of each class: ``{label: [id, ...]}`` in scan order."""
    ok = scan(encode_dir, columns=["id", "label"], status="ok")
    out: dict[int, list[str]] = {}
    for i, c in zip(ok.column("id").to_pylist(), ok.column("label").to_pylist(), strict=True):
        out.setdefault(c, []).append(i)
    return out
