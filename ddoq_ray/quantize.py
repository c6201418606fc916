"""Stage 2, quantize: per-class k-means (K = IPC), exact Voronoi cell masses and latent W2.

DDOQ (Tan & Slade, ICLR 2026, §3) approximates a class's latent measure μ = (1/N) Σ δ_{z_i} by
ν = Σ_k w_k δ_{c_k}. For fixed centroids c_k the W2-optimal weights are the cell masses w_k = |C_k| / N, and then
W2²(μ, ν) = (1/N) Σ_i min_k ‖z_i − c_k‖² (the k-means inertia / N; the classical optimal-quantization identity,
Graf & Luschgy 2000, Lemma 3.4). D4M (Su et al., CVPR 2024) uses the same centroids with uniform weights 1/K.

Pure core: :func:`kmeans`, :func:`assign_exact`, :func:`quantize_class`, :func:`centroid_weights`, :func:`w2`.
Ray layer: :func:`run_quantize`, one task per class.

Artifact ``<run>/quantize/<attempt>/`` (:func:`ddoq_ray.rundir.stage_path`):
- ``centroids.parquet``: ``label`` int64, ``k`` int32, ``centroid`` fixed_shape_tensor<float32>[C,h,w],
  ``count`` int64 (latents in the cell), ``mass`` float64 (count / N; sums to 1 per class).
- ``classes.parquet``: ``label``, ``n`` (latents), ``K``, ``inertia`` (Σ squared distances, float64),
  ``w2_mass``, ``w2_uniform`` (POT ``ot.emd2``, square-rooted), ``w2_identity`` (= sqrt(inertia / n)),
  ``w2_random`` (K random latents of the class, uniform weights: the random-subset baseline's W2).
- ``assignments.parquet``: ``id``, ``label``, ``k``, ``sqdist`` for every latent (which cell it fell in).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import storage
from .config import QuantizeConfig
from .errors import DdoqError

log = logging.getLogger("ddoq_ray")


class SmallClassError(DdoqError, ValueError):
    """A class has fewer latents than IPC and ``quantize.small_class`` is ``error``."""


@dataclass
class ClassQuantization:
    """Result for one class. ``centroids`` float32 [K, *latent_shape]; ``assign`` int64 [n] cell of each latent;
    ``sqdist`` float64 [n] squared distance to it; ``counts`` int64 [K]; ``mass`` float64 [K] (sums to 1)."""

    centroids: np.ndarray
    assign: np.ndarray
    sqdist: np.ndarray
    counts: np.ndarray
    mass: np.ndarray

    @property
    def inertia(self) -> float:
        return float(self.sqdist.sum())

    @property
    def n(self) -> int:
        return len(self.assign)


def kmeans(x: np.ndarray, k: int, niter: int = 50, nredo: int = 1, seed: int = 0,
           num_threads: int | None = None) -> np.ndarray:
    """faiss k-means on all points (no subsampling: ``max_points_per_centroid`` ≥ n).

    Args:
        x: float32 ``[n, d]``, n ≥ k.
    Returns:
        float32 ``[k, d]`` centroids.
    Source: faiss ``Kmeans`` (wiki "Faiss building blocks: clustering"); default ``max_points_per_centroid=256``
    would silently subsample large classes.
    """
    import faiss

    if num_threads:
        faiss.omp_set_num_threads(num_threads)
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    if k == n:  # every point is its own centroid; faiss would warn and re-split empty clusters
        return x.copy()
    if k == 1:  # the optimum is the mean: no iterations needed (IPC 1)
        return x.astype(np.float64).mean(0, keepdims=True).astype(np.float32)
    km = faiss.Kmeans(d, k, niter=niter, nredo=nredo, seed=seed, verbose=False,
                      max_points_per_centroid=max(n, 256), min_points_per_centroid=1)
    km.train(x)
    return np.array(km.centroids, dtype=np.float32).reshape(k, d)


def assign_exact(x: np.ndarray, centroids: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of every point, in float64 (ties → lowest index).

    Returns:
        ``(assign int64 [n], sqdist float64 [n])``.
    """
    c = centroids.astype(np.float64)
    c2 = (c * c).sum(1)
    assign = np.empty(len(x), dtype=np.int64)
    sqdist = np.empty(len(x), dtype=np.float64)
    for s in range(0, len(x), chunk):
        xb = x[s:s + chunk].astype(np.float64)
        d = (xb * xb).sum(1, keepdims=True) - 2 * xb @ c.T + c2
        a = d.argmin(1)
        assign[s:s + chunk] = a
        diff = xb - c[a]  # recompute exactly: the expanded form above loses precision near 0
        sqdist[s:s + chunk] = (diff * diff).sum(1)
    return assign, sqdist


