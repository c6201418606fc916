"""benchmarks/ddranking_check.py writes what DD-Ranking's evaluator reads: torchvision's CIFAR-10 batches."""

import pickle

import numpy as np
import pytest

from benchmarks.ddranking_check import PROTOCOL_FIELDS, _cifar_batch
from ddoq_ray.config import TrainConfig

torchvision = pytest.importorskip("torchvision")


def test_cifar_batches_read_back_through_torchvision_pixel_for_pixel(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 12)
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for i, part in enumerate(np.array_split(np.arange(12), 5)):
        _cifar_batch(images[part], labels[part], root / f"data_batch_{i + 1}", f"train {i + 1}")
    _cifar_batch(images[:3], labels[:3], root / "test_batch", "test")
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(c) for c in range(10)]}, f)
    import torchvision.datasets.cifar

    # The two integrity checks ddranking_check.evaluate bypasses (md5 of the original batches).
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)
    train = torchvision.datasets.CIFAR10(str(tmp_path), train=True)
    test = torchvision.datasets.CIFAR10(str(tmp_path), train=False)
    assert train.data.shape == (12, 32, 32, 3) and np.array_equal(train.data, images)
    assert train.targets == [int(c) for c in labels]
    assert np.array_equal(test.data, images[:3]) and test.classes == [str(c) for c in range(10)]


def test_protocol_fields_are_train_config_fields():
    # prepare() reads each with getattr on the run's TrainConfig; a renamed field failed only at run time once.
    assert set(PROTOCOL_FIELDS) <= set(TrainConfig.model_fields), set(PROTOCOL_FIELDS) - set(TrainConfig.model_fields)
