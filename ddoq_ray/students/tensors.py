"""Image tensors as the students and teachers take them."""

from __future__ import annotations

import numpy as np
import torch


def to_float_nchw(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W, 3] (numpy or torch) -> float32 [N, 3, H, W] in [0, 1] (a fresh, writable copy).

    Raises:
        ValueError: not a 4-d array with 3 channels last.
    """
    t = images if isinstance(images, torch.Tensor) else torch.tensor(np.asarray(images))
    if t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"expected uint8 images [N, H, W, 3], got shape {tuple(t.shape)}")
    return t.permute(0, 3, 1, 2).float().div_(255.0).contiguous()
