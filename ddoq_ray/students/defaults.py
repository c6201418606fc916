"""Per-architecture student defaults (kept beside the models, as timm keeps each model's defaults)."""

from __future__ import annotations


def default_lr(arch: str) -> float:
    """RDED's per-architecture AdamW learning rates (method.md §5.2): 1e-3 for ResNets and ConvNets (and
    anything unlisted), 2e-3 EfficientNet-B0, 2.5e-3 MobileNet-V2, 1e-4 Swin/ViT."""
    a = arch.lower()
    if "swin" in a or "vit" in a or "deit" in a:
        return 1e-4
    if "mobilenet" in a:
        return 2.5e-3
    if "efficientnet" in a:
        return 2e-3
    return 1e-3
