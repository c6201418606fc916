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
from ddoq_ray.errors import UserValueError
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


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# Containers a checkpoint file may hold its state dict in: akamaster / timm train.py / Lightning ("state_dict"),
# torchvision references/classification/train.py ("model"), and the common "model_state_dict".
_STATE_KEYS = ("state_dict", "model", "model_state_dict")
# Key prefixes added by wrappers: DataParallel/DDP ("module."), torch.compile ("_orig_mod.").
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def checkpoint_state(ckpt: object, source: str) -> dict[str, torch.Tensor]:
    """The state dict inside a loaded checkpoint: the object itself, or its ``state_dict`` / ``model`` /
    ``model_state_dict`` entry, with ``module.`` (DataParallel) and ``_orig_mod.`` (torch.compile) prefixes removed.

    Raises:
        UserValueError: no tensor state dict in ``ckpt`` (names ``source``).
    """
    state = ckpt
    if isinstance(ckpt, dict):
        for key in _STATE_KEYS:
            if isinstance(ckpt.get(key), dict):
                state = ckpt[key]
                break
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserValueError(
            f"teacher checkpoint {source}: expected a state dict of tensors (torch.save(model.state_dict())), or "
            f"a dict holding one under {' / '.join(_STATE_KEYS)}; got {type(state).__name__}"
        )
    out = {}
    for k, v in state.items():
        for prefix in _WRAPPER_PREFIXES:
            k = k.removeprefix(prefix)
        out[k] = v
    return out


def _in_model_keys(model: nn.Module, state: dict) -> dict:
    """``state`` renamed into ``model``'s key space: models built by :func:`build_model` from timm names (and
    library teachers) wrap the library model as ``.model``, so a plain timm/torchvision state dict (``conv1.weight``)
    gains the ``model.`` prefix and a wrapped one loaded into a bare model loses it."""
    own = set(model.state_dict())
    candidates = [state, {f"model.{k}": v for k, v in state.items()}]
    if all(k.startswith("model.") for k in state):
        candidates.append({k.removeprefix("model."): v for k, v in state.items()})
    return max(candidates, key=lambda c: len(own & set(c)))


