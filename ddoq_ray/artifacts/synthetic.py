"""The decode stage's artifact: the synthetic images (ImageFolder layout) and their manifest.

Schema (``<run>/decode/<attempt>/``; the writer is :mod:`ddoq_ray.decode`):
- ``synthetic/<class name>/<label>_<k>.png`` (``<label>_<k>_<copy>.png`` with several images per centroid);
- ``manifest.parquet``: ``path`` (relative to ``synthetic/``), ``label`` int64, ``class_name``, ``k`` int32,
  ``copy`` int32, ``count`` int64, ``mass`` float64 (the centroid's cell mass), ``weight_mass`` float64
  (= mass / images_per_centroid, the image's weight), ``mode``, ``model``, ``strength``, ``guidance_scale``,
  ``steps``, ``denoise_steps``, ``seed`` int64;
- ``grid.png``: one row per class (up to 20), heaviest cell first.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from .. import storage


def read_manifest(decode_dir: str) -> pa.Table:
    """``manifest.parquet`` of a decode folder (location)."""
    return storage.read_parquet(storage.join(decode_dir, "manifest.parquet"))


def load_synthetic(decode_dir: str, size: int) -> dict[str, np.ndarray]:
    """The decoded set in memory for training: ``images`` uint8 [n,size,size,3], ``labels`` int64, ``mass`` float64
    (each image's weight: its centroid's mass / images_per_centroid), ``k`` int64. ``decode_dir`` is the decode
    stage's folder (:func:`ddoq_ray.rundir.stage_path`), a local path or URI."""
    from ..images import decode_image

    manifest = read_manifest(decode_dir).to_pylist()
    root = storage.join(decode_dir, "synthetic")
    images = np.stack([decode_image(storage.read_bytes(storage.join(root, r["path"])), size) for r in manifest])
    return {"images": images, "labels": np.array([r["label"] for r in manifest], dtype=np.int64),
            "mass": np.array([r.get("weight_mass", r["mass"]) for r in manifest], dtype=np.float64),
            "k": np.array([r["k"] for r in manifest], dtype=np.int64)}
