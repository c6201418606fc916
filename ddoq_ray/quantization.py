"""Pure quantization core (numpy, faiss, POT; no Ray, no storage): k-means, exact cells, weights, W2.

DDOQ (Tan & Slade, ICLR 2026, §3) approximates a class's latent measure μ = (1/N) Σ δ_{z_i} by
ν = Σ_k w_k δ_{c_k}. For fixed centroids c_k the W2-optimal weights are the cell masses w_k = |C_k| / N, and then
W2²(μ, ν) = (1/N) Σ_i min_k ‖z_i − c_k‖² (the k-means inertia / N; the classical optimal-quantization identity,
Graf & Luschgy 2000, Lemma 3.4). D4M (Su et al., CVPR 2024) uses centroids with uniform weights 1/K.
This module is the one home of those formulas: :func:`centroid_weights` (w_k) and :func:`w2` (exact W2 by optimal
transport; the identity is tested against it). The map from the paper's symbols to these names is in
docs/paper_map.md.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np


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
           num_threads: int | None = None, gpu: bool = False) -> np.ndarray:
    """faiss k-means on all points (no subsampling: ``max_points_per_centroid`` ≥ n).

    Args:
        x: float32 ``[n, d]``, n ≥ k.
        gpu: cluster on the process's GPUs (faiss ``Kmeans(..., gpu=True)``, needs a faiss-gpu build); False
            leaves the CPU call exactly as it was, so CPU results do not move.
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
    extra = {"gpu": True} if gpu else {}
    km = faiss.Kmeans(d, k, niter=niter, nredo=nredo, seed=seed, verbose=False,
                      max_points_per_centroid=max(n, 256), min_points_per_centroid=1, **extra)
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
                   num_threads: int | None = None, gpu: bool = False) -> ClassQuantization:
    """k-means + one exact assignment pass → centroids, counts and cell masses of one class.

    Args:
        latents: float32 ``[n, *latent_shape]``, n ≥ k ≥ 1.
        gpu: k-means on the GPU (:func:`kmeans`); the exact float64 assignment pass runs on the CPU either way.
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
    c = kmeans(x, k, niter, nredo, seed, num_threads, gpu=gpu)
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
