"""Real-image selection baselines for one class: ``nearest_real``, ``herding`` and ``k_center``.

Each picks indices into the class (rows of its latents, or of features such as teacher embeddings: the caller
states the space) and ships those real images with weights. The latent W2 reported for a selection is the W2 of
the latents actually shipped, ``Σ_j w_j δ_{z[idx_j]}``, against the class's latents (POT, via
:func:`ddoq_ray.quantization.w2`), not of any centroids.

- ``nearest_real``: each centroid is replaced by the real latent nearest to it *within its own Voronoi cell*
  (exact assignment pass :func:`ddoq_ray.quantization.assign_exact`; ties → lower index) and keeps that cell's
  mass as its weight (issue 14, "Decode nearest_real"). Empty cells (mass 0) ship nothing.
- ``herding``: Welling (ICML 2009) kernel herding in its greedy mean-matching form, as used for exemplar and
  coreset selection (Rebuffi et al., iCaRL, CVPR 2017, Alg. 4; the DC benchmark's herding baseline, Zhao et al.
  ICLR 2021): step t adds the unselected point that brings the running mean of the t selected closest to the
  class mean. No normalisation of the inputs: the caller picks the feature space.
- ``k_center``: greedy farthest-point k-center (Sener & Savarese, ICLR 2018, Alg. 1; Gonzalez 1985 2-approx.):
  each step adds the point farthest from its nearest selected centre. First centre: the point nearest the class
  mean (deterministic; Sener & Savarese start from an already labelled pool instead), or ``first`` if given.

Weights for herding / k_center (:func:`select`): ``uniform`` (1/m, the classic tables) or ``mass``: the Voronoi
masses of the selected latents themselves, which are the W2-optimal weights for that support (quantize module
docstring), so ``mass`` never gives a higher W2 than ``uniform``. Pure numpy; no Ray, no files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import UserValueError
from .quantization import assign_exact, w2

WEIGHTS = ("uniform", "mass")


@dataclass(frozen=True)
class Selection:
    """Real images chosen from one class: ``indices`` int64 [m] into the class (selection order; for
    ``nearest_real`` by centroid, empty cells left out), ``weights`` float64 [m] (sum 1), ``w2`` the latent W2
    of the shipped latents with those weights."""

    indices: np.ndarray
    weights: np.ndarray
    w2: float


def _rows(x: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim < 2 or len(x) == 0:
        raise UserValueError(f"{what}: expected a non-empty array [n, d] (or [n, *shape]), got shape {x.shape}")
    x = x.reshape(len(x), -1).astype(np.float64)
    if not np.isfinite(x).all():
        raise UserValueError(f"{what} contain NaN/Inf; the encode stage should have skipped those rows")
    return x


def _check_k(k: int, n: int) -> None:
    if not 1 <= k <= n:
        raise UserValueError(f"selecting K={k} images needs 1 <= K <= n (n={n} in the class); lower quantize.ipc")


def nearest_real_indices(latents: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each centroid, the index of the nearest real latent within its own cell.

    Args:
        latents: float ``[n, *latent_shape]``; centroids: float ``[K, *latent_shape]``.
    Returns:
        ``(indices int64 [K], mass float64 [K])``: index of the in-cell nearest latent (ties → lower index;
        -1 for an empty cell) and the cell mass |C_k| / n.
    """
    x = _rows(latents, "latents")
    c = np.asarray(centroids).reshape(len(centroids), -1)
    k = len(c)
    assign, sqdist = assign_exact(x, c)
    idx = np.full(k, -1, dtype=np.int64)
    # Sorted by (cell, sqdist, index): the first row of each cell is its nearest member, lower index on ties.
    order = np.lexsort((np.arange(len(x)), sqdist, assign))
    cells, first = np.unique(assign[order], return_index=True)
    idx[cells] = order[first]
    return idx, np.bincount(assign, minlength=k) / len(x)


def nearest_real(latents: np.ndarray, centroids: np.ndarray) -> Selection:
    """:func:`nearest_real_indices` as a shipped set: each non-empty cell's nearest latent with the cell mass as
    weight, and its latent W2 (POT). Raises UserValueError for empty or non-finite latents."""
    idx, mass = nearest_real_indices(latents, centroids)
    keep = idx >= 0
    return _shipped(latents, idx[keep], mass[keep])


