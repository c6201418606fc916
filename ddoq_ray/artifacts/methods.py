"""Method -> training set: the one home of which images and which per-image weights each method trains on.

Every method is a preset of (clustering, weights, images) in :mod:`ddoq_ray.artifacts.method_presets` (the
registry; ``train.methods`` is validated against it). Here those parts become arrays:

- images ``real``: the seed's random subset (``random``) or the subsets stage's selection (``herding``,
  ``k_center``: chosen in VAE-latent space), read from :mod:`ddoq_ray.artifacts.subsets`;
- images ``nearest_real``: the real training images the subsets stage chose in each cell of the method's
  clustering (the input images themselves, loaded by id), each with its cell mass;
- images ``decoded``: the decode stage's images of the method's clustering
  (:func:`ddoq_ray.artifacts.synthetic.load_synthetic`);
- weights ``uniform``: 1 per image (real) or ``sample_weights(..., "uniform")`` (decoded, as D4M); ``mass``:
  ``train.weight_scheme`` of the cell masses normalised by ``train.weight_norm``
  (:func:`ddoq_ray.students.weights.sample_weights`; DDOQ §3).

``d4m`` / ``ddoq`` are the paper's (MiniBatchKMeans centroids); the faiss-Lloyd sets they named before issue 14 are
``lloyd_uniform`` / ``lloyd_mass``. Students, Tune trials, the metrics stage, export and the report all call these
functions.
"""

from __future__ import annotations

import numpy as np

from ..config import TrainConfig
from .method_presets import METHODS, Method, get_method

__all__ = ["METHODS", "Method", "get_method", "method_set", "method_weights", "subset_ids", "weight_scheme"]


def weight_scheme(method: str, tcfg: TrainConfig) -> str | None:
    """The weighting of a method's set: ``uniform``, ``train.weight_scheme`` for the ``mass`` methods, or None for
    the unweighted real-image sets (``random``, ``herding``, ``k_center``: weight 1 each).

    Raises:
        KeyError: not a method (the message lists them).
    """
    m = get_method(method)
    if m.weights == "mass":
        return tcfg.weight_scheme
    return "uniform" if m.images == "decoded" else None


def method_weights(method: str, labels: np.ndarray, mass: np.ndarray | None, tcfg: TrainConfig) -> np.ndarray:
    """float32 [n] per-image weights of ``method``'s set (``labels`` int [n], ``mass`` float [n] cell masses)."""
    from ..students.weights import sample_weights

    scheme = weight_scheme(method, tcfg)
    if scheme is None:
        return np.ones(len(labels), np.float32)
    return sample_weights(labels, mass, scheme, tcfg.weight_alpha, tcfg.weight_tau, tcfg.weight_norm)


def subset_ids(run_dir: str, ipc: int, seed: int) -> list[str]:
    """The random subset of ``seed``: read from the subsets stage when it drew that seed, else drawn by the same
    function from the same encoded ids (Tune's seed may be outside ``train.seeds``): identical either way."""
    from ..rundir import StageNotCommittedError, stage_path
    from .latents import ids_by_class
    from .subsets import random_subset, read_subset_ids

    try:
        return read_subset_ids(stage_path(run_dir, "subsets"), seed)
    except (KeyError, StageNotCommittedError):
        return random_subset(ids_by_class(stage_path(run_dir, "encode")), ipc, seed)


def _real_set(train_index, image_column: str, size: int, ids: list[str], weights: np.ndarray | None) -> dict:
    """The chosen real images by id (index order), with their shipped weights (``mass``) aligned by id."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from ..data import load_arrays

    # Arrow's is_in over the chosen ids: a Python list of every id cost ~80 bytes per train row per set.
    keep = pc.is_in(train_index.column("id"), value_set=pa.array(sorted(set(ids)), pa.string()))
    sub = load_arrays(train_index.filter(keep), image_column, size)
    n = len(sub["labels"])
    if weights is None:
        mass = np.ones(n)
    else:
        w = dict(zip(ids, weights, strict=True))
        mass = np.array([w[i] for i in sub["ids"]], dtype=np.float64)
    return {"images": sub["images"], "labels": sub["labels"], "mass": mass, "ids": sub["ids"]}


def decoded_set(syn: dict, algorithm: str) -> dict:
    """The decoded set of ``algorithm`` from ``syn``: either ``{algorithm: set}`` or one set (any algorithm)."""
    if "images" in syn:
        return syn
    try:
        return syn[algorithm]
    except KeyError:
        raise KeyError(f"no decoded {algorithm} set (decoded: {sorted(syn)}); re-run the decode stage") from None


def method_set(method: str, seed: int, tcfg: TrainConfig, *, run_dir: str, train_index, image_column: str,
               ipc: int, syn: dict) -> dict:
    """The training set of one method and seed.

    Args:
        syn: the decoded sets, ``{algorithm: load_synthetic(...)}`` at ``tcfg.image_size`` (or one such set).
        train_index: the run's train index (ids and image references), for real-image methods.
    Returns:
        ``{"images" uint8 [n,S,S,3], "labels" int64 [n], "weights" float32 [n], "mass" float64 [n]}``
        (``mass``: cell masses for decoded and nearest_real sets, ones for the other real images).
    Raises:
        KeyError: unknown method, or its images were not made by this run's stages.
    """
    from ..rundir import stage_path
    from .subsets import read_selection

    m: Method = get_method(method)
    if m.images == "decoded":
        s = decoded_set(syn, m.algorithm)
        return {"images": s["images"], "labels": s["labels"], "mass": s["mass"],
                "weights": method_weights(method, s["labels"], s["mass"], tcfg)}
    if m.clustering == "random":
        s = _real_set(train_index, image_column, tcfg.image_size, subset_ids(run_dir, ipc, seed), None)
    else:
        ids, w = read_selection(stage_path(run_dir, "subsets"), method)
        s = _real_set(train_index, image_column, tcfg.image_size, ids, w if m.weights == "mass" else None)
    return {"images": s["images"], "labels": s["labels"], "mass": s["mass"],
            "weights": method_weights(method, s["labels"], s["mass"], tcfg)}
