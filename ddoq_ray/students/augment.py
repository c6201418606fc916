"""Seeded per-sample augmentation for float image batches: RandomResizedCrop + horizontal flip.

Parameters are drawn with the same algorithm as ``torchvision.transforms.v2.RandomResizedCrop.make_params``
(area fraction ~ U(scale), log aspect ratio ~ U(log 3/4, log 4/3), 10 attempts, then a centre-crop fallback),
but from an explicit ``torch.Generator`` so a run is reproducible from its seed; the crop itself is
``torchvision.transforms.v2.functional.resized_crop`` (bilinear, antialiased).
"""

from __future__ import annotations

import math

import torch
from torchvision.transforms.v2 import functional as TF

_LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))


def crop_params(
    height: int, width: int, scale: tuple[float, float], generator: torch.Generator
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of one random resized crop (torchvision's algorithm, generator-driven)."""
    area = height * width
    for _ in range(10):
        target_area = area * float(torch.empty(()).uniform_(scale[0], scale[1], generator=generator))
        aspect = math.exp(float(torch.empty(()).uniform_(_LOG_RATIO[0], _LOG_RATIO[1], generator=generator)))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    # Fallback: whole image clipped to the allowed aspect-ratio range (as torchvision).
    ratio = width / height
    if ratio < 3 / 4:
        w, h = width, int(round(width / (3 / 4)))
    elif ratio > 4 / 3:
        h, w = height, int(round(height * (4 / 3)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def sample_crop_flip(
    batch: int, height: int, width: int, min_crop_scale: float, generator: torch.Generator, flip_p: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw the parameters of :func:`random_resized_crop_flip` without touching pixels.

    Draw order (kept stable so old seeds reproduce): ``batch`` flip coins first, then one
    :func:`crop_params` per sample.

    Returns:
        ``(boxes int64 [B, 4] = (top, left, h, w), flips bool [B])``.
    """
    flips = torch.rand(batch, generator=generator) < flip_p
    boxes = torch.tensor([crop_params(height, width, (min_crop_scale, 1.0), generator) for _ in range(batch)],
                         dtype=torch.long).view(batch, 4)
    return boxes, flips


def apply_crop_flip(x: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Apply per-sample crops ``boxes`` [B, 4] (top, left, h, w; resized back to the input size, bilinear,
    antialiased) and horizontal ``flips`` [B] to float ``x`` [B, C, H, W]; returns a new tensor."""
    b, _, h, w = x.shape
    out = torch.empty_like(x)
    for i in range(b):
        top, left, ch, cw = (int(v) for v in boxes[i])
        img = x[i]
        if (ch, cw) != (h, w):
            img = TF.resized_crop(img, top, left, ch, cw, [h, w], antialias=True)
        if bool(flips[i]):
            img = TF.horizontal_flip(img)
        out[i] = img
    return out


def random_resized_crop_flip(
    x: torch.Tensor, min_crop_scale: float, generator: torch.Generator, flip_p: float = 0.5
) -> torch.Tensor:
    """Independent RandomResizedCrop(scale=(min_crop_scale, 1)) + horizontal flip for every sample.

    Args:
        x: float [B, C, H, W] batch in [0, 1] (any device; the output keeps the input size, device and dtype).
        min_crop_scale: lower bound of the crop's area fraction, in (0, 1].
        generator: CPU ``torch.Generator`` driving every random choice.
        flip_p: probability of a horizontal flip per sample.

    Returns:
        float [B, C, H, W] augmented batch (a new tensor; ``x`` is not modified).
    """
    b, _, h, w = x.shape
    boxes, flips = sample_crop_flip(b, h, w, min_crop_scale, generator, flip_p)
    return apply_crop_flip(x, boxes, flips)
