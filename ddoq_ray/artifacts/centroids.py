"""The quantize stage's artifact: centroids with their cell masses, per-class W2 and every latent's cell.

Schema (``<run>/quantize/<attempt>/``; the writer is :mod:`ddoq_ray.quantize`); every row carries the
``algorithm`` (``lloyd`` | ``minibatch`` | ``clvq``) that made it; folders written before issue 14 have no such
column and are read as ``lloyd``:
- ``centroids.parquet``: ``algorithm``, ``label``, ``k``, ``centroid`` (fixed_shape_tensor), ``count``, ``mass``;
- ``classes.parquet``: ``algorithm``, ``label``, ``n``, ``K``, ``inertia``, ``w2_mass``, ``w2_uniform``,
  ``w2_sqrt_mass``, ``w2_identity`` (= sqrt(inertia / n));
- ``assignments.parquet``: ``algorithm``, ``id``, ``label``, ``k``, ``sqdist`` — the cell of every latent.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from .. import storage


def _with_algorithm(t: pa.Table, algorithm: str | None) -> pa.Table:
    if "algorithm" not in t.column_names:  # written before issue 14: faiss Lloyd only
        t = t.append_column("algorithm", pa.array(["lloyd"] * t.num_rows, pa.string()))
    if algorithm is not None:
        t = t.filter(pc.equal(t.column("algorithm"), algorithm))
    return t


def algorithms(quantize_dir: str) -> list[str]:
    """The clusterings a quantize folder holds, in the order the stage ran them."""
    rows = read_class_table(quantize_dir)
    return list(dict.fromkeys(r["algorithm"] for r in rows))


def read_centroids(quantize_dir: str, algorithm: str | None = None) -> pa.Table:
    """``centroids.parquet`` of a quantize folder (location): the rows of ``algorithm`` (all when None), sorted by
    (algorithm, label, k)."""
    t = _with_algorithm(storage.read_parquet(storage.join(quantize_dir, "centroids.parquet")), algorithm)
    return t.sort_by([("algorithm", "ascending"), ("label", "ascending"), ("k", "ascending")])


def read_class_table(quantize_dir: str, algorithm: str | None = None) -> list[dict]:
    """``classes.parquet`` rows (one per algorithm and class, in the stage's algorithm order, then label): n, K,
    inertia and the W2 of each weighting; only ``algorithm``'s rows when given."""
    return _with_algorithm(storage.read_parquet(storage.join(quantize_dir, "classes.parquet")), algorithm).to_pylist()


def read_assignments(quantize_dir: str, columns: list[str] | None = None, algorithm: str | None = None,
                     labels: list[int] | None = None) -> pa.Table:
    """``assignments.parquet``: the cell ``k`` (and squared distance) of every latent, by id; only ``algorithm``'s
    rows when given (``columns`` then need not name ``algorithm``); only the classes ``labels`` when given, read
    by row group (the stage writes one per class and clustering), so a few classes of ImageNet cost a few
    classes' rows, not 1.28 M of them."""
    path = storage.join(quantize_dir, "assignments.parquet")
    kw = {"filters": [("label", "in", [int(c) for c in labels])]} if labels is not None else {}
    if columns is None:
        return _with_algorithm(storage.read_parquet(path, **kw), algorithm)
    try:
        t = storage.read_parquet(path, columns=list(dict.fromkeys([*columns, "label", "algorithm"])), **kw)
    except (pa.ArrowInvalid, KeyError):  # a pre-issue-14 folder without the column
        t = storage.read_parquet(path, columns=list(dict.fromkeys([*columns, "label"])), **kw)
    return _with_algorithm(t, algorithm).select(columns)


def read_cell_masses(quantize_dir: str, algorithm: str | None = None) -> list[dict]:
    """``{label, mass}`` of every centroid of ``algorithm`` (all when None): the report's cell-mass histograms."""
    path = storage.join(quantize_dir, "centroids.parquet")
    try:
        t = storage.read_parquet(path, columns=["algorithm", "label", "mass"])
    except (pa.ArrowInvalid, KeyError):  # a pre-issue-14 folder without the column
        t = storage.read_parquet(path, columns=["label", "mass"])
    return _with_algorithm(t, algorithm).select(["label", "mass"]).to_pylist()


def read_class_centroids(quantize_dir: str, algorithm: str, label: int) -> tuple:
    """One class's centroids of ``algorithm``: ``(k int32 [K], centroids float32 [K, *latent_shape])``."""
    import numpy as np

    t = read_centroids(quantize_dir, algorithm)
    t = t.filter(pc.equal(t.column("label"), label))
    c = t.column("centroid").combine_chunks().to_numpy_ndarray().astype(np.float32, copy=False)
    return np.asarray(t.column("k").to_numpy()), c
