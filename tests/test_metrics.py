"""Distribution metrics: FID identities, monotonicity, weighting, precision/recall/density/coverage."""

import numpy as np
import pytest
from conftest import CIFAR_TEST, RESNET56

from ddoq_ray.config import DataConfig
from ddoq_ray.data import list_split, load_arrays
from ddoq_ray.metrics import PenultimateFeatures, features, fid, prdc, weighted_stats


@pytest.fixture(scope="module")
def teacher_feats():
    from ddoq_ray.students import load_teacher

    index, _ = list_split(str(CIFAR_TEST), DataConfig(train=str(CIFAR_TEST)), 40)
    images = load_arrays(index, "image", 32)["images"]
    ext = PenultimateFeatures(load_teacher(str(RESNET56), "resnet56_cifar", 10))
    return ext, images


def test_weighted_stats_with_uniform_weights_is_np_cov():
    x = np.random.default_rng(0).normal(size=(50, 4))
    mu, cov = weighted_stats(x, np.ones(50))
    np.testing.assert_allclose(mu, x.mean(0))
    np.testing.assert_allclose(cov, np.cov(x, rowvar=False))


def test_fid_of_a_set_with_itself_is_zero_and_weights_matter():
    x = np.random.default_rng(1).normal(size=(300, 8))
    assert fid(x, x) == pytest.approx(0.0, abs=1e-6)
    y = x + 0.5
    assert fid(x, y, np.ones(300)) == pytest.approx(fid(x, y), rel=1e-9)  # uniform weights = unweighted
    w = np.where(x[:, 0] > 0, 5.0, 1.0)  # up-weighting one half shifts the weighted mean
    assert fid(x, x, w) > 0.01


def test_teacher_feature_fid_grows_with_noise(teacher_feats):
    ext, images = teacher_feats
    real = features(ext, images[::2])
    assert real.shape == (200, 64)
    rng = np.random.default_rng(0)
    scores = []
    for sigma in (0, 20, 60):
        noisy = np.clip(images[1::2].astype(float) + rng.normal(0, sigma, images[1::2].shape), 0, 255)
        scores.append(fid(real, features(ext, noisy.astype(np.uint8))))
    assert scores[0] < scores[1] < scores[2]


def test_prdc_identical_and_disjoint_sets():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(200, 5))
    same = prdc(x, x, k=5)
    assert same["precision"] == 1.0 and same["recall"] == 1.0 and same["coverage"] == 1.0
    far = prdc(x, x + 100.0, k=5)
    assert far["precision"] == 0.0 and far["recall"] == 0.0 and far["coverage"] == 0.0 and far["density"] == 0.0
