"""Stage 2, quantize: per-class k-means (K = IPC), exact Voronoi cell masses and latent W2.

The formulas (W2-optimal cell-mass weights, the W2 = sqrt(inertia / N) identity) and the pure core
(:func:`~ddoq_ray.quantization.kmeans`, ``assign_exact``, ``quantize_class``, ``centroid_weights``, ``w2``) live
in :mod:`ddoq_ray.quantization`. This module is the stage: :func:`run_quantize`, one Ray task per class; the
artifact's readers are in :mod:`ddoq_ray.artifacts.centroids`.

Every clustering the run needs (``quantize.algorithms`` and those of the configured methods,
:func:`ddoq_ray.artifacts.method_presets.needed_algorithms`) runs in the same class task on the same latents, each
followed by the exact assignment pass; ``lloyd`` with random init and one restart is the pre-issue-14 call
(:func:`~ddoq_ray.quantization.quantize_class`), the others go through :func:`ddoq_ray.clustering.cluster_class`.

Artifact ``<run>/quantize/<attempt>/`` (:func:`ddoq_ray.rundir.stage_path`), every row tagged with its
``algorithm``:
- ``centroids.parquet``: ``algorithm``, ``label`` int64, ``k`` int32, ``centroid``
  fixed_shape_tensor<float32>[C,h,w], ``count`` int64 (latents in the cell), ``mass`` float64 (count / N; sums
  to 1 per class).
- ``classes.parquet``: ``algorithm``, ``label``, ``n`` (latents), ``K``, ``inertia`` (Σ squared distances,
  float64), ``w2_mass``, ``w2_uniform``, ``w2_sqrt_mass`` (POT ``ot.emd2``, square-rooted), ``w2_identity``
  (= sqrt(inertia / n)). The W2 of the real-image sets is measured by the ``subsets`` stage on the very images
  the students train on.
- ``assignments.parquet``: ``algorithm``, ``id``, ``label``, ``k``, ``sqdist`` for every latent (its cell).

Device: the k-means of each class task runs on a GPU share (``quantize.num_gpus``, faiss ``Kmeans(gpu=True)``,
``lloyd`` only) when the cluster has GPUs and the workers' faiss is a GPU build (:func:`kmeans_device`, probed on a
GPU worker by :func:`probe_faiss_gpu`); otherwise on CPUs exactly as before. The exact float64 assignment pass
after it is the same on both. The ``subsets`` stage's per-class tasks stay on CPUs.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import storage
from .config import QuantizeConfig
from .driver_memory import mark, release
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


def cluster_one(z: np.ndarray, k: int, algorithm: str, qcfg: QuantizeConfig, label: int, gpu: bool = False):
    """One class's :class:`~ddoq_ray.quantization.ClassQuantization` with ``algorithm``.

    Seeds: ``lloyd`` / ``clvq`` use ``quantize.seed + label`` (the pre-issue-14 stage); ``minibatch`` uses
    ``quantize.seed`` for every class, as D4M's ``gen_prototype.py`` (``random_state=0``) does."""
    from .clustering import cluster_class

    threads = max(1, round(qcfg.num_cpus))
    if algorithm == "lloyd" and qcfg.init == "random" and qcfg.n_init == 1:
        return quantize_class(z, k, qcfg.niter, qcfg.nredo, qcfg.seed + label, threads, gpu=gpu)  # today's call
    seed = qcfg.seed if algorithm == "minibatch" else qcfg.seed + label
    return cluster_class(z, k, algorithm, seed=seed, niter=qcfg.niter, nredo=qcfg.nredo, init=qcfg.init,
                         n_init=qcfg.n_init, km_expand=qcfg.km_expand, num_threads=threads)


def quantize_from_disk(encode_dir: str, label: int, qcfg: QuantizeConfig,
                       algorithms: tuple[str, ...] = ("lloyd",), gpu: bool = False) -> dict:
    """Read one class's latents, cluster it with each of ``algorithms`` and measure W2 (the body of a Ray task;
    pure apart from reading). ``encode_dir`` is a location (local path or URI), read on whichever node runs the
    task. Returns ``{"label", "ids", "runs": {algorithm: {"q", "w2_mass", "w2_uniform", "w2_sqrt_mass"}}}``."""
    from .artifacts.latents import read_class_latents

    ids, z = read_class_latents(encode_dir, label)
    k = class_k(len(ids), qcfg, label)
    runs = {}
    for a in algorithms:
        q = cluster_one(z, k, a, qcfg, label, gpu)
        runs[a] = {"q": q, **{f"w2_{s}": w2(z, q.centroids, centroid_weights(q.mass, s))
                              for s in ("mass", "uniform", "sqrt_mass")}}
    return {"label": label, "ids": ids, "runs": runs}


