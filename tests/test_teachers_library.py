"""Library teachers (``timm:<name>`` / ``torchvision:<name>``): name parsing, ImageNet class mapping, and loading
pretrained weights offline through the libraries' own caches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch


def test_named_teacher_rejects_unknown_library():
    from ddoq_ray.students.teachers import load_named_teacher

    with pytest.raises(ValueError, match="timm:<name> or torchvision:<name>"):
        load_named_teacher("keras:resnet50")


# Pretrained library teachers, loaded offline by timm / torchvision themselves from caches populated the way a user
# would (README, "Teachers"): weights are a random model's, saved with known values.
IMAGENETTE_IMAGENET_IDS = [0, 217, 482, 491, 497, 566, 569, 571, 574, 701]  # tench ... parachute


def _known_state(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in model.state_dict().items():
        if not v.is_floating_point():
            out[k] = v.clone()
        elif k.endswith("running_var"):
            out[k] = torch.rand(v.shape, generator=g) + 0.5
        else:
            out[k] = torch.randn(v.shape, generator=g) * 0.05
    return out


def _assert_same_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert set(got) == set(state)
    for k, v in state.items():
        assert torch.equal(got[k], v), k


def _hf_cache_with_snapshot(root: Path, repo_id: str, files: dict[str, bytes]) -> Path:
    """The Hugging Face hub cache layout: ``models--<org>--<name>/{refs/main, snapshots/<commit>/<file>}``."""
    commit = "4b2a3f8c1d9e0b7a6c5d4e3f2a1b0c9d8e7f6a5b"
    repo = root / "hub" / ("models--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return repo


def test_named_class_index_maps_imagenet_wnids():
    import torchvision

    from ddoq_ray.classlists import subset_wnids
    from ddoq_ray.students.teachers import named_class_index

    idx = named_class_index(subset_wnids("imagenette"), None)
    assert idx == IMAGENETTE_IMAGENET_IDS
    cats = torchvision.models.get_model_weights("resnet18").DEFAULT.meta["categories"]
    assert [cats[i] for i in idx[:2]] + [cats[idx[-1]]] == ["tench", "English springer", "parachute"]
    assert named_class_index(["cat", "dog"], [3, 5]) == [3, 5]  # no WNIDs: the labels kept by data.class_subset
    assert named_class_index(["cat", "dog"], None) is None


def test_timm_teacher_loads_from_offline_hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants
    import timm
    from huggingface_hub.errors import LocalEntryNotFoundError
    from safetensors.torch import save

    from ddoq_ray.classlists import subset_wnids
    from ddoq_ray.students.models import Normalize
    from ddoq_ray.students.teachers import load_named_teacher, named_class_index

    name = "resnet18.a1_in1k"
    ref = timm.create_model(name, pretrained=False).eval()
    state = _known_state(ref, 0)
    ref.load_state_dict(state)
    hub_id = ref.pretrained_cfg["hf_hub_id"]
    assert hub_id == "timm/resnet18.a1_in1k"
    # As a user would: HF_HOME pointing at a pre-populated cache, offline. huggingface_hub reads both variables when
    # it is imported, so the already imported module's constants are set too.
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(LocalEntryNotFoundError):  # empty cache, offline: the library's own error, no download
        load_named_teacher(f"timm:{name}")
    config = {"architecture": "resnet18", "num_classes": 1000, "pretrained_cfg": {"tag": "a1_in1k"}}
    _hf_cache_with_snapshot(tmp_path, hub_id, {"model.safetensors": save(state),
                                              "config.json": json.dumps(config).encode()})

    wnids = subset_wnids("imagenette")
    teacher = load_named_teacher(f"timm:{name}", named_class_index(wnids, None), num_classes=10)
    _assert_same_weights(teacher.model.model, state)  # ClassSubset(NormalizedModel(timm model))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = teacher(x)
        full = ref(Normalize()(x))  # ImageNet normalisation, then the 1000-way head, as trained
    assert out.shape == (2, 10) and full.shape == (2, 1000)
    torch.testing.assert_close(out, full[:, IMAGENETTE_IMAGENET_IDS])
    with pytest.raises(ValueError, match=r"has 1000 outputs .* the run has 10 classes"):
        load_named_teacher(f"timm:{name}", None, num_classes=10)


def test_torchvision_teacher_loads_from_offline_torch_home(tmp_path, monkeypatch):
    from urllib.parse import urlparse

    import torchvision

    from ddoq_ray.students.models import Normalize
    from ddoq_ray.students.teachers import load_named_teacher

    weights = torchvision.models.get_model_weights("resnet18").DEFAULT
    ref = torchvision.models.get_model("resnet18", weights=None).eval()
    state = _known_state(ref, 2)
    ref.load_state_dict(state)
    # torch.hub keeps downloads in $TORCH_HOME/hub/checkpoints/<file name of the URL> and does not re-download
    # (or re-check the hash of) a file that is already there.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    ckpt = tmp_path / "hub" / "checkpoints" / Path(urlparse(weights.url).path).name
    assert ckpt.name == "resnet18-f37072fd.pth"
    ckpt.parent.mkdir(parents=True)
    torch.save(state, ckpt)

    teacher = load_named_teacher("torchvision:resnet18", None, num_classes=1000)
    _assert_same_weights(teacher.model, state)  # NormalizedModel(torchvision model), no class subset
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = teacher(x)
        expected = ref(Normalize()(x))
    assert out.shape == (2, 1000)
    torch.testing.assert_close(out, expected)
    sub = load_named_teacher("torchvision:resnet18", [701, 0], num_classes=2)
    with torch.no_grad():
        torch.testing.assert_close(sub(x), expected[:, [701, 0]])


def test_named_teacher_is_not_resolved_as_a_file(tmp_path):
    from ddoq_ray.config import RunConfig
    from ddoq_ray.pipeline import Run

    train = tmp_path / "train"
    (train / "n01440764").mkdir(parents=True)
    for ref in ("timm:resnet18.a1_in1k", "torchvision:resnet18"):
        cfg = RunConfig.model_validate({"data": {"train": str(train)}, "train": {"teacher": ref}})
        assert Run(cfg).teacher_path is None
