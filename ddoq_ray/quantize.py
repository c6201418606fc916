"""Stage 2, quantize: per-class k-means (K = IPC), exact Voronoi cell masses and latent W2.

The formulas (W2-optimal cell-mass weights, the W2 = sqrt(inertia / N) identity) and the pure core
(:func:`~ddoq_ray.quantization.kmeans`, ``assign_exact``, ``quantize_class``, ``centroid_weights``, ``w2``) live
in :mod:`ddoq_ray.quantization`. This module is the stage: :func:`run_quantize`, one Ray task per class; the
artifact's readers are in :mod:`ddoq_ray.artifacts.centroids`.

Artifact ``<run>/quantize/<attempt>/`` (:func:`ddoq_ray.rundir.stage_path`):
- ``centroids.parquet``: ``label`` int64, ``k`` int32, ``centroid`` fixed_shape_tensor<float32>[C,h,w],
  ``count`` int64 (latents in the cell), ``mass`` float64 (count / N; sums to 1 per class).
- ``classes.parquet``: ``label``, ``n`` (latents), ``K``, ``inertia`` (Σ squared distances, float64),
  ``w2_mass``, ``w2_uniform`` (POT ``ot.emd2``, square-rooted), ``w2_identity`` (= sqrt(inertia / n)). The W2
  of the random real subsets is measured by the ``subsets`` stage on the very subsets the students train on.
- ``assignments.parquet``: ``id``, ``label``, ``k``, ``sqdist`` for every latent (which cell it fell in).
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import storage
from .config import QuantizeConfig
from .errors import DdoqError
from .quantization import centroid_weights, quantize_class, w2

log = logging.getLogger("ddoq_ray")


class SmallClassError(DdoqError, ValueError):
    """A class has fewer latents than IPC and ``quantize.small_class`` is ``error``."""


def class_k(n: int, qcfg: QuantizeConfig, label: int) -> int:
    """K for a class of n latents (IPC, or n under ``small_class: shrink``)."""
    if n == 0:
        raise SmallClassError(f"class {label} has no usable latents; remove it via data.class_subset")
    if n < qcfg.ipc:
        if qcfg.small_class == "error":
            raise SmallClassError(f"class {label} has {n} latents < ipc={qcfg.ipc}; lower quantize.ipc or set "
                                  "quantize.small_class=shrink (K = class size, recorded in results)")
        return n
    return qcfg.ipc


def quantize_from_disk(encode_dir: str, label: int, qcfg: QuantizeConfig) -> dict:
    """Read one class's latents, quantize, and measure W2 (the body of a Ray task; pure apart from reading).

    ``encode_dir`` is a location (local path or URI), read on whichever node runs the task."""
    from .artifacts.latents import read_class_latents

    ids, z = read_class_latents(encode_dir, label)
    k = class_k(len(ids), qcfg, label)
    q = quantize_class(z, k, qcfg.niter, qcfg.nredo, qcfg.seed + label, max(1, round(qcfg.num_cpus)))
    return {"label": label, "ids": ids, "q": q,
            "w2_mass": w2(z, q.centroids, q.mass),
            "w2_uniform": w2(z, q.centroids, centroid_weights(q.mass, "uniform"))}


def run_quantize(qcfg: QuantizeConfig, encode_dir: str, labels: list[int], out: str, summary: dict) -> None:
    """One Ray task per class (spread over nodes), results written as the artifacts in the module docstring."""
    import ray
    from tqdm.auto import tqdm

    from .artifacts.latents import to_tensor_array

    task = ray.remote(quantize_from_disk).options(num_cpus=qcfg.num_cpus, scheduling_strategy="SPREAD",
                                                  max_retries=3)
    pending = [task.remote(encode_dir, c, qcfg) for c in labels]
    # Each class's result is appended to the Parquet files as it arrives and then dropped, so driver memory
    # does not grow with the number of classes (rows are in arrival order; readers sort by label, k).
    writers: dict[str, pq.ParquetWriter] = {}

    def append(name: str, table: pa.Table) -> None:
        if name not in writers:
            fs, path = storage.resolve(storage.join(out, name))
            writers[name] = pq.ParquetWriter(path, table.schema, filesystem=fs)
        writers[name].write_table(table)

    cls_rows = []
    try:
        with tqdm(total=len(pending), desc="quantize (classes)", unit="class") as bar:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                r = ray.get(done[0])
                q, c = r["q"], r["label"]
                k = len(q.counts)
                append("centroids.parquet", pa.table({
                    "label": pa.array([c] * k, pa.int64()), "k": pa.array(np.arange(k, dtype=np.int32)),
                    "centroid": to_tensor_array(q.centroids), "count": pa.array(q.counts),
                    "mass": pa.array(q.mass)}))
                append("assignments.parquet", pa.table({
                    "id": pa.array(r["ids"], pa.string()), "label": pa.array([c] * q.n, pa.int64()),
                    "k": pa.array(q.assign.astype(np.int32)), "sqdist": pa.array(q.sqdist)}))
                cls_rows.append({"label": c, "n": q.n, "K": k, "inertia": q.inertia, "w2_mass": r["w2_mass"],
                                 "w2_uniform": r["w2_uniform"],
                                 "w2_identity": float(np.sqrt(q.inertia / q.n))})
                del r, q, done
                bar.update(1)
    finally:
        for w in writers.values():
            w.close()
    cls_rows.sort(key=lambda r: r["label"])
    storage.write_parquet(pa.Table.from_pylist(cls_rows), storage.join(out, "classes.parquet"))
    w2m = np.array([r["w2_mass"] for r in cls_rows])
    w2u = np.array([r["w2_uniform"] for r in cls_rows])
    summary.update({"classes": len(cls_rows), "centroids": int(sum(r["K"] for r in cls_rows)),
                    "shrunk_classes": [r["label"] for r in cls_rows if r["K"] < qcfg.ipc],
                    "mean_w2_mass": float(w2m.mean()), "mean_w2_uniform": float(w2u.mean()),
                    "w2_reduction_pct": float(100 * (1 - w2m.mean() / w2u.mean()))})
    log.info("quantize: mean latent W2 uniform %.4f -> mass %.4f (%.1f%% lower)", w2u.mean(), w2m.mean(),
             summary["w2_reduction_pct"])



def quantize_stage(run, out: str, summary: dict) -> None:
    """The registered ``quantize`` stage (:mod:`ddoq_ray.stages`): every class of the run."""
    from .rundir import stage_path

    run_quantize(run.cfg.quantize, stage_path(run.dir, "encode"), list(range(len(run.classes))), out, summary)
