"""Checkpoint teachers at the run's image size (torchvision / timm / ddoq-ray state dicts), the metrics feature
extractor on the same checkpoint, timm teachers with their own pretrained_cfg, and the error for a wrong checkpoint
(issue 13, item 5)."""

from __future__ import annotations

import pytest
import torch

from ddoq_ray.errors import DdoqError
from ddoq_ray.students.models import Normalize, build_model
from ddoq_ray.students.teachers import load_teacher


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights and BatchNorm statistics (a fresh model's running stats are 0/1, which hides key mix-ups)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, v in model.state_dict().items():
        if not v.is_floating_point():
            state[k] = v.clone()
        elif k.endswith("running_var"):
            state[k] = torch.rand(v.shape, generator=g) + 0.5
        else:
            state[k] = torch.randn(v.shape, generator=g) * 0.05
    model.load_state_dict(state)
    return model.eval()


def _reference(source: str) -> torch.nn.Module:
    """A 10-class ResNet-18 as its library builds it (ImageNet stem), random weights."""
    if source == "torchvision":
        import torchvision

        return _randomise(torchvision.models.resnet18(weights=None, num_classes=10), 0)
    import timm

    return _randomise(timm.create_model("resnet18", pretrained=False, num_classes=10), 1)


@pytest.mark.parametrize("size", [224, 64])
@pytest.mark.parametrize("source", ["torchvision", "timm"])
def test_library_state_dict_loads_as_teacher_at_run_size(tmp_path, source, size):
    ref = _reference(source)
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)  # the plain format: keys conv1.weight ... fc.bias, no wrapper
    teacher = load_teacher(str(path), "resnet18", 10, image_size=size)
    sub = load_teacher(str(path), "resnet18", 10, class_index=[7, 2], image_size=size)
    assert teacher.model.conv1.weight.shape == (64, 3, 7, 7)  # the checkpoint's ImageNet stem, also at 64 px
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = ref(Normalize()(x))
        torch.testing.assert_close(teacher(x), expected, rtol=0, atol=0)
        torch.testing.assert_close(sub(x), expected[:, [7, 2]], rtol=0, atol=0)


def test_project_saved_teacher_loads_at_its_size(tmp_path):
    """The format ddoq-ray caches trained teachers in (``build_model(...).state_dict()``, ``model.`` keys)."""
    for size in (224, 32):  # 224: ImageNet stem; 32: the CIFAR stem build_model gives ResNets at <= 64 px
        model = _randomise(build_model("resnet18", 5, size), 3)
        path = tmp_path / f"r18-{size}.pt"
        torch.save(model.state_dict(), path)
        teacher = load_teacher(str(path), "resnet18", 5, image_size=size)
        x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(4))
        with torch.no_grad():
            torch.testing.assert_close(teacher(x), model(x), rtol=0, atol=0)


def test_torchvision_only_arch_loads_through_torchvision(tmp_path):
    import torchvision

    ref = _randomise(torchvision.models.get_model("mobilenet_v3_small", weights=None, num_classes=10), 5)
    path = tmp_path / "mnv3.pth"
    torch.save({"model": ref.state_dict()}, path)  # torchvision references/classification/train.py layout
    teacher = load_teacher(str(path), "mobilenet_v3_small", 10, image_size=64)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), ref(Normalize()(x)), rtol=0, atol=0)


def test_metrics_feature_extractor_loads_the_same_checkpoint(tmp_path):
    import numpy as np

    from ddoq_ray.metrics import FeatureActor

    ref = _reference("torchvision")
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    spec = {"path": str(path), "arch": "resnet18", "num_classes": 10, "class_index": None, "image_size": 224}
    actor = FeatureActor(spec)
    images = np.random.default_rng(7).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
    feats = actor({"idx": np.arange(3), "image": images})["feature"]
    assert feats.shape == (3, 512)  # ResNet-18's pooled features, the input of fc
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        logits = ref(Normalize()(x))
    # The features are the reference's penultimate activations: its own fc maps them to its logits.
    torch.testing.assert_close(ref.fc(torch.from_numpy(feats)), logits, rtol=1e-5, atol=1e-5)


def test_timm_teacher_uses_its_pretrained_cfg(monkeypatch):
    import timm
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as TF

    from ddoq_ray.students.teachers import load_named_teacher

    name = "test_vit.r160_in1k"  # timm's tiny test ViT: mean = std = 0.5, fixed 160 px input, bicubic
    created = []
    real_create = timm.create_model

    def offline_create(model_name, pretrained=False, **kwargs):
        created.append(_randomise(real_create(model_name, pretrained=False, **kwargs), 8))
        return created[-1]

    monkeypatch.setattr(timm, "create_model", offline_create)
    teacher = load_named_teacher(f"timm:{name}", None, num_classes=1000)
    ref = created[0]
    cfg = ref.pretrained_cfg
    assert cfg["mean"] == cfg["std"] == (0.5, 0.5, 0.5) and cfg["fixed_input_size"]
    torch.testing.assert_close(teacher.norm.mean.flatten(), torch.tensor(cfg["mean"]))
    torch.testing.assert_close(teacher.norm.std.flatten(), torch.tensor(cfg["std"]))
    g = torch.Generator().manual_seed(9)
    x = torch.rand(2, 3, 160, 160, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), ref((x - 0.5) / 0.5), rtol=0, atol=0)
        small = torch.rand(2, 3, 64, 64, generator=g)  # a 64 px run: resized to the model's 160 px
        up = TF.resize(small, [160, 160], InterpolationMode.BICUBIC, antialias=True)
        torch.testing.assert_close(teacher(small), ref((up - 0.5) / 0.5), rtol=0, atol=0)


def test_wrong_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(_reference("torchvision").state_dict(), path)
    with pytest.raises(DdoqError, match=r"resnet18\.pth does not fit train\.teacher_arch='resnet34'") as e:
        load_teacher(str(path), "resnet34", 10, image_size=224)
    assert "missing=['model.layer1.2." in str(e.value)  # ResNet-34's third layer1 block is not in a ResNet-18
    with pytest.raises(DdoqError, match=r"model\.fc\.weight: \(10, 512\) vs \(100, 512\)"):
        load_teacher(str(path), "resnet18", 100, image_size=224)  # checkpoint has 10 classes, run says 100
    junk = tmp_path / "junk.pth"
    torch.save([1, 2, 3], junk)
    with pytest.raises(DdoqError, match=r"junk\.pth: expected a state dict of tensors"):
        load_teacher(str(junk), "resnet18", 10, image_size=224)
    with pytest.raises(DdoqError, match=r"teacher_arch='no_such_net'"):
        load_teacher(str(path), "no_such_net", 10, image_size=224)
