"""Clustering algorithms (ddoq_ray/clustering.py): D4M's minibatch, streaming CLVQ, faiss Lloyd + k-means++."""

import tracemalloc

import numpy as np
import pytest
from sklearn.cluster import MiniBatchKMeans

from ddoq_ray.clustering import assign_chunks, cluster_class, clvq, lloyd, minibatch, rebatch
from ddoq_ray.errors import DdoqError
from ddoq_ray.quantization import assign_exact, kmeans, w2


def blobs(n=600, d=16, k=5, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 4, (k, d))
    sizes = rng.multinomial(n, rng.dirichlet(np.ones(k) * 0.7))
    return np.concatenate([c + rng.normal(0, 1, (s, d)) for c, s in zip(centers, sizes, strict=True)]).astype(
        np.float32)[rng.permutation(n)]


def chunked(x, size):
    return (x[s:s + size] for s in range(0, len(x), size))


def test_rebatch_gives_consecutive_blocks_in_order():
    x = np.arange(23 * 2, dtype=np.float32).reshape(23, 2)
    blocks = list(rebatch(chunked(x, 7), 5))
    assert [len(b) for b in blocks] == [5, 5, 5, 5, 3]
    np.testing.assert_array_equal(np.concatenate(blocks), x)


@pytest.mark.parametrize("km_expand", [1, 3])
def test_minibatch_equals_sklearn_partial_fit_loop(km_expand):
    """D4M's gen_prototype.py: one MiniBatchKMeans per class, partial_fit per km_expand*K latents in order."""
    x, k = blobs(n=605), 10
    ref = MiniBatchKMeans(n_clusters=k, random_state=0, batch_size=km_expand * k, n_init="auto")
    size = km_expand * k
    for s in range(0, len(x) - size + 1, size):  # the short tail (5 or 5+... rows) is dropped, as in D4M
        ref.partial_fit(x[s:s + size])
    got = minibatch(x, k, seed=0, km_expand=km_expand)
    assert got.dtype == np.float32 and got.shape == (k, 16)
    np.testing.assert_array_equal(got, ref.cluster_centers_)
    # The same centroids when the class arrives as a stream of odd-sized chunks.
    np.testing.assert_array_equal(minibatch(chunked(x, 37), k, seed=0, km_expand=km_expand), got)


def test_minibatch_tail_fit_is_d4m_final_flush():
    x, k = blobs(n=95), 10  # km_expand=2: 4 full mini-batches of 20, then a tail of 15 >= K ...
    ref = MiniBatchKMeans(n_clusters=k, random_state=3, batch_size=2 * k, n_init="auto")
    for s in range(0, 80, 20):
        ref.partial_fit(x[s:s + 20])
    ref.partial_fit(x[80:95])  # ... which tail="fit" flushes, as D4M does after its loop
    np.testing.assert_array_equal(minibatch(x, k, seed=3, km_expand=2, tail="fit"), ref.cluster_centers_)
    with pytest.raises(DdoqError, match="km_expand"):
        minibatch(x[:15], k, km_expand=2)


def clvq_reference(x, k):
    """MacQueen's sequential k-means written as running means: every centre is the mean of the latents it won."""
    members = [[x[j].astype(np.float64)] for j in range(k)]
    for z in x[k:].astype(np.float64):
        means = np.array([np.mean(m, axis=0) for m in members])
        members[int(((means - z) ** 2).sum(1).argmin())].append(z)
    return np.array([np.mean(m, axis=0) for m in members])


def test_clvq_centres_are_running_means_and_masses_are_exact():
    x, k = blobs(n=300, d=8, k=4, seed=1), 4
    c = clvq(chunked(x, 64), k)
    assert c.dtype == np.float32 and c.shape == (k, 8)
    np.testing.assert_allclose(c, clvq_reference(x, k), rtol=1e-5, atol=1e-5)
    # Final masses come from the exact assignment pass, not from CLVQ's online counts.
    a, sq = assign_exact(x, c)
    stats = assign_chunks(chunked(x, 50), c)
    np.testing.assert_array_equal(stats.counts, np.bincount(a, minlength=k))
    assert stats.n == 300 and stats.inertia == pytest.approx(sq.sum(), rel=1e-12)
    q = cluster_class(x.reshape(300, 2, 2, 2), k, "clvq")
    assert q.centroids.shape == (k, 2, 2, 2)
    np.testing.assert_array_equal(q.counts, stats.counts)
    np.testing.assert_array_equal(q.mass, stats.mass)
    assert w2(x, c, stats.mass) == pytest.approx(stats.w2_identity, rel=1e-4)


def _peak_bytes(n_rows, d=64, chunk=256):
    def stream():
        rng = np.random.default_rng(0)
        for s in range(0, n_rows, chunk):
            yield rng.normal(size=(min(chunk, n_rows - s), d)).astype(np.float32)

    tracemalloc.start()
    c = clvq(stream(), 8)
    assign_chunks(stream(), c)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_clvq_streams_memory_independent_of_class_size():
    small, large = _peak_bytes(1_000), _peak_bytes(10_000)
    # A copy of the 10,000-row class alone would be 2.5 MB (float32) / 5 MB (float64).
    assert large < 1.25 * small + 64_000, (small, large)
    assert large < 1_000_000


def test_lloyd_random_init_is_todays_quantize_kmeans():
    x = blobs(seed=2)
    np.testing.assert_array_equal(lloyd(x, 5, seed=7), kmeans(x, 5, seed=7))


@pytest.mark.parametrize("init", ["random", "k-means++"])
def test_restarts_never_raise_inertia(init):
    x = blobs(n=400, d=8, k=12, seed=3)
    for seed in range(3):
        one = assign_exact(x, lloyd(x, 6, niter=10, seed=seed, init=init))[1].sum()
        five = assign_exact(x, lloyd(x, 6, niter=10, seed=seed, init=init, n_init=5))[1].sum()
        assert five <= one


def test_bad_input_is_a_user_error():
    x = blobs(n=20)
    for alg in ("lloyd", "minibatch", "clvq"):
        with pytest.raises(DdoqError, match="K=30"):
            cluster_class(x, 30, alg)
    with pytest.raises(DdoqError, match="quantize.algorithm"):
        cluster_class(x, 3, "kmedoids")
    bad = x.copy()
    bad[3, 0] = np.nan
    with pytest.raises(DdoqError, match="NaN"):
        cluster_class(bad, 3, "clvq")