def quantize_class(latents: np.ndarray, k: int, niter: int = 50, nredo: int = 1, seed: int = 0,
                   num_threads: int | None = None) -> ClassQuantization:
    """k-means + one exact assignment pass → centroids, counts and cell masses of one class.

    Args:
        latents: float32 ``[n, *latent_shape]``, n ≥ k ≥ 1.
    Raises:
        ValueError: k < 1 or k > n, or non-finite latents.
    """
    n = len(latents)
    if not 1 <= k <= n:
        raise ValueError(f"K={k} centroids need 1 <= K <= n latents (n={n})")
    shape = latents.shape[1:]
    x = np.ascontiguousarray(latents.reshape(n, -1), dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError("latents contain NaN/Inf (the encode stage should have skipped those rows)")
    c = kmeans(x, k, niter, nredo, seed, num_threads)
    assign, sqdist = assign_exact(x, c)
    counts = np.bincount(assign, minlength=k).astype(np.int64)
    return ClassQuantization(c.reshape(k, *shape), assign, sqdist, counts, counts / n)


def centroid_weights(mass: np.ndarray, scheme: str = "mass", alpha: float = 1.0, tau: float = 1.0) -> np.ndarray:
    """Normalised centroid weights (sum 1) from cell masses.

    Schemes: ``uniform`` (D4M, 1/K), ``mass`` (DDOQ, the W2-optimal cell masses), ``sqrt_mass`` (∝ √mass, the
    variance-reduction heuristic reported for the paper's Eq. 34), ``power`` (∝ mass^alpha; alpha=0 uniform,
    1 mass, 0.5 sqrt_mass), ``tempered`` (softmax(log mass / tau): tau=1 is mass, large tau tends to uniform).

    Raises:
        ValueError: unknown scheme, or ``tempered`` with tau <= 0.
    """
    mass = np.asarray(mass, dtype=np.float64)
    if scheme == "uniform":
        w = np.ones_like(mass)
    elif scheme == "mass":
        w = mass.copy()
    elif scheme == "sqrt_mass":
        w = np.sqrt(np.clip(mass, 0.0, None))
    elif scheme == "power":
        w = np.where(mass > 0, mass, 0.0) ** alpha
    elif scheme == "tempered":
        if tau <= 0:
            raise ValueError(f"tempered weights need tau > 0, got {tau}")
        with np.errstate(divide="ignore"):
            logits = np.log(np.clip(mass, 0.0, None)) / tau
        w = np.exp(logits - logits.max())
    else:
        raise ValueError(f"unknown weight scheme {scheme!r}: use uniform, mass, sqrt_mass, power or tempered")
    return w / w.sum()


def w2(latents: np.ndarray, centroids: np.ndarray, weights: np.ndarray) -> float:
    """Exact W2 between the empirical measure of ``latents`` (uniform mass 1/n) and ``Σ_k w_k δ_{c_k}``.

    Uses POT's network simplex ``ot.emd2`` with squared Euclidean cost (returns W2²) in float64; memory n·K.
    """
    if "torch" not in sys.modules:  # POT imports torch for its backends (+0.6 GB per quantize worker) unless told
        os.environ.setdefault("POT_BACKEND_DISABLE_PYTORCH", "1")
    import ot

    x = latents.reshape(len(latents), -1).astype(np.float64)
    c = centroids.reshape(len(centroids), -1).astype(np.float64)
    a = np.full(len(x), 1.0 / len(x))
    b = np.asarray(weights, dtype=np.float64)
    b = b / b.sum()
    cost = ot.emd2(a, b, ot.dist(x, c), numItermax=max(100_000, 50 * len(x) * len(c)))
    return float(np.sqrt(max(cost, 0.0)))


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
    from .encode import read_class_latents

    ids, z = read_class_latents(encode_dir, label)
    k = class_k(len(ids), qcfg, label)
    q = quantize_class(z, k, qcfg.niter, qcfg.nredo, qcfg.seed + label, max(1, round(qcfg.num_cpus)))
    # The random-real-subset baseline as a K-point measure too: K latents of the class, uniform weights.
    pick = np.random.default_rng(qcfg.seed + label).choice(len(z), size=k, replace=False)
    return {"label": label, "ids": ids, "q": q,
            "w2_random": w2(z, z[np.sort(pick)], np.full(k, 1.0 / k)),
            "w2_mass": w2(z, q.centroids, q.mass),
            "w2_uniform": w2(z, q.centroids, centroid_weights(q.mass, "uniform"))}


def run_quantize(qcfg: QuantizeConfig, encode_dir: str, labels: list[int], out: str, summary: dict) -> None:
    """One Ray task per class (spread over nodes), results written as the artifacts in the module docstring."""
    import ray
    from tqdm.auto import tqdm

    from .encode import to_tensor_array

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
                                 "w2_uniform": r["w2_uniform"], "w2_random": r["w2_random"],
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


def read_centroids(quantize_dir: str) -> pa.Table:
    """``centroids.parquet`` of a quantize folder (location) sorted by (label, k)."""
    t = storage.read_parquet(storage.join(quantize_dir, "centroids.parquet"))
    return t.sort_by([("label", "ascending"), ("k", "ascending")])