def run_quantize(qcfg: QuantizeConfig, encode_dir: str, labels: list[int], out: str, summary: dict,
                 algorithms: tuple[str, ...] = ("lloyd",)) -> None:
    """One Ray task per class (spread over nodes) running every clustering in ``algorithms``; results written as
    the artifacts in the module docstring; ``summary`` holds the first algorithm's means and, per algorithm,
    ``by_algorithm``. The tasks take a GPU share and run k-means on it where :func:`kmeans_device` says so; one
    log line names the device and why, and ``summary["kmeans_device"]`` records it."""
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
    pending = [task.remote(encode_dir, c, qcfg, tuple(algorithms), device == "gpu") for c in labels]
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
                c = r["label"]
                for a, res in r["runs"].items():
                    q = res["q"]
                    k = len(q.counts)
                    append("centroids.parquet", pa.table({
                        "algorithm": pa.array([a] * k, pa.string()),
                        "label": pa.array([c] * k, pa.int64()), "k": pa.array(np.arange(k, dtype=np.int32)),
                        "centroid": to_tensor_array(q.centroids), "count": pa.array(q.counts),
                        "mass": pa.array(q.mass)}))
                    append("assignments.parquet", pa.table({
                        "algorithm": pa.array([a] * q.n, pa.string()),
                        "id": pa.array(r["ids"], pa.string()), "label": pa.array([c] * q.n, pa.int64()),
                        "k": pa.array(q.assign.astype(np.int32)), "sqdist": pa.array(q.sqdist)}))
                    cls_rows.append({"algorithm": a, "label": c, "n": q.n, "K": k, "inertia": q.inertia,
                                     "w2_mass": res["w2_mass"], "w2_uniform": res["w2_uniform"],
                                     "w2_sqrt_mass": res["w2_sqrt_mass"],
                                     "w2_identity": float(np.sqrt(q.inertia / q.n))})
                del r, done
                bar.update(1)
                if bar.n % 100 == 0:  # the results fetched so far, kept mapped by the allocators
                    release()
                    mark("quantize: classes", n=bar.n)
    finally:
        for w in writers.values():
            w.close()
    release()
    mark("quantize: writers closed")
    order = {a: i for i, a in enumerate(algorithms)}
    cls_rows.sort(key=lambda r: (order[r["algorithm"]], r["label"]))
    storage.write_parquet(pa.Table.from_pylist(cls_rows), storage.join(out, "classes.parquet"))
    by_algo = {}
    for a in algorithms:
        rows = [r for r in cls_rows if r["algorithm"] == a]
        w2m, w2u = np.array([r["w2_mass"] for r in rows]), np.array([r["w2_uniform"] for r in rows])
        by_algo[a] = {"mean_w2_mass": float(w2m.mean()), "mean_w2_uniform": float(w2u.mean()),
                      "w2_reduction_pct": float(100 * (1 - w2m.mean() / w2u.mean()))}
        log.info("quantize %s: mean latent W2 uniform %.4f -> mass %.4f (%.1f%% lower)", a, w2u.mean(),
                 w2m.mean(), by_algo[a]["w2_reduction_pct"])
    first = [r for r in cls_rows if r["algorithm"] == algorithms[0]]
    summary.update({"classes": len(first), "centroids": int(sum(r["K"] for r in first)),
                    "shrunk_classes": [r["label"] for r in first if r["K"] < qcfg.ipc],
                    "algorithms": list(algorithms), **by_algo[algorithms[0]], "by_algorithm": by_algo})



def quantize_stage(run, out: str, summary: dict) -> None:
    """The registered ``quantize`` stage (:mod:`ddoq_ray.stages`): every class of the run."""
    from .artifacts.method_presets import needed_algorithms
    from .rundir import stage_path

    run_quantize(run.cfg.quantize, stage_path(run.dir, "encode"), list(range(len(run.classes))), out, summary,
                 tuple(needed_algorithms(run.cfg)))
