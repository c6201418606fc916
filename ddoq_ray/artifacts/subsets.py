"""The subsets stage's artifact: which real images form the random subset of each student seed, and its W2.

The random subset is drawn in one place only, :func:`random_subset`; the ``subsets`` stage
(:mod:`ddoq_ray.subsets`) records the draw of every student seed, and the real images the other real-image methods
ship (``herding``, ``k_center``: selected in VAE-latent space; the ``nearest_real`` methods: the in-cell nearest
real latent of each centroid of their clustering, :func:`ddoq_ray.selection.nearest_real`), so students, metrics,
the report and the W2 table all read the same images. Schema (``<run>/subsets/<attempt>/``):

- ``subsets.parquet``: ``method`` (``random`` or a method preset), ``seed`` int64 (the student seed for
  ``random``; -1 for the deterministic selections, shared by every seed), ``label`` int64, ``id`` (string),
  ``weight`` float64 (the image's weight in the shipped latent measure, summing to 1 per class: 1/K for
  ``random``, ``herding``, ``k_center``; the cell mass for ``nearest_real``) — one row per chosen image;
- ``w2.parquet``: ``method``, ``seed``, ``label``, ``n`` (latents of the class), ``K`` (images chosen), ``w2``
  (exact latent W2 between the class's latents and the chosen latents with those weights, POT; the measure the
  students train on).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from .. import storage


def random_subset(ids_by_class: dict[int, list[str]], ipc: int, seed: int) -> list[str]:
    """IPC ids per class drawn without replacement (all of a class when it has fewer), seeded.

    Classes are visited in label order and ids sorted within a class, with one ``numpy.random.default_rng(seed)``
    for the whole draw, so the result depends only on the set of ids, ``ipc`` and ``seed`` (not on listing or
    write order). This is the only place a random subset is drawn.

    Returns:
        The chosen ids, class by class (label order), sorted within each class.
    """
    rng = np.random.default_rng(seed)
    out: list[str] = []
    for c in sorted(ids_by_class):
        ids = sorted(ids_by_class[c])
        pick = rng.choice(len(ids), size=min(ipc, len(ids)), replace=False)
        out.extend(ids[i] for i in sorted(pick))
    return out


SCHEMA = pa.schema([("method", pa.string()), ("seed", pa.int64()), ("label", pa.int64()), ("id", pa.string()),
                    ("weight", pa.float64())])
ANY_SEED = -1  # ``seed`` of a deterministic selection (herding, k_center, nearest_real): every student seed


def subset_table(ids_by_class: dict[int, list[str]], ipc: int, seeds: list[int]) -> pa.Table:
    """``subsets.parquet``'s table for the random subsets of ``seeds`` (see module docstring)."""
    label_of = {i: c for c, ids in ids_by_class.items() for i in ids}
    k_of = {c: min(ipc, len(ids)) for c, ids in ids_by_class.items()}
    rows = [{"method": "random", "seed": s, "label": label_of[i], "id": i, "weight": 1.0 / k_of[label_of[i]]}
            for s in seeds for i in random_subset(ids_by_class, ipc, s)]
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def read_selection(subsets_dir: str, method: str) -> tuple[list[str], np.ndarray]:
    """The ids (class by class in label order, selection order within a class) and shipped weights float64 of a
    deterministic selection ``method`` (herding, k_center, a nearest_real method).

    Raises:
        KeyError: this run's subsets stage did not select for ``method`` (it selects for ``train.methods``).
    """
    t = storage.read_parquet(storage.join(subsets_dir, "subsets.parquet")).to_pylist()
    rows = [r for r in t if r["method"] == method and r["seed"] == ANY_SEED]
    if not rows:
        raise KeyError(f"no {method} selection in {subsets_dir}; add {method} to train.methods and re-run")
    return [r["id"] for r in rows], np.array([r["weight"] for r in rows], dtype=np.float64)


def read_subset_ids(subsets_dir: str, seed: int, method: str = "random") -> list[str]:
    """The ids chosen for ``(method, seed)`` by the subsets stage.

    Raises:
        KeyError: that seed was not drawn by this run's subsets stage (its seeds are ``train.seeds``).
    """
    t = storage.read_parquet(storage.join(subsets_dir, "subsets.parquet")).to_pylist()
    ids = [r["id"] for r in t if r["method"] == method and r["seed"] in (seed, ANY_SEED)]
    if not ids:
        seeds = sorted({r["seed"] for r in t if r["method"] == method})
        raise KeyError(f"no {method} subset for seed {seed} in {subsets_dir} (drawn: {seeds})")
    return ids


def read_w2(subsets_dir: str) -> list[dict]:
    """``w2.parquet`` rows: the latent W2 of each (method, seed, class) subset."""
    return storage.read_parquet(storage.join(subsets_dir, "w2.parquet")).to_pylist()


def w2_by_class(subsets_dir: str, method: str = "random") -> dict[int, dict]:
    """Per class: ``{"w2": mean over seeds, "w2_per_seed": {seed: w2}}`` for ``method``'s subsets."""
    out: dict[int, dict] = {}
    for r in read_w2(subsets_dir):
        if r["method"] == method:
            out.setdefault(r["label"], {"w2_per_seed": {}})["w2_per_seed"][r["seed"]] = r["w2"]
    for v in out.values():
        v["w2"] = float(np.mean(list(v["w2_per_seed"].values())))
    return out
