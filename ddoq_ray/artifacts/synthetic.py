"""The decode stage's artifact: the synthetic images (ImageFolder layout) and their manifest.

Schema (``<run>/decode/<attempt>/``; the writer is :mod:`ddoq_ray.decode`):
- ``synthetic/<class name>/<label>_<k>.png`` (``<label>_<k>_<copy>.png`` with several images per centroid);
- ``synthetic/<algorithm>/<class name>/...`` instead when several clusterings were decoded;
- ``manifest.parquet``: ``path`` (relative to ``synthetic/``), ``algorithm`` (the clustering; absent before
  issue 14, read as ``lloyd``), ``label`` int64, ``class_name``, ``k`` int32,
  ``copy`` int32, ``count`` int64, ``mass`` float64 (the centroid's cell mass), ``weight_mass`` float64
  (= mass / images_per_centroid, the image's weight), ``mode``, ``model``, ``strength``, ``guidance_scale``,
  ``steps``, ``denoise_steps``, ``seed`` int64;
- ``grid.png``: one row per class (up to 20), heaviest cell first.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from .. import storage


def read_manifest(decode_dir: str, algorithm: str | None = None) -> pa.Table:
    """``manifest.parquet`` of a decode folder (location): the images of clustering ``algorithm`` (all when None)."""
    import pyarrow.compute as pc

    t = storage.read_parquet(storage.join(decode_dir, "manifest.parquet"))
    if "algorithm" not in t.column_names:
        t = t.append_column("algorithm", pa.array(["lloyd"] * t.num_rows, pa.string()))
    return t if algorithm is None else t.filter(pc.equal(t.column("algorithm"), algorithm))


def decoded_algorithms(decode_dir: str) -> list[str]:
    """The clusterings whose centroids a decode folder holds images of."""
    return list(dict.fromkeys(read_manifest(decode_dir).column("algorithm").to_pylist()))


def load_synthetic(decode_dir: str, size: int, algorithm: str | None = None) -> dict[str, np.ndarray]:
    """The decoded set of clustering ``algorithm`` in memory for training: ``images`` uint8 [n,size,size,3],
    ``labels`` int64, ``mass`` float64 (each image's weight: its centroid's mass / images_per_centroid), ``k``
    int64. ``decode_dir`` is the decode stage's folder (:func:`ddoq_ray.rundir.stage_path`), a local path or URI.

    Raises:
        KeyError: ``algorithm`` was not decoded, or None while several were (the message lists them).
    """
    from ..images import decode_image

    have = decoded_algorithms(decode_dir)
    if algorithm is None and len(have) > 1:
        raise KeyError(f"{decode_dir} holds decoded sets of {have}: name the algorithm")
    if algorithm is not None and algorithm not in have:
        raise KeyError(f"{decode_dir} has no decoded {algorithm} centroids (decoded: {have}); add a decoded method "
                       "with that clustering to train.methods and re-run")
    manifest = read_manifest(decode_dir, algorithm).to_pylist()
    root = storage.join(decode_dir, "synthetic")
    images = np.stack([decode_image(storage.read_bytes(storage.join(root, r["path"])), size) for r in manifest])
    return {"images": images, "labels": np.array([r["label"] for r in manifest], dtype=np.int64),
            "mass": np.array([r.get("weight_mass", r["mass"]) for r in manifest], dtype=np.float64),
            "k": np.array([r["k"] for r in manifest], dtype=np.int64)}
