"""Soft-label teachers: load a pretrained CIFAR ResNet checkpoint, or train one from scratch on small data."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ddoq_ray.assets import is_named_teacher  # noqa: F401 - re-exported next to load_named_teacher
from ddoq_ray.students.augment import random_resized_crop_flip
from ddoq_ray.students.models import build_model


class ClassSubset(nn.Module):
    """Keeps only the logit columns ``class_index`` of a wrapped classifier (a run on a subset of classes
    whose labels were remapped to 0..C-1 in the order of ``class_index``)."""

    def __init__(self, model: nn.Module, class_index: list[int]):
        super().__init__()
        self.model = model
        self.register_buffer("index", torch.as_tensor(list(class_index), dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).index_select(1, self.index)


def _freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def load_state_dict_into(model: nn.Module, state: dict, source: str) -> None:
    """Strict load with an error that names the source and the mismatching keys/shapes."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    own = model.state_dict()
    # Pre-1.0 PyTorch checkpoints (akamaster) have no BatchNorm `num_batches_tracked`; torch fills it in.
    missing = sorted(k for k in set(own) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        raise ValueError(
            f"checkpoint {source} does not fit architecture {type(model).__name__}: "
            f"missing={missing[:5]}{'...' if len(missing) > 5 else ''} ({len(missing)}), "
            f"unexpected={unexpected[:5]}{'...' if len(unexpected) > 5 else ''} ({len(unexpected)}), "
            f"shape mismatches={shapes[:5]}"
        )
    model.load_state_dict(state, strict=True)


def _load_checkpoint(path: str):
    """``torch.load(..., weights_only=True)`` of a local file or a URI (``s3://``, ``gs://``; read on this node).

    Raises:
        FileNotFoundError: nothing at ``path``.
    """
    from ddoq_ray import storage

    if not storage.is_file(path):
        raise FileNotFoundError(f"teacher checkpoint not found: {path} (train.teacher)")
    if storage.is_uri(path):
        return torch.load(io.BytesIO(storage.read_bytes(path)), map_location="cpu", weights_only=True)
    return torch.load(Path(path), map_location="cpu", weights_only=True)


def infer_num_classes(path: str) -> int:
    """Output classes of a checkpoint: rows of its last 2-D weight (the classifier)."""
    p = path
    ckpt = _load_checkpoint(path)
    state = ckpt["state_dict"] if isinstance(ckpt, dict) and "state_dict" in ckpt else ckpt
    mats = [v for k, v in state.items() if k.endswith("weight") and getattr(v, "ndim", 0) == 2]
    if not mats:
        raise ValueError(f"teacher checkpoint {p}: no 2-D classifier weight to infer num_classes from")
    return int(mats[-1].shape[0])


def load_teacher(path: str, arch: str, num_classes: int, class_index: list[int] | None = None) -> nn.Module:
    """Load an akamaster-format checkpoint (``{"state_dict": {"module.<name>": tensor}}``) into ``arch``.

    Args:
        path: checkpoint file (``torch.load(path, weights_only=True)``); a bare state dict is accepted too.
        arch: a :func:`~ddoq_ray.students.models.build_model` name, e.g. ``resnet56_cifar``.
        num_classes: classes the checkpoint was trained on (10 for the CIFAR-10 checkpoints).
        class_index: if given, the returned model outputs only these logit columns, in this order.

    Returns:
        The teacher in eval mode with ``requires_grad=False`` everywhere; input float NCHW in [0, 1].

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the state dict does not fit ``arch`` (names the mismatching keys), or bad ``class_index``.
    """
    p = path
    ckpt = _load_checkpoint(path)
    state = ckpt["state_dict"] if isinstance(ckpt, dict) and "state_dict" in ckpt else ckpt
    if not isinstance(state, dict):
        raise ValueError(f"teacher checkpoint {p}: expected a state dict, got {type(state).__name__}")
    model = build_model(arch, num_classes, 32)
    load_state_dict_into(model, state, str(p))
    return _freeze(with_class_index(model, class_index, num_classes))


def with_class_index(model: nn.Module, class_index: list[int] | None, num_classes: int) -> nn.Module:
    """Wrap ``model`` in :class:`ClassSubset` when ``class_index`` is given (checked against num_classes)."""
    if class_index is None:
        return model
    bad = [c for c in class_index if not 0 <= int(c) < num_classes]
    if bad or len(class_index) == 0:
        raise ValueError(f"class_index {class_index} must be non-empty with entries in [0, {num_classes})")
    return ClassSubset(model, [int(c) for c in class_index])


def train_teacher(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    arch: str,
    epochs: int,
    image_size: int,
    seed: int,
    test: dict | None = None,
    batch_size: int = 128,
    lr: float = 2e-3,
    device: torch.device | str = "cpu",
) -> tuple[nn.Module, float | None]:
    """Plain supervised training of a teacher (used when no checkpoint is given; small data only).

    AdamW (lr, wd 5e-4) with a cosine schedule, RandomResizedCrop(0.5..1) + flip augmentation, cross-entropy.

    Args:
        images: uint8 [N, H, W, 3] at ``image_size``. labels: int [N] in [0, num_classes).
        test: optional ``{"images", "labels"}``; if given its top-1 is returned.

    Returns:
        ``(model, test_top1)``: the frozen eval-mode model and test top-1 in [0, 1] (None without ``test``).
    """
    from ddoq_ray.students.train import evaluate, to_float_nchw

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    device = torch.device(device)
    model = build_model(arch, num_classes, image_size).to(device)
    x_all = to_float_nchw(images)
    y_all = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    n = len(y_all)
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=gen)
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            x = random_resized_crop_flip(x_all[idx], 0.5, gen).to(device)
            loss = F.cross_entropy(model(x), y_all[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    top1 = None
    if test is not None:
        top1 = evaluate(model, test["images"], test["labels"], 500)
    return _freeze(model), top1


def named_class_index(classes: list[str] | None, class_subset: list[int] | None) -> list[int] | None:
    """The logit columns of a pretrained ImageNet-1K classifier that are the run's classes, in run-label order.

    1. Every run class is an ImageNet-1K WNID (ImageNet, ImageNette or ImageWoof in ImageFolder layout): the
       classes' ImageNet-1K indices (the sorted-WNID label order timm and torchvision weights use).
    2. Else ``data.class_subset``: the run keeps those labels of a dataset whose labels already are the teacher's
       (e.g. ImageNet-1K with integer labels).
    3. Else None: all of the teacher's outputs (they must then be the run's classes; see :func:`load_named_teacher`).
    """
    from ddoq_ray.classlists import imagenet_index, is_wnid

    if classes:
        index = imagenet_index()
        if all(is_wnid(c) and c in index for c in classes):
            return [index[c] for c in classes]
    return list(class_subset) if class_subset is not None else None


def load_named_teacher(ref: str, class_index: list[int] | None = None, num_classes: int | None = None) -> nn.Module:
    """A pretrained library classifier as teacher: ``timm:<name>`` (``timm.create_model(name, pretrained=True)``,
    weights from the Hugging Face hub: ``hf_hub_download`` of the model's ``hf_hub_id``, ``model.safetensors``)
    or ``torchvision:<name>`` (``torchvision.models.get_model(name, weights="DEFAULT")``: ``torch.hub``
    downloads the weights enum's URL into ``$TORCH_HOME/hub/checkpoints/``). Online, the libraries download the
    weights on first use; offline (``HF_HUB_OFFLINE=1``), they load them from their caches (``$HF_HOME/hub``,
    ``$TORCH_HOME/hub/checkpoints``), which must then be pre-populated. Input: float NCHW in [0, 1] (ImageNet
    normalisation is applied here); output: the model's logits, restricted to ``class_index`` columns when given
    (see :func:`named_class_index`). The classifier head is kept as trained (no replacement).

    Raises:
        ValueError: unknown library, or ``num_classes`` given and the teacher's output width (after
            ``class_index``) differs from it.
    """
    from ddoq_ray.students.models import _Normalized

    kind, _, name = ref.partition(":")
    if kind == "timm":
        import timm

        model = timm.create_model(name, pretrained=True)
        n_out = int(model.num_classes)
    elif kind == "torchvision":
        import torchvision

        weights = torchvision.models.get_model_weights(name).DEFAULT
        model = torchvision.models.get_model(name, weights=weights)
        n_out = len(weights.meta["categories"])
    else:
        raise ValueError(f"teacher {ref!r}: expected timm:<name> or torchvision:<name>")
    width = len(class_index) if class_index is not None else n_out
    if num_classes is not None and width != num_classes:
        raise ValueError(
            f"teacher {ref!r} has {n_out} outputs (ImageNet-1K classes for the usual weights) but the run has "
            f"{num_classes} classes. Name the classes by ImageNet WNIDs (ImageFolder folders such as n01440764: "
            f"ImageNet, ImageNette, ImageWoof), or keep ImageNet labels with data.class_subset, or use a checkpoint "
            f"teacher trained on these classes (train.teacher: path, train.teacher_arch)"
        )
    return _freeze(with_class_index(_Normalized(model), class_index, n_out))
