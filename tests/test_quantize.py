"""Quantize core: k-means, exact cell masses and the W2 identities of DDOQ §3."""

import numpy as np
import pytest

from ddoq_ray.config import QuantizeConfig
from ddoq_ray.quantization import assign_exact, centroid_weights, kmeans, quantize_class, w2
from ddoq_ray.quantize import class_k


def blobs(n=600, d=16, k=5, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 4, (k, d))
    sizes = rng.multinomial(n, rng.dirichlet(np.ones(k) * 0.7))  # unequal cells, as in real classes
    x = np.concatenate([c + rng.normal(0, 1, (s, d)) for c, s in zip(centers, sizes, strict=True)])
    return x.astype(np.float32).reshape(n, 4, 2, 2)


def test_w2_with_cell_masses_equals_sqrt_inertia_over_n():
    z = blobs()
    q = quantize_class(z, 5, seed=0)
    assert q.centroids.shape == (5, 4, 2, 2) and q.counts.sum() == 600
    assert np.isclose(q.mass.sum(), 1.0) and (q.mass >= 0).all()
    w2_mass = w2(z, q.centroids, q.mass)
    assert w2_mass == pytest.approx(np.sqrt(q.inertia / q.n), rel=1e-4)
    assert w2_mass <= w2(z, q.centroids, centroid_weights(q.mass, "uniform")) + 1e-9


def test_masses_are_optimal_for_fixed_centroids():
    """Any other weights on the same centroids give a larger W2 (cell masses are the W2 projection)."""
    z = blobs(seed=1)
    q = quantize_class(z, 5, seed=1)
    best = w2(z, q.centroids, q.mass)
    rng = np.random.default_rng(0)
    for _ in range(5):
        other = q.mass + rng.uniform(0, 0.1, 5)
        assert w2(z, q.centroids, other / other.sum()) > best


def test_k1_centroid_is_exact_mean_no_faiss_subsampling():
    z = np.random.default_rng(2).normal(size=(1300, 64)).astype(np.float32)  # > 256 points per centroid
    c = kmeans(z, 1, niter=5)
    np.testing.assert_allclose(c[0], z.mean(0), atol=1e-5)


def test_k_equals_n_and_duplicates():
    z = np.repeat(np.arange(4, dtype=np.float32)[:, None], 3, axis=1)
    q = quantize_class(z, 4)
    assert q.inertia == 0 and sorted(q.counts.tolist()) == [1, 1, 1, 1]
    dup = np.zeros((10, 3), np.float32)
    q = quantize_class(dup, 2)
    assert q.counts.sum() == 10 and np.isclose(q.mass.sum(), 1) and q.inertia == 0
    with pytest.raises(ValueError, match="1 <= K <= n"):
        quantize_class(z, 5)


def test_exact_assignment_matches_brute_force():
    rng = np.random.default_rng(3)
    x, c = rng.normal(size=(500, 8)), rng.normal(size=(7, 8))
    a, d = assign_exact(x.astype(np.float32), c.astype(np.float32), chunk=64)
    brute = ((x.astype(np.float32).astype(np.float64)[:, None] - c.astype(np.float32)[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(a, brute.argmin(1))
    np.testing.assert_allclose(d, brute.min(1), rtol=1e-12)


@pytest.mark.parametrize("scheme, expected", [
    ("uniform", [0.25, 0.25, 0.25, 0.25]),
    ("mass", [0.1, 0.2, 0.3, 0.4]),
    ("sqrt_mass", np.sqrt([0.1, 0.2, 0.3, 0.4]) / np.sqrt([0.1, 0.2, 0.3, 0.4]).sum()),
])
def test_weight_schemes(scheme, expected):
    np.testing.assert_allclose(centroid_weights(np.array([0.1, 0.2, 0.3, 0.4]), scheme), expected)


def test_power_interpolates_uniform_and_mass():
    m = np.array([0.1, 0.2, 0.7])
    np.testing.assert_allclose(centroid_weights(m, "power", 0.0), centroid_weights(m, "uniform"))
    np.testing.assert_allclose(centroid_weights(m, "power", 1.0), m)
    np.testing.assert_allclose(centroid_weights(m, "power", 0.5), centroid_weights(m, "sqrt_mass"))
    with pytest.raises(ValueError, match="unknown weight scheme"):
        centroid_weights(m, "softmax")


def test_small_class_policy():
    assert class_k(3, QuantizeConfig(ipc=10, small_class="shrink"), 0) == 3
    assert class_k(30, QuantizeConfig(ipc=10), 0) == 10
    with pytest.raises(ValueError, match="class 4 has 3 latents < ipc=10"):
        class_k(3, QuantizeConfig(ipc=10), 4)


def test_quantize_worker_code_does_not_import_torch():
    """A quantize task (read latents, k-means, W2) must not pull in torch: POT would import it for its backends,
    +0.6 GB in every quantize worker (measured in benchmarks/bench_quantize_scale.py)."""
    import subprocess
    import sys

    code = ("import sys, numpy as np\n"
            "from ddoq_ray.quantization import quantize_class, w2\n"
            "z = np.random.default_rng(0).normal(size=(40, 4, 2, 2)).astype(np.float32)\n"
            "q = quantize_class(z, 3)\n"
            "w2(z, q.centroids, q.mass)\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr
