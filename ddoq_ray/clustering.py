"""Per-class clustering algorithms for the quantize stage: ``lloyd``, ``minibatch`` (D4M) and ``clvq`` (streaming).

Each algorithm takes one class's latents, float32 ``[n, d]`` in their stored order (or, for the streaming ones, an
iterable of such chunks) and returns K centroids, float32 ``[K, d]``. Whatever the algorithm, the weights are
not taken from it: :func:`cluster_class` (arrays) and :func:`assign_chunks` (streams) follow it with the exact
assignment pass of :mod:`ddoq_ray.quantization` (:func:`~ddoq_ray.quantization.assign_exact`), which gives the exact
Voronoi cell masses, the inertia and so W2 = sqrt(inertia / N) for cell-mass weights (DDOQ §3; Graf & Luschgy
2000, Lemma 3.4). Online counts (scikit-learn's ``_counts``, CLVQ's visit counts) only approximate those masses.

- ``lloyd``: faiss k-means as the quantize stage runs it today (:func:`ddoq_ray.quantization.kmeans`, random
  initialisation), or k-means++ seeding (scikit-learn ``kmeans_plusplus``, Arthur & Vassilvitskii 2007) with
  ``n_init`` restarts, keeping the centroids of lowest exact inertia. Restart 0 uses ``seed`` itself, so more
  restarts never give a higher inertia than one.
- ``minibatch``: D4M's setting (Su et al., CVPR 2024; suduo94/D4M ``distillation/gen_prototype.py``):
  ``sklearn.cluster.MiniBatchKMeans(n_clusters=K, random_state=seed, batch_size=km_expand*K, n_init="auto")``
  fed through ``partial_fit`` with consecutive mini-batches of ``km_expand*K`` latents in stored order. D4M's
  ImageNet script uses ``km_expand=1`` (its Python default is 10).
- ``clvq``: competitive-learning vector quantization with step 1/count (D4M Eqs. 3-5; Pagès 2015 "Introduction
  to vector quantization and its applications for numerics" §3; this step makes it MacQueen's 1967 sequential
  k-means): centres start at the first K streamed latents (count 1 each); every later latent moves its nearest
  centre c by eta = 1/count_c towards it. One pass, memory O(K·d + chunk).

Pure numpy / faiss / scikit-learn; no Ray, no files.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from .errors import UserValueError
from .quantization import ClassQuantization, assign_exact, kmeans

ALGORITHMS = ("lloyd", "minibatch", "clvq")


@dataclass(frozen=True)
class CellStats:
    """Exact assignment-pass totals of a streamed class: ``counts`` int64 [K] latents per cell, ``inertia``
    float64 (Σ squared distances to the nearest centroid), ``n`` latents."""

    counts: np.ndarray
    inertia: float
    n: int

    @property
    def mass(self) -> np.ndarray:
        """Cell masses float64 [K] (count / N, sum 1): DDOQ's W2-optimal weights."""
        return self.counts / self.n

    @property
    def w2_identity(self) -> float:
        """Latent W2 of the centroids with cell-mass weights: sqrt(inertia / N) (quantize module docstring)."""
        return float(np.sqrt(self.inertia / self.n))


def _as_rows(x: np.ndarray, what: str = "latents") -> np.ndarray:
    """float32 C-contiguous ``[n, d]`` view of ``[n, *shape]`` latents; non-finite values are a data error."""
    x = np.asarray(x)
    if x.ndim < 2:
        raise UserValueError(f"{what}: expected an array [n, d] (or [n, *latent_shape]), got shape {x.shape}")
    x = np.ascontiguousarray(x.reshape(len(x), -1), dtype=np.float32)
    if not np.isfinite(x).all():
        raise UserValueError(f"{what} contain NaN/Inf; the encode stage should have skipped those rows")
    return x


