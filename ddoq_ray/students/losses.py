"""Weighted soft-label distillation loss and weight-aware CutMix."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def soft_label_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, weights: torch.Tensor | None, T: float
) -> torch.Tensor:
    """Per-sample-weighted knowledge-distillation loss.

    ``loss = (1/B) * sum_i w_i * KL(softmax(t_i / T) || softmax(s_i / T)) * T**2``

    The ``T**2`` factor keeps gradient magnitudes independent of the temperature (Hinton, Vinyals & Dean
    2015, "Distilling the Knowledge in a Neural Network", sec. 2). The weights are NOT renormalised: a DDOQ
    centroid's weight (its Voronoi-cell mass, e.g. scaled to mean 1) multiplies its loss term directly, so
    ``w_i = 0`` removes sample i from the gradient and scaling all weights by c scales the loss by c.

    Args:
        student_logits: float [B, C] (requires grad).
        teacher_logits: float [B, C]; treated as constant (detached).
        weights: float [B] per-sample weights, or None for all ones.
        T: temperature > 0.

    Returns:
        Scalar float32 tensor.
    """
    s = F.log_softmax(student_logits.float() / T, dim=1)
    t = F.log_softmax(teacher_logits.detach().float() / T, dim=1)
    kl = (t.exp() * (t - s)).sum(dim=1)  # [B]
    if weights is not None:
        kl = kl * weights.to(kl)
    return kl.mean() * (T * T)


def weighted_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor | None,
    labels_b: torch.Tensor | None = None,
    lam: float = 1.0,
) -> torch.Tensor:
    """``(1/B) * sum_i w_i * [lam * CE(s_i, y_i) + (1 - lam) * CE(s_i, y_b_i)]`` (hard labels, CutMix-mixed
    when ``labels_b`` is given). logits float [B, C]; labels int64 [B]; weights float [B] or None."""
    ce = F.cross_entropy(logits.float(), labels, reduction="none")
    if labels_b is not None and lam < 1.0:
        ce = lam * ce + (1.0 - lam) * F.cross_entropy(logits.float(), labels_b, reduction="none")
    if weights is not None:
        ce = ce * weights.to(ce)
    return ce.mean()


def sample_cutmix(
    batch: int, height: int, width: int, beta: float, generator: torch.Generator
) -> tuple[float, torch.Tensor, tuple[int, int, int, int]]:
    """Draw CutMix parameters (Yun et al. 2019, alg. A1) without touching pixels.

    Draw order: ``lam ~ Beta(beta, beta)``, the permutation, the box centre (y then x). The box has side ratio
    ``sqrt(1 - lam)`` and is clipped to the image; the returned ``lam`` is ``1 - box_area / image_area``.

    Returns:
        ``(lam: float in [0, 1], perm int64 [B] (CPU), box (y1, y2, x1, x2))``.
    """
    lam = _beta_sample(beta, generator)
    perm = torch.randperm(batch, generator=generator)
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy = int(torch.randint(height, (1,), generator=generator))
    cx = int(torch.randint(width, (1,), generator=generator))
    y1, y2 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    x1, x2 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    lam = 1.0 - (y2 - y1) * (x2 - x1) / float(height * width)
    return lam, perm, (y1, y2, x1, x2)


def sample_mixup(batch: int, alpha: float, generator: torch.Generator) -> tuple[float, torch.Tensor]:
    """Mixup (Zhang et al. 2018) parameters: ``lam ~ Beta(alpha, alpha)`` and a permutation (int64 [B], CPU)."""
    lam = _beta_sample(alpha, generator)
    return lam, torch.randperm(batch, generator=generator)


def apply_mix(
    x: torch.Tensor, weights: torch.Tensor, lam: float, perm: torch.Tensor, box: tuple[int, int, int, int] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix a batch with its permutation ``perm``: CutMix pastes ``box`` = (y1, y2, x1, x2) from the partner,
    Mixup (``box`` None) blends ``lam * x + (1 - lam) * x[perm]``. Weights are mixed the same way:
    ``lam * w_i + (1 - lam) * w_perm(i)``.

    Args:
        x: float [B, C, H, W] (not modified). weights: float [B]. perm: int64 [B] positions in the batch.

    Returns:
        ``(x_mixed [B, C, H, W], weights_mixed [B])``.
    """
    perm_dev = perm.to(x.device)
    if box is None:
        mixed = lam * x + (1.0 - lam) * x[perm_dev]
    else:
        y1, y2, x1, x2 = box
        mixed = x.clone()
        mixed[:, :, y1:y2, x1:x2] = x[perm_dev][:, :, y1:y2, x1:x2]
    w_mixed = lam * weights + (1.0 - lam) * weights[perm.to(weights.device)]
    return mixed, w_mixed


def cutmix(
    x: torch.Tensor, weights: torch.Tensor, beta: float, generator: torch.Generator, return_perm: bool = False
) -> tuple[torch.Tensor, torch.Tensor, float] | tuple[torch.Tensor, torch.Tensor, float, torch.Tensor]:
    """CutMix (Yun et al. 2019, "CutMix: Regularization Strategy to Train Strong Classifiers with Localizable
    Features", alg. A1): one box per batch, pasted from a random permutation of the batch
    (:func:`sample_cutmix` then :func:`apply_mix`).

    ``lam ~ Beta(beta, beta)``; the box has side ratio ``sqrt(1 - lam)``, a uniformly random centre and is
    clipped to the image, after which ``lam`` is set to ``1 - box_area / image_area`` (the fraction of each
    sample that is still its own). Weights are mixed the same way: ``lam * w_i + (1 - lam) * w_perm(i)``.

    Args:
        x: float [B, C, H, W] batch (not modified).
        weights: float [B] per-sample weights.
        beta: Beta-distribution parameter > 0.
        generator: CPU ``torch.Generator`` that drives all randomness (lam, box, permutation).
        return_perm: also return the permutation (hard-label callers mix their labels with it).

    Returns:
        ``(x_mixed [B, C, H, W], weights_mixed [B], lam: float in [0, 1])``, plus ``perm: int64 [B]`` (CPU)
        when ``return_perm``.
    """
    b, _, h, w = x.shape
    lam, perm, box = sample_cutmix(b, h, w, beta, generator)
    mixed, w_mixed = apply_mix(x, weights, lam, perm, box)
    if return_perm:
        return mixed, w_mixed, lam, perm
    return mixed, w_mixed, lam


def _beta_sample(beta: float, generator: torch.Generator) -> float:
    """Beta(beta, beta) sample driven by ``generator`` (two Gamma draws; torch's Beta takes no generator).

    Gamma(a) via Marsaglia-Tsang with a boost for a < 1, using only generator-driven normal/uniform draws."""

    def gamma(a: float) -> float:
        boost = 1.0
        if a < 1.0:
            u = float(torch.rand((), generator=generator))
            boost = u ** (1.0 / a)
            a += 1.0
        d = a - 1.0 / 3.0
        c = 1.0 / math.sqrt(9.0 * d)
        while True:
            z = float(torch.randn((), generator=generator))
            v = (1.0 + c * z) ** 3
            if v <= 0:
                continue
            u = float(torch.rand((), generator=generator))
            if math.log(max(u, 1e-300)) < 0.5 * z * z + d - d * v + d * math.log(v):
                return d * v * boost

    g1, g2 = gamma(beta), gamma(beta)
    return g1 / (g1 + g2)