def herding(x: np.ndarray, k: int) -> np.ndarray:
    """Greedy herding (module docstring): int64 [k] indices, in selection order, without repeats.

    Step t (0-based) picks ``argmin_i ‖(s_t + x_i)/(t+1) − μ‖`` over unselected i (ties → lower index), where
    μ is the mean of ``x`` and s_t the sum of the t selected rows; float64 throughout.

    Args:
        x: latents or features ``[n, d]`` (or ``[n, *shape]``), 1 ≤ k ≤ n.
    Raises:
        UserValueError: k outside [1, n] or non-finite input.
    """
    f = _rows(x, "herding input")
    _check_k(k, len(f))
    mu = f.mean(0)
    total = np.zeros_like(mu)
    taken = np.zeros(len(f), dtype=bool)
    out = np.empty(k, dtype=np.int64)
    for t in range(k):
        gap = (total + f) / (t + 1) - mu
        d = np.einsum("nd,nd->n", gap, gap)
        d[taken] = np.inf
        i = int(d.argmin())
        out[t], taken[i] = i, True
        total += f[i]
    return out


def k_center(x: np.ndarray, k: int, first: int | None = None) -> np.ndarray:
    """Greedy farthest-point k-center (module docstring): int64 [k] indices in selection order.

    Step t adds ``argmax_i min_{j selected} ‖x_i − x_j‖²`` over unselected i (ties → lower index), so no index
    repeats even when the data hold duplicates.

    Args:
        x: latents or features ``[n, d]`` (or ``[n, *shape]``), 1 ≤ k ≤ n.
        first: index of the first centre; default the point nearest the mean (ties → lower index).
    Raises:
        UserValueError: k outside [1, n], ``first`` outside [0, n), or non-finite input.
    """
    f = _rows(x, "k_center input")
    n = len(f)
    _check_k(k, n)
    if first is None:
        first = int(((f - f.mean(0)) ** 2).sum(1).argmin())
    elif not 0 <= first < n:
        raise UserValueError(f"k_center first={first}: must index the class (0 <= first < {n})")
    out = np.empty(k, dtype=np.int64)
    out[0] = first
    dmin = ((f - f[first]) ** 2).sum(1)
    taken = np.zeros(n, dtype=bool)
    taken[first] = True
    for t in range(1, k):
        d = np.where(taken, -np.inf, dmin)
        i = int(d.argmax())
        out[t], taken[i] = i, True
        dmin = np.minimum(dmin, ((f - f[i]) ** 2).sum(1))
    return out


def voronoi_mass(latents: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """float64 [m] masses of the Voronoi cells of the selected latents ``latents[indices]`` over the class (exact
    assignment pass, ties → earlier selected): the W2-optimal weights for that support; sum 1."""
    x = _rows(latents, "latents")
    a, _ = assign_exact(x, x[np.asarray(indices, dtype=np.int64)])
    return np.bincount(a, minlength=len(indices)) / len(x)


def select(latents: np.ndarray, indices: np.ndarray, weights: str = "uniform") -> Selection:
    """Ship ``latents[indices]`` with ``uniform`` (1/m) or ``mass`` (:func:`voronoi_mass`) weights and measure
    the latent W2 of that set (:func:`ddoq_ray.quantization.w2`). ``indices`` may come from another feature space.

    Raises:
        UserValueError: unknown ``weights``, or indices outside the class.
    """
    idx = np.asarray(indices, dtype=np.int64)
    n = len(latents)
    if idx.ndim != 1 or len(idx) == 0 or idx.min() < 0 or idx.max() >= n:
        raise UserValueError(f"selection indices must be a non-empty 1-d array in [0, {n})")
    if weights == "uniform":
        w = np.full(len(idx), 1.0 / len(idx))
    elif weights == "mass":
        w = voronoi_mass(latents, idx)
    else:
        raise UserValueError(f"selection weights={weights!r}: use one of {', '.join(WEIGHTS)}")
    return _shipped(latents, idx, w)


def _shipped(latents: np.ndarray, idx: np.ndarray, weights: np.ndarray) -> Selection:
    z = np.asarray(latents).reshape(len(latents), -1)
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    return Selection(idx, w, w2(z, z[idx], w))
