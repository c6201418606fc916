"""The method registry: every method is a named preset of three parts, (clustering, weights, images).

- ``clustering``: a quantize algorithm (``lloyd`` | ``minibatch`` | ``clvq``, :mod:`ddoq_ray.clustering`) whose
  centroids the method starts from, or, for real-image selections, the selection rule (``random`` | ``herding`` |
  ``k_center``, :mod:`ddoq_ray.selection`; feature space: VAE latents).
- ``weights``: ``uniform`` (every image weight 1; D4M, the classic selection tables) or ``mass``
  (``train.weight_scheme`` of the cell masses, ``mass`` by default: DDOQ §3's W2-optimal weights).
- ``images``: ``real`` (the chosen training images), ``decoded`` (the centroids through the decode stage) or
  ``nearest_real`` (each centroid replaced by the real training image whose latent is nearest to it within its
  cell, with that cell's weight; no VAE round trip).

The paper's comparison (Tan & Slade, DDOQ; Su et al., D4M, CVPR 2024): ``d4m`` = minibatch + uniform + decoded
(D4M's ``MiniBatchKMeans`` ``partial_fit`` scheme), ``ddoq`` = minibatch + mass + decoded. ``lloyd_uniform`` /
``lloyd_mass`` are the faiss-Lloyd sets that ``d4m`` / ``ddoq`` named before issue 14. This module is a leaf (it
imports no other ddoq_ray module) so that the config can validate method names against it; what each method
trains on is built by :mod:`ddoq_ray.artifacts.methods`.
"""

from __future__ import annotations

from dataclasses import dataclass

ALGORITHMS = ("lloyd", "minibatch", "clvq")  # = ddoq_ray.clustering.ALGORITHMS (a leaf cannot import it)
SELECTIONS = ("random", "herding", "k_center")


@dataclass(frozen=True)
class Method:
    """One method: its three parts (module docstring) and a one-line description."""

    name: str
    clustering: str
    weights: str
    images: str
    doc: str = ""

    @property
    def algorithm(self) -> str | None:
        """The quantize algorithm this method needs (None for the real-image selections)."""
        return self.clustering if self.clustering in ALGORITHMS else None

    @property
    def by_subsets_stage(self) -> bool:
        """Its images are chosen by the ``subsets`` stage (herding, k_center, nearest_real; not ``random``, whose
        subset is drawn per student seed)."""
        return self.images == "nearest_real" or self.clustering in ("herding", "k_center")


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("random", "random", "uniform", "real", "a random real subset per student seed (the baseline)"),
    Method("herding", "herding", "uniform", "real", "greedy herding in VAE-latent space (Welling 2009)"),
    Method("k_center", "k_center", "uniform", "real", "greedy k-center in VAE-latent space (Sener & Savarese 2018)"),
    Method("d4m", "minibatch", "uniform", "decoded", "D4M: MiniBatchKMeans centroids, uniform weights (paper)"),
    Method("ddoq", "minibatch", "mass", "decoded", "DDOQ: MiniBatchKMeans centroids, cell-mass weights (paper)"),
    Method("lloyd_uniform", "lloyd", "uniform", "decoded", "faiss Lloyd centroids, uniform (d4m before issue 14)"),
    Method("lloyd_mass", "lloyd", "mass", "decoded", "faiss Lloyd centroids, cell masses (ddoq before issue 14)"),
    Method("clvq_uniform", "clvq", "uniform", "decoded", "streaming CLVQ centroids, uniform weights"),
    Method("clvq_mass", "clvq", "mass", "decoded", "streaming CLVQ centroids, cell-mass weights"),
    Method("ddoq_nearest", "minibatch", "mass", "nearest_real", "MiniBatchKMeans cells, nearest real image, mass"),
    Method("lloyd_nearest", "lloyd", "mass", "nearest_real", "faiss Lloyd cells, nearest real image, mass"),
)}


def get_method(name: str) -> Method:
    """The preset ``name``. Raises KeyError whose message lists the methods (the config turns it into a
    ConfigError naming ``train.methods``)."""
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; methods: {', '.join(METHODS)}") from None


def check_method(name: str) -> str:
    """``name`` if it is a method preset. Raises ValueError listing the methods (pydantic reports it as the
    field's error, which the config loader turns into a ConfigError naming the field)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; methods: {', '.join(METHODS)}")
    return name


def configured_methods(cfg) -> list[str]:
    """``train.methods`` plus ``tune.method`` when a ``tune:`` section exists (``cfg``: a RunConfig), in order."""
    names = list(cfg.train.methods)
    if getattr(cfg, "tune", None) is not None:
        names.append(cfg.tune.method)
    return list(dict.fromkeys(names))


def needed_algorithms(cfg) -> list[str]:
    """Every clustering the quantize stage runs: ``quantize.algorithms`` then those of the configured methods."""
    algos = list(cfg.quantize.algorithms) + [get_method(m).algorithm for m in configured_methods(cfg)]
    return [a for a in dict.fromkeys(algos) if a is not None]


def decoded_algorithms(cfg) -> list[str]:
    """The clusterings the decode stage decodes: those of the configured ``decoded`` methods; when there is none,
    the first quantize algorithm (so a run of real-image methods only still has a decoded set to show)."""
    algos = [get_method(m).algorithm for m in configured_methods(cfg) if get_method(m).images == "decoded"]
    return list(dict.fromkeys(algos)) or needed_algorithms(cfg)[:1]


def subsets_methods(cfg) -> list[str]:
    """The configured methods whose images the subsets stage chooses (:attr:`Method.by_subsets_stage`)."""
    return [m for m in configured_methods(cfg) if get_method(m).by_subsets_stage]
