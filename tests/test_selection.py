"""Selection baselines (ddoq_ray/selection.py): nearest_real, herding, k_center, shipped-set W2."""

import itertools

import numpy as np
import pytest

from ddoq_ray.clustering import cluster_class
from ddoq_ray.errors import DdoqError
from ddoq_ray.quantization import w2
from ddoq_ray.selection import herding, k_center, nearest_real, nearest_real_indices, select, voronoi_mass


def data(n=40, d=3, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def test_nearest_real_lies_in_its_cell_and_is_nearest():
    z = data(n=300, d=8)
    q = cluster_class(z, 6, "minibatch")
    idx, mass = nearest_real_indices(z, q.centroids)
    np.testing.assert_array_equal(mass, q.mass)
    zd, cd = z.astype(np.float64), q.centroids.astype(np.float64)
    for k in range(6):
        members = np.flatnonzero(q.assign == k)
        assert q.assign[idx[k]] == k  # in its own cell
        dist = ((zd[members] - cd[k]) ** 2).sum(1)
        assert idx[k] == members[np.flatnonzero(dist == dist.min())[0]]  # nearest, lower index on ties
    s = nearest_real(z, q.centroids)
    np.testing.assert_array_equal(s.indices, idx)
    np.testing.assert_array_equal(s.weights, q.mass)
    assert s.w2 == pytest.approx(w2(z, z[idx], q.mass), rel=1e-12)


def test_nearest_real_ties_and_empty_cells():
    z = np.array([[0, 0], [1, 0], [-1, 0], [5, 5], [5, 5]], dtype=np.float32)
    c = np.array([[0, 0], [5, 5], [50, 50]], dtype=np.float32)  # cell 2 gets no latent
    idx, mass = nearest_real_indices(z, c)
    np.testing.assert_array_equal(idx, [0, 3, -1])  # duplicates 3 and 4: lower index; cell 2 is empty
    np.testing.assert_array_equal(mass, [0.6, 0.4, 0.0])
    s = nearest_real(z, c)
    np.testing.assert_array_equal(s.indices, [0, 3])


def herding_brute(x, k):
    x = x.astype(np.float64)
    mu, chosen = x.mean(0), []
    for t in range(k):
        best = min((i for i in range(len(x)) if i not in chosen),
                   key=lambda i: (np.linalg.norm((x[chosen].sum(0) + x[i]) / (t + 1) - mu), i))
        chosen.append(best)
    return chosen


def k_center_brute(x, k, first):
    x = x.astype(np.float64)
    chosen = [first]
    while len(chosen) < k:
        rest = [i for i in range(len(x)) if i not in chosen]
        cover = {i: min(np.linalg.norm(x[i] - x[j]) for j in chosen) for i in rest}
        chosen.append(max(rest, key=lambda i: (cover[i], -i)))
    return chosen


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_herding_and_k_center_match_brute_force(seed):
    x = data(n=25, d=4, seed=seed)
    assert herding(x, 6).tolist() == herding_brute(x, 6)
    first = int(np.argmin(np.linalg.norm(x.astype(np.float64) - x.mean(0, dtype=np.float64), axis=1)))
    assert k_center(x, 6).tolist() == k_center_brute(x, 6, first)
    assert k_center(x, 6, first=7).tolist() == k_center_brute(x, 6, 7)


def test_herding_and_k_center_never_repeat_an_index():
    x = data(n=12)
    assert sorted(herding(x, 12).tolist()) == list(range(12))
    dup = np.repeat(data(n=4), 3, axis=0)
    assert len(set(k_center(dup, 6).tolist())) == 6


def test_select_weights_and_w2_of_shipped_latents():
    z = data(n=60, d=5, seed=3)
    idx = k_center(z, 5)
    u, m = select(z, idx, "uniform"), select(z, idx, "mass")
    np.testing.assert_array_equal(u.weights, np.full(5, 0.2))
    np.testing.assert_array_equal(m.weights, voronoi_mass(z, idx))
    assert m.w2 <= u.w2 + 1e-12  # Voronoi masses are W2-optimal for a fixed support
    # Exact identity: W2 with Voronoi masses = sqrt(mean squared distance to the nearest selected latent).
    d2 = ((z[:, None, :].astype(np.float64) - z[idx][None].astype(np.float64)) ** 2).sum(-1).min(1)
    assert m.w2 == pytest.approx(np.sqrt(d2.mean()), rel=1e-6)
    # No other weights on that support do better (a coarse grid over the simplex).
    for w in itertools.islice(itertools.product([0.1, 0.2, 0.3], repeat=4), 0, None, 7):
        rest = 1 - sum(w)
        if rest > 0:
            assert w2(z, z[idx], np.array([*w, rest])) >= m.w2 - 1e-9


def test_bad_input_is_a_user_error():
    z = data(n=5)
    with pytest.raises(DdoqError, match="K=6"):
        herding(z, 6)
    with pytest.raises(DdoqError, match="first=9"):
        k_center(z, 2, first=9)
    with pytest.raises(DdoqError, match="weights="):
        select(z, [0, 1], "sqrt")
    with pytest.raises(DdoqError, match=r"\[0, 5\)"):
        select(z, [0, 5])
