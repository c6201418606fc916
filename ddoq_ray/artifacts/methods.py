"""Method -> training set: the one home of which images and which per-image weights each method trains on.

- ``random``: the real images of the seed's random subset (:mod:`ddoq_ray.artifacts.subsets`), weight 1;
- ``d4m``: the decoded images, uniform weights (D4M, Su et al. CVPR 2024);
- ``ddoq``: the decoded images weighted by ``train.weight_scheme`` of their cell masses, normalised by
  ``train.weight_norm`` (:func:`ddoq_ray.students.weights.sample_weights`; DDOQ §3).
Students, Tune trials, the metrics stage and the report all call these functions.
"""

from __future__ import annotations

import numpy as np

from ..config import TrainConfig

METHODS = ("random", "d4m", "ddoq")


def weight_scheme(method: str, tcfg: TrainConfig) -> str | None:
    """The centroid weighting of a decoded-set method (None for real-image methods)."""
    if method == "random":
        return None
    if method == "d4m":
        return "uniform"
    if method == "ddoq":
        return tcfg.weight_scheme
    raise ValueError(f"unknown method {method!r}; methods: {', '.join(METHODS)}")


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


def method_set(method: str, seed: int, tcfg: TrainConfig, *, run_dir: str, train_index, image_column: str,
               ipc: int, syn: dict) -> dict:
    """The training set of one method and seed.

    Args:
        syn: the decoded set (:func:`ddoq_ray.artifacts.synthetic.load_synthetic` at ``tcfg.image_size``).
        train_index: the run's train index (ids and image references), for real-image methods.
    Returns:
        ``{"images" uint8 [n,S,S,3], "labels" int64 [n], "weights" float32 [n], "mass" float64 [n]}``
        (``mass``: cell masses for decoded sets, ones for real images).
    """
    import pyarrow as pa

    from ..data import load_arrays

    if weight_scheme(method, tcfg) is None:
        chosen = set(subset_ids(run_dir, ipc, seed))
        keep = pa.array([i in chosen for i in train_index.column("id").to_pylist()])
        sub = load_arrays(train_index.filter(keep), image_column, tcfg.image_size)
        n = len(sub["labels"])
        return {"images": sub["images"], "labels": sub["labels"], "weights": np.ones(n, np.float32),
                "mass": np.ones(n)}
    return {"images": syn["images"], "labels": syn["labels"], "mass": syn["mass"],
            "weights": method_weights(method, syn["labels"], syn["mass"], tcfg)}
