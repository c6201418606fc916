"""Student and teacher architectures.

Every model returned by :func:`build_model` takes float NCHW images in [0, 1] and normalises them itself
(ImageNet mean/std, the statistics the akamaster CIFAR ResNets were trained with), so callers never normalise.
Library teachers (``timm:<name>``) are wrapped with their own statistics instead (:func:`timm_normalized`).

Built-in names:

* ``convnet3`` — the ConvNet-3 of the dataset-distillation literature (Wang et al. 2018; Zhao et al. 2021,
  "Dataset Condensation with Gradient Matching"): 3 x [conv3x3 128 ch -> instance norm (GroupNorm(128, 128))
  -> ReLU -> AvgPool2d(2)] -> flatten -> Linear.
* ``resnet20_cifar`` / ``resnet56_cifar`` — He et al. 2016 CIFAR ResNets (6n+2 layers, option-A shortcuts)
  in the layout of github.com/akamaster/pytorch_resnet_cifar10, so their checkpoints load strictly after
  stripping the ``module.`` prefix.
* any other name — ``timm.create_model(name, pretrained=False, num_classes=...)``; ResNet-family models get a
  CIFAR stem (3x3 stride-1 conv, no max-pool) when ``image_size <= 64``; swin/vit models get ``img_size``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

BUILTIN_MODELS = ("convnet3", "resnet20_cifar", "resnet56_cifar")


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel for float NCHW input in [0, 1]. Buffers are non-persistent, so they do
    not appear in (or break strict loading of) state dicts."""

    def __init__(self, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ConvNet3(nn.Module):
    """ConvNet-3 (width 128, instance norm, average pooling) as used in DC/DM/MTT/SRe2L-style benchmarks."""

    def __init__(self, num_classes: int, image_size: int = 32, width: int = 128, depth: int = 3):
        super().__init__()
        self.norm = Normalize()
        layers: list[nn.Module] = []
        c, side = 3, image_size
        for _ in range(depth):
            layers += [
                nn.Conv2d(c, width, 3, padding=1),
                nn.GroupNorm(width, width, affine=True),
                nn.ReLU(inplace=True),
                nn.AvgPool2d(2),
            ]
            c, side = width, side // 2
        if side < 1:
            raise ValueError(f"convnet3: image_size {image_size} too small for {depth} pooling layers")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(self.norm(x)), 1))


class _OptionAShortcut(nn.Module):
    """``x[:, :, ::2, ::2]`` zero-padded by ``pad`` channels on each side (picklable, no parameters)."""

    def __init__(self, pad: int):
        super().__init__()
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), "constant", 0.0)


class BasicBlock(nn.Module):
    """CIFAR ResNet basic block with the parameter-free option-A shortcut (subsample + zero-pad channels)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = _OptionAShortcut(planes // 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs (He et al. 2016, sec. 4.2), akamaster parameter names."""

    def __init__(self, n: int, num_classes: int = 10):
        super().__init__()
        self.norm = Normalize()
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, n, 1)
        self.layer2 = self._make_layer(32, n, 2)
        self.layer3 = self._make_layer(64, n, 2)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)

    def _make_layer(self, planes: int, n: int, stride: int) -> nn.Sequential:
        blocks = []
        for s in [stride] + [1] * (n - 1):
            blocks.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(self.norm(x))))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


class NormalizedModel(nn.Module):
    """Wraps a library model (kept as ``.model``): optional resize to a fixed input size, ``Normalize``, the model.

    Args:
        mean, std: the model's input normalisation (default ImageNet's).
        input_size: ``(H, W)`` the model only accepts (timm ``fixed_input_size`` models such as ViTs); inputs of
            another size are resized to it with ``torchvision.transforms.v2.functional.resize`` (antialiased).
            None: any size goes through unchanged.
        interpolation: ``bilinear`` or ``bicubic`` (the model's ``pretrained_cfg``), used with ``input_size``.
    """

    def __init__(self, model: nn.Module, mean: tuple[float, ...] = IMAGENET_MEAN,
                 std: tuple[float, ...] = IMAGENET_STD, input_size: tuple[int, int] | None = None,
                 interpolation: str = "bilinear"):
        super().__init__()
        self.norm = Normalize(tuple(mean), tuple(std))
        self.model = model
        self.input_size = tuple(input_size) if input_size is not None else None
        self.interpolation = interpolation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_size is not None and tuple(x.shape[-2:]) != self.input_size:
            from torchvision.transforms.v2 import InterpolationMode
            from torchvision.transforms.v2 import functional as TF

            x = TF.resize(x, list(self.input_size), InterpolationMode(self.interpolation), antialias=True)
        return self.model(self.norm(x))


def timm_normalized(model: nn.Module) -> NormalizedModel:
    """A timm model wrapped with its own input config (``timm.data.resolve_model_data_config``: the model's
    ``pretrained_cfg`` mean/std, and its ``input_size``/``interpolation`` when ``fixed_input_size`` is set)."""
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(model)
    fixed = bool(getattr(model, "pretrained_cfg", {}).get("fixed_input_size", False))
    size = tuple(cfg["input_size"][-2:]) if fixed else None
    return NormalizedModel(model, cfg["mean"], cfg["std"], size, cfg.get("interpolation", "bilinear"))


def is_resnet_family(name: str) -> bool:
    return name.lower().startswith(("resnet", "resnext", "seresnet", "wide_resnet", "resnetv2"))


def _timm_model(name: str, num_classes: int, image_size: int, cifar_stem: bool | None = None) -> nn.Module:
    import timm

    if not timm.is_model(name):
        raise ValueError(
            f"unknown model {name!r}: not a built-in ({', '.join(BUILTIN_MODELS)}) and not a timm model name"
        )
    kwargs: dict = {}
    lname = name.lower()
    if "swin" in lname or "vit" in lname:
        kwargs["img_size"] = image_size
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    if cifar_stem is None:
        cifar_stem = is_resnet_family(name) and image_size <= 64
    if cifar_stem:
        conv1 = getattr(model, "conv1", None)
        if isinstance(conv1, nn.Conv2d) and hasattr(model, "maxpool"):
            # CIFAR stem (He et al. 2016 / standard CIFAR practice): keep the 32x32 resolution in layer1.
            model.conv1 = nn.Conv2d(3, conv1.out_channels, 3, 1, 1, bias=False)
            nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
            model.maxpool = nn.Identity()
    return NormalizedModel(model)


def build_model(name: str, num_classes: int, image_size: int, *, cifar_stem: bool | None = None) -> nn.Module:
    """A classifier for float NCHW images in [0, 1] of side ``image_size``; returns logits [B, num_classes].

    Args:
        cifar_stem: timm models with a ``conv1`` + ``maxpool`` stem only: True swaps in the CIFAR stem (3x3
            stride-1 conv, no max-pool), False keeps the ImageNet stem (7x7 stride-2 conv + max-pool); None (the
            default, students): the CIFAR stem for ResNet-family names at ``image_size <= 64``. Teachers loaded
            from a checkpoint use the stem the checkpoint has (:func:`~ddoq_ray.students.teachers.load_teacher`).

    Raises:
        ValueError: ``name`` is neither a built-in nor a timm model name (the message lists the built-ins).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if name == "convnet3":
        return ConvNet3(num_classes, image_size)
    if name == "resnet20_cifar":
        return CifarResNet(3, num_classes)
    if name == "resnet56_cifar":
        return CifarResNet(9, num_classes)
    return _timm_model(name, num_classes, image_size, cifar_stem)