def _mismatch(model: nn.Module, state: dict) -> tuple[list[str], list[str], list[str]]:
    """``(missing, unexpected, shape mismatches)`` of a strict load of ``state`` into ``model``."""
    own = model.state_dict()
    # Pre-1.0 PyTorch checkpoints (akamaster) have no BatchNorm `num_batches_tracked`; torch fills it in.
    missing = sorted(k for k in set(own) - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    return missing, unexpected, shapes


def _describe(missing: list[str], unexpected: list[str], shapes: list[str]) -> str:
    def head(xs: list[str]) -> str:
        return f"{xs[:5]}{'...' if len(xs) > 5 else ''} ({len(xs)})"

    return (f"missing={head(missing)}, unexpected={head(unexpected)}, "
            f"shape mismatches (checkpoint vs model)={head(shapes)}")


def load_state_dict_into(model: nn.Module, state: dict, source: str) -> None:
    """Strict load of ``state`` into ``model`` after :func:`checkpoint_state`'s prefix removal and the
    ``model.`` prefix mapping of :func:`_in_model_keys`.

    Raises:
        UserValueError: the keys or shapes do not fit (names ``source``, the missing / unexpected keys and the
            shape mismatches).
    """
    state = _in_model_keys(model, checkpoint_state(state, source))
    missing, unexpected, shapes = _mismatch(model, state)
    if missing or unexpected or shapes:
        raise UserValueError(f"checkpoint {source} does not fit architecture {type(model).__name__}: "
                             + _describe(missing, unexpected, shapes))
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
    """Output classes of a checkpoint: rows of its last 2-D weight (the classifier).

    Raises:
        FileNotFoundError: nothing at ``path``. UserValueError: no state dict, or no 2-D weight in it.
    """
    state = checkpoint_state(_load_checkpoint(path), path)
    mats = [v for k, v in state.items() if k.endswith("weight") and getattr(v, "ndim", 0) == 2]
    if not mats:
        raise UserValueError(f"teacher checkpoint {path}: no 2-D classifier weight to infer num_classes from")
    return int(mats[-1].shape[0])


def _candidate_models(arch: str, num_classes: int, image_size: int):
    """Models ``arch`` may name, most likely first, as ``(description, build thunk)``: the :func:`build_model`
    model at ``image_size``; for timm ResNet-family names the same with the other stem (an ImageNet checkpoint run
    at <= 64 px keeps its 7x7 stem; a CIFAR-stem one run at > 64 px keeps its 3x3 stem); and the torchvision
    model of that name (``torchvision.models.get_model``), whose key names differ from timm's for most families."""
    from ddoq_ray.students.models import BUILTIN_MODELS, NormalizedModel, is_resnet_family

    yield f"{arch} at {image_size} px", lambda: build_model(arch, num_classes, image_size)
    if arch in BUILTIN_MODELS:
        return
    if is_resnet_family(arch):
        other = not image_size <= 64
        stem = "CIFAR (3x3, no max-pool)" if other else "ImageNet (7x7 + max-pool)"
        yield (f"{arch} with the {stem} stem",
               lambda: build_model(arch, num_classes, image_size, cifar_stem=other))
    import torchvision

    if arch in torchvision.models.list_models(module=torchvision.models):
        yield (f"torchvision {arch}",
               lambda: NormalizedModel(torchvision.models.get_model(arch, weights=None, num_classes=num_classes)))


def load_teacher(path: str, arch: str, num_classes: int, class_index: list[int] | None = None,
                 image_size: int = 32) -> nn.Module:
    """Load a checkpoint teacher: ``arch`` at the run's ``image_size``, weights from ``path``.

    Accepted files (``torch.load(path, weights_only=True)``): a bare state dict (``torch.save(model.state_dict())``
    of a torchvision or timm model, or of a :func:`build_model` model as ddoq-ray saves trained teachers), or a dict
    holding one under ``state_dict`` / ``model`` / ``model_state_dict`` (akamaster CIFAR ``.th`` files:
    ``{"state_dict": {"module.<name>": tensor}}``); see :func:`checkpoint_state`. The architecture is the first of
    :func:`_candidate_models` the state dict fits strictly: so an ImageNet ResNet checkpoint keeps its 7x7 stem at
    any size, and a torchvision-only name (e.g. ``mobilenet_v3_small``) or torchvision key layout loads too. Input
    normalisation: ImageNet mean/std (the statistics of the torchvision/timm ImageNet weights and of the akamaster
    CIFAR ResNets).

    Args:
        path: checkpoint file or URI.
        arch: ``train.teacher_arch``: a :func:`~ddoq_ray.students.models.build_model` name (``resnet56_cifar``,
            a timm name such as ``resnet18``) or a torchvision classification model name.
        num_classes: classes the checkpoint was trained on (10 for the CIFAR-10 checkpoints, 1000 for ImageNet).
        class_index: if given, the returned model outputs only these logit columns, in this order.
        image_size: the run's ``train.image_size`` (the side of the images the teacher sees).

    Returns:
        The teacher in eval mode with ``requires_grad=False`` everywhere; input float NCHW in [0, 1].

    Raises:
        FileNotFoundError: ``path`` does not exist.
        UserValueError: the state dict fits none of the candidate architectures (names the checkpoint, and the
            missing / unexpected parameters and shape mismatches of the closest one), or bad ``class_index``.
    """
    state = checkpoint_state(_load_checkpoint(path), path)
    tried, unknown = [], None
    for desc, build in _candidate_models(arch, num_classes, image_size):
        try:
            model = build()
        except ValueError as e:  # not a timm name: the torchvision candidate may still build
            unknown = e
            continue
        mapped = _in_model_keys(model, state)
        problems = _mismatch(model, mapped)
        if not any(problems):
            model.load_state_dict(mapped, strict=True)
            return freeze(with_class_index(model, class_index, num_classes))
        tried.append((sum(map(len, problems)), desc, problems))
    if not tried:
        raise UserValueError(f"train.teacher_arch={arch!r} (teacher checkpoint {path}): {unknown}; nor a "
                             "torchvision classification model name") from unknown
    _, desc, problems = min(tried, key=lambda t: t[0])
    raise UserValueError(
        f"teacher checkpoint {path} does not fit train.teacher_arch={arch!r} with {num_classes} classes "
        f"(tried: {'; '.join(t[1] for t in tried)}). Closest, {desc}: {_describe(*problems)}. Set "
        f"train.teacher_arch to the checkpoint's architecture (a ddoq-ray built-in, timm or torchvision name) and "
        f"make the run's class count match the checkpoint's classifier rows"
    )


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
    init: nn.Module | None = None,
) -> tuple[nn.Module, float | None]:
    """Plain supervised training of a teacher (used when no checkpoint is given; small data only), or the
    fine-tuning of ``init`` (a loaded checkpoint teacher with ``num_classes`` outputs) on the run's split.

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
    if init is None:
        model = build_model(arch, num_classes, image_size).to(device)
    else:
        model = init.to(device)
        for p in model.parameters():
            p.requires_grad_(True)
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
    return freeze(model), top1


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
    ``$TORCH_HOME/hub/checkpoints``), which must then be pre-populated. Input: float NCHW in [0, 1] (the model's
    own normalisation is applied here: a timm model's own ``pretrained_cfg`` mean/std, resized to its ``input_size``
    when it has a fixed one (ViTs), see :func:`~ddoq_ray.students.models.timm_normalized`; a torchvision model's
    ``weights.transforms()`` mean/std); output: the model's logits, restricted to ``class_index`` columns when given
    (see :func:`named_class_index`). The classifier head is kept as trained (no replacement).

    Raises:
        UserValueError: unknown library, or ``num_classes`` given and the teacher's output width (after
            ``class_index``) differs from it.
    """
    from ddoq_ray.students.models import NormalizedModel, timm_normalized

    kind, _, name = ref.partition(":")
    if kind == "timm":
        import timm

        model = timm.create_model(name, pretrained=True)
        n_out = int(model.num_classes)
        wrapped = timm_normalized(model)
    elif kind == "torchvision":
        import torchvision

        weights = torchvision.models.get_model_weights(name).DEFAULT
        model = torchvision.models.get_model(name, weights=weights)
        n_out = len(weights.meta["categories"])
        preset = weights.transforms()
        wrapped = NormalizedModel(model, tuple(preset.mean), tuple(preset.std))
    else:
        raise UserValueError(f"train.teacher={ref!r}: expected timm:<name> or torchvision:<name>")
    width = len(class_index) if class_index is not None else n_out
    if num_classes is not None and width != num_classes:
        raise UserValueError(
            f"teacher {ref!r} has {n_out} outputs (ImageNet-1K classes for the usual weights) but the run has "
            f"{num_classes} classes. Name the classes by ImageNet WNIDs (ImageFolder folders such as n01440764: "
            f"ImageNet, ImageNette, ImageWoof), or keep ImageNet labels with data.class_subset, or use a checkpoint "
            f"teacher trained on these classes (train.teacher: path, train.teacher_arch)"
        )
    return freeze(with_class_index(wrapped, class_index, n_out))


