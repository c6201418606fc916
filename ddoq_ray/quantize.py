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

Device: the k-means of each class task runs on a GPU share (``quantize.num_gpus``, faiss ``Kmeans(gpu=True)``)
when the cluster has GPUs and the workers' faiss is a GPU build (:func:`kmeans_device`, probed on a GPU worker
by :func:`probe_faiss_gpu`); otherwise on CPUs exactly as before. The exact float64 assignment pass after it is
the same on both. The ``subsets`` stage's per-class tasks stay on CPUs.
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


def faiss_gpu_available() -> bool:
    """True when this process's faiss is a GPU build (faiss-gpu) and sees at least one GPU."""
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def kmeans_device(num_gpus: float, cluster_gpus: int, faiss_gpu: bool) -> tuple[str, str]:
    """Where the per-class k-means runs: ``("gpu" | "cpu", reason for the log line)``.

    Args:
        num_gpus: ``quantize.num_gpus``, the GPU share per class task (0 = never a GPU).
        cluster_gpus: GPUs in the Ray cluster (:func:`ddoq_ray.runtime.cluster_gpus`).
        faiss_gpu: the workers' faiss is a GPU build that sees a GPU (:func:`probe_faiss_gpu`); only consulted
            when the other two allow a GPU.
    """
    if num_gpus <= 0:
        return "cpu", "quantize.num_gpus is 0"
    if cluster_gpus <= 0:
        return "cpu", "the Ray cluster has no GPU"
    if not faiss_gpu:
        return "cpu", "faiss on the GPU workers has no GPU support (install faiss-gpu, the `gpu` extra)"
    return "gpu", f"faiss-gpu, {num_gpus:g} GPU per class task, {cluster_gpus} GPU(s) in the cluster"


def task_options(qcfg: QuantizeConfig, device: str) -> dict:
    """Ray options of the per-class tasks: CPUs always, ``num_gpus`` only on the GPU path (spread, 3 retries)."""
    opts = {"num_cpus": qcfg.num_cpus, "scheduling_strategy": "SPREAD", "max_retries": 3}
    if device == "gpu":
        opts["num_gpus"] = qcfg.num_gpus
    return opts


def probe_faiss_gpu(num_gpus: float, timeout_s: float = 60.0) -> bool:
    """Ask one task holding a ``num_gpus`` share whether faiss there has GPU support (the driver's node may be a
    CPU head without faiss-gpu); False when no GPU share is granted within ``timeout_s``."""
    import ray

    ref = ray.remote(faiss_gpu_available).options(num_cpus=0, num_gpus=num_gpus, max_retries=0).remote()
    try:
        return bool(ray.get(ref, timeout=timeout_s))
    except ray.exceptions.GetTimeoutError:
        ray.cancel(ref, force=True)
        log.warning("quantize: no GPU share of %g was granted within %.0f s; k-means runs on CPUs", num_gpus,
                    timeout_s)
        return False


def quantize_from_disk(encode_dir: str, label: int, qcfg: QuantizeConfig, gpu: bool = False) -> dict:
    """Read one class's latents, quantize, and measure W2 (the body of a Ray task; pure apart from reading).

    ``encode_dir`` is a location (local path or URI), read on whichever node runs the task. ``gpu``: k-means on
    this task's GPU share (faiss-gpu); the assignment pass and W2 stay on the CPU."""
    from .artifacts.latents import read_class_latents

    ids, z = read_class_latents(encode_dir, label)
    k = class_k(len(ids), qcfg, label)
    q = quantize_class(z, k, qcfg.niter, qcfg.nredo, qcfg.seed + label, max(1, round(qcfg.num_cpus)), gpu=gpu)
    return {"label": label, "ids": ids, "q": q,
            "w2_mass": w2(z, q.centroids, q.mass),
            "w2_uniform": w2(z, q.centroids, centroid_weights(q.mass, "uniform"))}


def run_quantize(qcfg: QuantizeConfig, encode_dir: str, labels: list[int], out: str, summary: dict) -> None:
    """One Ray task per class (spread over nodes), results written as the artifacts in the module docstring.

    The tasks take a GPU share and run k-means on it where :func:`kmeans_device` says so; one log line names the
    device and why, and ``summary["kmeans_device"]`` records it."""
    import ray
    from tqdm.auto import tqdm

    from .artifacts.latents import to_tensor_array
    from .runtime import cluster_gpus

    gpus = cluster_gpus()
    maybe = qcfg.num_gpus > 0 and gpus > 0
    device, why = kmeans_device(qcfg.num_gpus, gpus, maybe and probe_faiss_gpu(qcfg.num_gpus))
    log.info("quantize: k-means on %s (%s)", device.upper(), why)
    summary["kmeans_device"] = device
    task = ray.remote(quantize_from_disk).options(**task_options(qcfg, device))
    pending = [task.remote(encode_dir, c, qcfg, device == "gpu") for c in labels]
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
