"""The subsets stage: the random real subset of every student seed, drawn once, and its latent W2.

Reads the encode stage's usable latents (:mod:`ddoq_ray.artifacts.latents`), draws each seed's subset with
:func:`ddoq_ray.artifacts.subsets.random_subset` and measures, one Ray task per class, the exact W2 between the
class's latents and the chosen ones with uniform weights (:func:`ddoq_ray.quantization.w2`). The artifact's
schema is in :mod:`ddoq_ray.artifacts.subsets`.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa

from . import storage
from .artifacts.latents import ids_by_class, read_class_latents
from .artifacts.subsets import subset_table

log = logging.getLogger("ddoq_ray")


def class_subset_w2(encode_dir: str, label: int, chosen: dict[int, list[str]]) -> list[dict]:
    """W2 of each seed's chosen latents of one class against all its latents (the body of a Ray task).

    Args:
        chosen: ``{seed: [id, ...]}`` of this class.
    Returns:
        One row per seed: ``method``, ``seed``, ``label``, ``n``, ``K``, ``w2``.
    """
    from .quantization import w2

    ids, z = read_class_latents(encode_dir, label)
    pos = {i: j for j, i in enumerate(ids)}
    rows = []
    for seed, picked in chosen.items():
        idx = np.array(sorted(pos[i] for i in picked))
        rows.append({"method": "random", "seed": seed, "label": label, "n": len(ids), "K": len(idx),
                     "w2": w2(z, z[idx], np.full(len(idx), 1.0 / len(idx)))})
    return rows


def subsets_stage(run, out: str, summary: dict) -> None:
    """The registered ``subsets`` stage: ``subsets.parquet`` and ``w2.parquet`` for every seed in
    ``train.seeds`` at K = ``quantize.ipc`` (all of a class when it has fewer)."""
    import ray

    from .rundir import stage_path

    cfg = run.cfg
    encode_dir = stage_path(run.dir, "encode")
    by_class = ids_by_class(encode_dir)
    seeds = sorted(set(cfg.train.seeds))
    table = subset_table(by_class, cfg.quantize.ipc, seeds)
    storage.write_parquet(table, storage.join(out, "subsets.parquet"))
    rows = table.to_pylist()
    task = ray.remote(class_subset_w2).options(num_cpus=cfg.quantize.num_cpus, scheduling_strategy="SPREAD",
                                               max_retries=3)
    chosen: dict[int, dict[int, list[str]]] = {c: {s: [] for s in seeds} for c in by_class}
    for r in rows:
        chosen[r["label"]][r["seed"]].append(r["id"])
    refs = [task.remote(encode_dir, c, chosen[c]) for c in sorted(by_class)]
    w2_rows = [r for part in ray.get(refs) for r in part]
    storage.write_parquet(pa.Table.from_pylist(w2_rows), storage.join(out, "w2.parquet"))
    mean = float(np.mean([r["w2"] for r in w2_rows])) if w2_rows else float("nan")
    summary.update({"seeds": seeds, "images": len(rows), "mean_w2_random": mean})
    log.info("subsets: random subsets of seeds %s (%d images); mean latent W2 %.4f", seeds, len(rows), mean)