def build_teacher(spec: dict | None, num_classes: int, image_size: int) -> nn.Module | None:
    """Materialise a teacher spec (in the driver or a Ray worker): ``{"named", "class_index"}`` (library model),
    ``{"path", "arch", "num_classes", "class_index"}`` (checkpoint, built at ``image_size``) or ``{"state_dict",
    "arch", "num_classes"}`` (weights in memory or an ObjectRef). None -> None (hard labels).

    Raises:
        UserValueError: a checkpoint that does not fit (from :func:`load_teacher`); ValueError: a malformed spec.
    """
    if spec is None:
        return None
    if "named" in spec:
        return load_named_teacher(spec["named"], spec.get("class_index"), num_classes)
    if "path" in spec:
        class_index = spec.get("class_index")
        t_classes = spec.get("num_classes")
        if t_classes is None:
            t_classes = num_classes if class_index is None else infer_num_classes(spec["path"])
        return load_teacher(spec["path"], spec["arch"], int(t_classes), class_index, image_size=image_size)
    if "state_dict" in spec:
        state = spec["state_dict"]
        if hasattr(state, "hex") and not isinstance(state, dict):  # an ObjectRef
            import ray

            state = ray.get(state)
        model = build_model(spec["arch"], int(spec.get("num_classes", num_classes)), image_size)
        load_state_dict_into(model, state, "trained teacher state_dict")
        return freeze(model)
    raise ValueError(f"teacher_spec needs 'path' or 'state_dict' (and 'arch'), got keys {sorted(spec)}")
