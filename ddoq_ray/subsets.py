"""The subsets stage: the real images of every real-image method, chosen once, and their latent W2.

Reads the encode stage's usable latents (:mod:`ddoq_ray.artifacts.latents`) and the quantize stage's centroids
(:mod:`ddoq_ray.artifacts.centroids`). One Ray task per class:

- ``random``: each student seed's subset (:func:`ddoq_ray.artifacts.subsets.random_subset`), uniform weights;
- ``herding`` / ``k_center``: :func:`ddoq_ray.selection.herding` / :func:`~ddoq_ray.selection.k_center` on the
  class's VAE latents (feature space: VAE latents, flattened), K = IPC, uniform weights;
- a ``nearest_real`` method (e.g. ``ddoq_nearest``): every centroid of its clustering replaced by the real latent
  nearest to it within its cell, weighted by the cell mass (:func:`ddoq_ray.selection.nearest_real`);

and the exact W2 between the class's latents and the latents actually shipped with their weights
(:func:`ddoq_ray.quantization.w2`). The artifact's schema is in :mod:`ddoq_ray.artifacts.subsets`.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from . import storage
from .artifacts.latents import ids_by_class, read_class_latents
from .artifacts.subsets import ANY_SEED, SCHEMA, subset_table

log = logging.getLogger("ddoq_ray")


def select_class(z: np.ndarray, k: int, method: str, quantize_dir: str | None, label: int):
    """The :class:`ddoq_ray.selection.Selection` of preset ``method`` in one class (latents ``z`` [n, ...] in id
    order, K = ``k``)."""
    from .artifacts.centroids import read_class_centroids
    from .artifacts.method_presets import get_method
    from .selection import herding, k_center, nearest_real, select

    m = get_method(method)
    if m.images == "nearest_real":
        _, centroids = read_class_centroids(quantize_dir, m.algorithm, label)
        return nearest_real(z, centroids)
    pick = herding if m.clustering == "herding" else k_center
    return select(z, pick(z, k), m.weights)


def class_subset_w2(encode_dir: str, label: int, chosen: dict[int, list[str]], ipc: int = 0,
                    methods: tuple[str, ...] = (), quantize_dir: str | None = None) -> dict:
    """One class (the body of a Ray task): the W2 of each seed's random subset, and the selections of
    ``methods`` with their W2.

    Args:
        chosen: ``{seed: [id, ...]}`` of this class's random subsets.
        methods: presets chosen here (:func:`ddoq_ray.artifacts.method_presets.subsets_methods`).
    Returns:
        ``{"w2": [{method, seed, label, n, K, w2}], "rows": [subsets.parquet rows of ``methods``]}``.
    """
    from .quantization import w2

    ids, z = read_class_latents(encode_dir, label)
    pos = {i: j for j, i in enumerate(ids)}
    out = {"w2": [], "rows": []}
    for seed, picked in chosen.items():
        idx = np.array(sorted(pos[i] for i in picked))
        out["w2"].append({"method": "random", "seed": seed, "label": label, "n": len(ids), "K": len(idx),
                          "w2": w2(z, z[idx], np.full(len(idx), 1.0 / len(idx)))})
    for m in methods:
        sel = select_class(z, min(ipc, len(ids)), m, quantize_dir, label)
        out["w2"].append({"method": m, "seed": ANY_SEED, "label": label, "n": len(ids), "K": len(sel.indices),
                          "w2": sel.w2})
        out["rows"] += [{"method": m, "seed": ANY_SEED, "label": label, "id": ids[i], "weight": float(w)}
                        for i, w in zip(sel.indices, sel.weights, strict=True)]
    return out


def subsets_stage(run, out: str, summary: dict) -> None:
    """The registered ``subsets`` stage: ``subsets.parquet`` and ``w2.parquet`` for every seed in
    ``train.seeds`` at K = ``quantize.ipc`` (all of a class when it has fewer), and for every configured
    herding / k_center / nearest_real method."""
    import ray

    from .artifacts.method_presets import subsets_methods
    from .rundir import stage_path

    cfg = run.cfg
    encode_dir = stage_path(run.dir, "encode")
    methods = tuple(subsets_methods(cfg))
    quantize_dir = stage_path(run.dir, "quantize") if methods else None
    by_class = ids_by_class(encode_dir)
    seeds = sorted(set(cfg.train.seeds))
    table = subset_table(by_class, cfg.quantize.ipc, seeds)
    rows = table.to_pylist()
    task = ray.remote(class_subset_w2).options(num_cpus=cfg.quantize.num_cpus, scheduling_strategy="SPREAD",
                                               max_retries=3)
    chosen: dict[int, dict[int, list[str]]] = {c: {s: [] for s in seeds} for c in by_class}
    for r in rows:
        chosen[r["label"]][r["seed"]].append(r["id"])
    refs = [task.remote(encode_dir, c, chosen[c], cfg.quantize.ipc, methods, quantize_dir) for c in sorted(by_class)]
    parts = ray.get(refs)
    w2_rows = [r for p in parts for r in p["w2"]]
    sel_rows = [r for m in methods for p in parts for r in p["rows"] if r["method"] == m]
    storage.write_parquet(pa.Table.from_pylist(rows + sel_rows, schema=SCHEMA),
                          storage.join(out, "subsets.parquet"))
    storage.write_parquet(pa.Table.from_pylist(w2_rows), storage.join(out, "w2.parquet"))
    rand = [r["w2"] for r in w2_rows if r["method"] == "random"]
    mean = float(np.mean(rand)) if rand else float("nan")
    summary.update({"seeds": seeds, "images": len(rows), "mean_w2_random": mean, "selections": list(methods),
                    **{f"mean_w2_{m}": float(np.mean([r["w2"] for r in w2_rows if r["method"] == m]))
                       for m in methods}})
    log.info("subsets: random subsets of seeds %s (%d images); mean latent W2 %.4f; selections %s", seeds,
             len(rows), mean, list(methods) or "none")
