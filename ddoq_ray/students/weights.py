"""Per-image training weights from the quantize stage's Voronoi-cell masses.

Schemes (within one class, before normalisation; ``m_k`` = cell mass of centroid k):

* ``uniform``   w_k = 1                          (D4M)
* ``mass``      w_k ∝ m_k                        (DDOQ, the W2-optimal weights)
* ``sqrt_mass`` w_k ∝ √m_k                       (the variance-reduction heuristic of the paper's Eq. 34)
* ``power``     w_k ∝ m_k^alpha                  (alpha 0 = uniform, 0.5 = sqrt_mass, 1 = mass)
* ``tempered``  w_k = softmax_k(log m_k / tau)   (tau 1 = mass, tau → ∞ = uniform; equals ``power`` with
  alpha = 1/tau, parametrised as a temperature)

Normalisation (``norm``): ``class`` scales each class's weights to mean 1 (the loss scale of the uniform
baseline, per class); ``none`` and ``batch`` scale the whole set to mean 1 (``batch`` additionally rescales every
mixed batch to mean 1 inside the training loop, see :func:`batch_normalise`).
"""

from __future__ import annotations

import numpy as np
import torch


def scheme_weights(mass: np.ndarray, scheme: str, alpha: float = 1.0, tau: float = 1.0) -> np.ndarray:
    """Weights of one class's centroids, summing to 1.

    Args:
        mass: float [K] cell masses (>= 0). scheme: see module docstring. alpha: ``power`` exponent.
        tau: ``tempered`` temperature > 0.

    Returns:
        float64 [K], sum 1.
    """
    from ddoq_ray.quantization import centroid_weights  # the one implementation of the schemes

    w = centroid_weights(mass, scheme, alpha, tau)
    if not np.isfinite(w).all() or w.sum() <= 0:
        raise ValueError(f"weight scheme {scheme!r} gives all-zero weights for masses {np.asarray(mass)}")
    return w


def sample_weights(labels: np.ndarray, mass: np.ndarray, scheme: str, alpha: float = 1.0, tau: float = 1.0,
                   norm: str = "class") -> np.ndarray:
    """Per-image weights for a distilled set.

    Args:
        labels: int [n]. mass: float [n] (each image's cell mass; ignored for ``uniform``).
        scheme, alpha, tau: see :func:`scheme_weights`. norm: ``class`` | ``batch`` | ``none``.

    Returns:
        float32 [n]: mean 1 within each class (``class``) or over the set (``batch``/``none``).
    """
    labels = np.asarray(labels)
    w = np.ones(len(labels), dtype=np.float64)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        w[idx] = scheme_weights(np.asarray(mass)[idx], scheme, alpha, tau)
        if norm == "class":
            w[idx] *= len(idx)
    if norm in ("batch", "none"):
        w = w / w.mean()
    elif norm != "class":
        raise ValueError(f"unknown weight norm {norm!r}: use class, batch or none")
    return w.astype(np.float32)


def batch_normalise(w: torch.Tensor) -> torch.Tensor:
    """``w / mean(w)`` over the batch (float [B]); a batch of zeros stays zero."""
    m = w.mean()
    return w / m if float(m) > 0 else w