def _check_k(k: int, n: int) -> None:
    if not 1 <= k <= n:
        raise UserValueError(f"K={k} centroids need 1 <= K <= n latents (n={n}); lower quantize.ipc or set "
                             "quantize.small_class=shrink")


def rebatch(chunks: Iterable[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Consecutive blocks of exactly ``size`` rows from a stream of chunks, in stream order; the last block
    (the tail) may be shorter and is yielded if non-empty. Holds at most one block plus one chunk."""
    buf: list[np.ndarray] = []
    held = 0
    for c in chunks:
        c = _as_rows(c)
        while len(c):
            take = min(size - held, len(c))
            buf.append(c[:take])
            held += take
            c = c[take:]
            if held == size:
                yield np.concatenate(buf) if len(buf) > 1 else buf[0]
                buf, held = [], 0
    if held:
        yield np.concatenate(buf)


def restart_seed(seed: int, restart: int) -> int:
    """Seed of restart ``restart``: ``seed`` itself for restart 0 (so one run is today's run), else a
    numpy ``SeedSequence((seed, restart))`` draw (independent of the seeds of other classes and restarts)."""
    if restart == 0:
        return int(seed)
    return int(np.random.SeedSequence((int(seed), int(restart))).generate_state(1)[0] % (2**31 - 1))


def lloyd(x: np.ndarray, k: int, niter: int = 50, nredo: int = 1, seed: int = 0, init: str = "random",
          n_init: int = 1, num_threads: int | None = None) -> np.ndarray:
    """faiss Lloyd k-means on all of a class's latents.

    Args:
        x: float32 ``[n, d]`` (or ``[n, *latent_shape]``), n ≥ k.
        init: ``random`` (faiss's own seeding, exactly :func:`ddoq_ray.quantization.kmeans`, i.e. today's quantize
            stage) or ``k-means++`` (scikit-learn ``kmeans_plusplus`` seeds, then ``niter`` faiss iterations).
        n_init: restarts (seeds from :func:`restart_seed`); the centroids with the lowest exact inertia
            (:func:`ddoq_ray.quantization.assign_exact`, float64) are kept, the first on ties.
        nredo: faiss's own restarts inside each run (``random`` only; faiss keeps its lowest objective).
    Returns:
        float32 ``[k, d]`` centroids.
    Raises:
        UserValueError: k outside [1, n], non-finite latents, unknown ``init`` or ``n_init`` < 1.
    """
    x = _as_rows(x)
    n, d = x.shape
    _check_k(k, n)
    if init not in ("random", "k-means++"):
        raise UserValueError(f"lloyd init={init!r}: use 'random' (faiss, today's) or 'k-means++'")
    if n_init < 1:
        raise UserValueError(f"lloyd n_init={n_init}: need at least 1 run")
    if k in (1, n):  # exact without iterations (mean / every point its own centroid): no restart can do better
        return kmeans(x, k, niter, nredo, seed, num_threads)
    best, best_inertia = None, np.inf
    for r in range(n_init):
        s = restart_seed(seed, r)
        if init == "random":
            c = kmeans(x, k, niter, nredo, s, num_threads)
        else:
            c = _lloyd_from(x, _kmeanspp(x, k, s), niter, s, num_threads)
        inertia = float(assign_exact(x, c)[1].sum())
        if inertia < best_inertia:
            best, best_inertia = c, inertia
    return best


def _kmeanspp(x: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import kmeans_plusplus

    centers, _ = kmeans_plusplus(x, k, random_state=seed)
    return np.ascontiguousarray(centers, dtype=np.float32)


def _lloyd_from(x: np.ndarray, init: np.ndarray, niter: int, seed: int, num_threads: int | None) -> np.ndarray:
    """faiss Lloyd iterations from given centres; same subsampling guard as :func:`ddoq_ray.quantization.kmeans`."""
    import faiss

    if num_threads:
        faiss.omp_set_num_threads(num_threads)
    n, d = x.shape
    k = len(init)
    km = faiss.Kmeans(d, k, niter=niter, nredo=1, seed=seed, verbose=False,
                      max_points_per_centroid=max(n, 256), min_points_per_centroid=1)
    km.train(x, init_centroids=init)
    return np.array(km.centroids, dtype=np.float32).reshape(k, d)


def minibatch(latents: np.ndarray | Iterable[np.ndarray], k: int, seed: int = 0, km_expand: int = 1,
              tail: str = "drop") -> np.ndarray:
    """D4M's mini-batch k-means of one class (module docstring; method.md §1.2, §4.2).

    Args:
        latents: float32 ``[n, d]`` in stored order, or an iterable of such chunks (re-batched by
            :func:`rebatch`, so memory holds one mini-batch, not the class).
        k: K = IPC centroids.
        seed: ``random_state`` (D4M: 0 for every class).
        km_expand: mini-batch size as a multiple of K (D4M ImageNet: 1).
        tail: what happens to the last, short mini-batch (fewer than ``km_expand*K`` latents): ``drop`` (D4M for
            every class but the one its loop ends on) or ``fit`` (D4M's final flush: ``partial_fit`` on it if it
            holds at least K latents).
    Returns:
        float32 ``[k, d]``: ``cluster_centers_`` after the last ``partial_fit``.
    Raises:
        UserValueError: km_expand < 1, unknown ``tail``, or no mini-batch was fitted (class smaller than
            ``km_expand*K``, or than K with ``tail=fit``).
    """
    from sklearn.cluster import MiniBatchKMeans

    if km_expand < 1:
        raise UserValueError(f"minibatch km_expand={km_expand}: the mini-batch is km_expand*K latents, need >= 1")
    if tail not in ("drop", "fit"):
        raise UserValueError(f"minibatch tail={tail!r}: use 'drop' (D4M) or 'fit'")
    if k < 1:
        raise UserValueError(f"K={k}: need at least one centroid")
    size = km_expand * k
    chunks = [latents] if isinstance(latents, np.ndarray) else latents
    km = MiniBatchKMeans(n_clusters=k, random_state=seed, batch_size=size, n_init="auto")
    fitted = False
    for block in rebatch(chunks, size):
        if len(block) == size or (tail == "fit" and len(block) >= k):
            km.partial_fit(block)
            fitted = True
    if not fitted:
        raise UserValueError(f"minibatch: the class has fewer than km_expand*K = {size} latents, so D4M's "
                             "scheme fits nothing; lower quantize.km_expand or use tail='fit'")
    return np.ascontiguousarray(km.cluster_centers_, dtype=np.float32)


def clvq(chunks: np.ndarray | Iterable[np.ndarray], k: int, init: np.ndarray | None = None) -> np.ndarray:
    """Competitive-learning vector quantization, one pass over a stream (module docstring).

    Centres and counts are float64 / int64; each latent's nearest centre (squared Euclidean, ties → lowest
    index) gets ``count += 1`` then ``c += (z - c) / count`` (eta = 1/count, D4M Eq. 5).

    Args:
        chunks: float32 ``[n, d]`` or an iterable of ``[m, d]`` chunks, consumed once, in order.
        k: K centroids.
        init: optional ``[k, d]`` starting centres (count 0 each: the first latent a centre wins replaces it);
            default: the first K latents of the stream (count 1 each).
    Returns:
        float32 ``[k, d]`` centroids.
    Raises:
        UserValueError: the stream holds fewer than K latents (without ``init``), or non-finite latents.
    """
    if k < 1:
        raise UserValueError(f"K={k}: need at least one centroid")
    stream = [chunks] if isinstance(chunks, np.ndarray) else chunks
    c = None if init is None else _as_rows(init, "clvq init").astype(np.float64)
    count = np.zeros(k, dtype=np.int64) if c is not None else None
    if c is not None and len(c) != k:
        raise UserValueError(f"clvq init has {len(c)} centres, expected K={k}")
    seed_rows: list[np.ndarray] = []
    for block in stream:
        x = _as_rows(block).astype(np.float64)
        if c is None:  # still collecting the first K latents as initial centres
            need = k - sum(len(s) for s in seed_rows)
            seed_rows.append(x[:need])
            x = x[need:]
            if sum(len(s) for s in seed_rows) == k:
                c = np.concatenate(seed_rows)
                count = np.ones(k, dtype=np.int64)
        for z in x:  # sequential by definition: each step depends on the previous centres
            diff = c - z
            j = int(np.einsum("kd,kd->k", diff, diff).argmin())
            count[j] += 1
            c[j] -= diff[j] / count[j]
    if c is None:
        raise UserValueError(f"clvq: the class has {sum(len(s) for s in seed_rows)} latents < K={k}; lower "
                             "quantize.ipc or set quantize.small_class=shrink")
    return c.astype(np.float32)


def assign_chunks(chunks: Iterable[np.ndarray], centroids: np.ndarray) -> CellStats:
    """The exact assignment pass (:func:`ddoq_ray.quantization.assign_exact`) over a stream of chunks: cell counts
    and inertia, memory independent of the class size. Gives the same counts as one pass over the whole array."""
    c = np.asarray(centroids).reshape(len(centroids), -1)
    counts = np.zeros(len(c), dtype=np.int64)
    inertia, n = 0.0, 0
    for block in chunks:
        x = _as_rows(block)
        a, sq = assign_exact(x, c)
        counts += np.bincount(a, minlength=len(c))
        inertia += float(sq.sum())
        n += len(x)
    if n == 0:
        raise UserValueError("assign_chunks: the stream holds no latents")
    return CellStats(counts, inertia, n)


def cluster(x: np.ndarray, k: int, algorithm: str, *, seed: int = 0, niter: int = 50, nredo: int = 1,
            init: str = "random", n_init: int = 1, km_expand: int = 1, tail: str = "drop",
            num_threads: int | None = None) -> np.ndarray:
    """Centroids float32 ``[k, d]`` of ``x`` float32 ``[n, d]`` with ``algorithm`` in :data:`ALGORITHMS`
    (the options of the others are ignored). Raises UserValueError for an unknown algorithm."""
    if algorithm == "lloyd":
        return lloyd(x, k, niter, nredo, seed, init, n_init, num_threads)
    if algorithm == "minibatch":
        return minibatch(_as_rows(x), k, seed, km_expand, tail)
    if algorithm == "clvq":
        return clvq(_as_rows(x), k)
    raise UserValueError(f"quantize.algorithm={algorithm!r}: use one of {', '.join(ALGORITHMS)}")


def cluster_class(latents: np.ndarray, k: int, algorithm: str = "lloyd", **options) -> ClassQuantization:
    """Cluster one class with ``algorithm`` (:func:`cluster`, same ``options``), then the exact assignment pass.

    Args:
        latents: float32 ``[n, *latent_shape]`` in stored order, n ≥ k ≥ 1.
    Returns:
        :class:`ddoq_ray.quantization.ClassQuantization`: centroids ``[K, *latent_shape]``, assignment, squared
        distances, counts and cell masses from :func:`ddoq_ray.quantization.assign_exact` (so
        ``sqrt(q.inertia / q.n)`` is the W2 of the centroids with cell-mass weights).
    Raises:
        UserValueError: K outside [1, n], non-finite latents, or a bad algorithm option.
    """
    x = _as_rows(latents)
    n = len(x)
    _check_k(k, n)
    c = cluster(x, k, algorithm, **options)
    assign, sqdist = assign_exact(x, c)
    counts = np.bincount(assign, minlength=k).astype(np.int64)
    return ClassQuantization(c.reshape(k, *np.shape(latents)[1:]), assign, sqdist, counts, counts / n)
