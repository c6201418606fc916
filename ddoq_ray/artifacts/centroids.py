"""The quantize stage's artifact: centroids with their cell masses, per-class W2 and every latent's cell.

Schema (``<run>/quantize/<attempt>/``; the writer is :mod:`ddoq_ray.quantize`):
- ``centroids.parquet``: ``label``, ``k``, ``centroid`` (fixed_shape_tensor), ``count``, ``mass``;
- ``classes.parquet``: ``label``, ``n``, ``K``, ``inertia``, ``w2_mass``, ``w2_uniform``, ``w2_identity``
  (= sqrt(inertia / n));
- ``assignments.parquet``: ``id``, ``label``, ``k``, ``sqdist`` — the cell of every latent.
"""

from __future__ import annotations

import pyarrow as pa

from .. import storage


def read_centroids(quantize_dir: str) -> pa.Table:
    """``centroids.parquet`` of a quantize folder (location) sorted by (label, k)."""
    t = storage.read_parquet(storage.join(quantize_dir, "centroids.parquet"))
    return t.sort_by([("label", "ascending"), ("k", "ascending")])


def read_class_table(quantize_dir: str) -> list[dict]:
    """``classes.parquet`` rows (one per class, by label): n, K, inertia and the W2 of each weighting."""
    return storage.read_parquet(storage.join(quantize_dir, "classes.parquet")).to_pylist()


def read_assignments(quantize_dir: str, columns: list[str] | None = None) -> pa.Table:
    """``assignments.parquet``: the cell ``k`` (and squared distance) of every latent, by id."""
    return storage.read_parquet(storage.join(quantize_dir, "assignments.parquet"), columns=columns)
