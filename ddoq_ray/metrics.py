"""Image-space distribution metrics of each distilled set against the real test split.

Pure core (numpy/torch):
- :func:`frechet_distance` — FID (Heusel et al., NeurIPS 2017): ‖μ₁−μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^{1/2}).
- :func:`weighted_stats` — weighted mean and covariance with normalised weights w (Σw = 1):
  μ = Σ wᵢ xᵢ, Σ = Σ wᵢ (xᵢ−μ)(xᵢ−μ)ᵀ / (1 − Σ wᵢ²) (the unbiased "reliability weights" estimator; GSL manual
  §21.7 "Weighted Samples"). Uniform weights give exactly ``np.cov`` (ddof=1), so weighted FID with uniform
  weights equals the usual FID.
- :func:`prdc` — precision/recall (Kynkäänniemi et al., NeurIPS 2019) and density/coverage (Naeem et al., ICML
  2020) from k-nearest-neighbour balls in feature space.
Ray layer: :func:`extract_features` maps a feature extractor over images with a Ray Data actor pool.

Features: ``teacher`` = the penultimate activations of the run's teacher (input of its last ``nn.Linear``),
reported as "FID (teacher features)" — NOT Inception FID. Inception FID uses torchmetrics'
``FrechetInceptionDistance`` (weights from torch-fidelity, downloaded by that library) when installed and
reachable; otherwise it is skipped with one message.

Artifact ``<run>/metrics/metrics.json``: per method of ``train.methods`` ``fid_teacher`` (weighted where the
method has weights), ``precision``, ``recall``, ``density``, ``coverage``, and ``fid_inception`` or a skip note.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from . import storage
from .errors import UserValueError

log = logging.getLogger("ddoq_ray")


def weighted_stats(x: np.ndarray, w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[d]`` and covariance ``[d, d]`` (float64) of features ``x [n, d]`` under weights ``w [n]`` (≥ 0).

    Raises:
        ValueError: fewer than 2 samples, or weights that are negative or all zero.
    """
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 2:
        raise ValueError("need at least 2 samples for a covariance")
    w = np.full(len(x), 1.0 / len(x)) if w is None else np.asarray(w, dtype=np.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError("weights must be >= 0 with a positive sum")
    w = w / w.sum()
    mu = w @ x
    xc = x - mu
    denom = 1.0 - (w * w).sum()
    cov = (xc * w[:, None]).T @ xc / max(denom, 1e-12)
    return mu, cov


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Fréchet distance between two Gaussians (the FID formula), via ``scipy.linalg.sqrtm``."""
    from scipy import linalg

    diff = mu1 - mu2
    covmean, _ = linalg.sqrtm(cov1 @ cov2, disp=False)
    if not np.isfinite(covmean).all():  # singular product: regularise as pytorch-fid does
        eps = np.eye(len(cov1)) * 1e-6
        covmean = linalg.sqrtm((cov1 + eps) @ (cov2 + eps))
    covmean = np.real(covmean)
    return float(max(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(covmean), 0.0))


def fid(real: np.ndarray, fake: np.ndarray, fake_weights: np.ndarray | None = None) -> float:
    """FID between feature sets ``[n, d]`` and ``[m, d]``, the second optionally weighted."""
    return frechet_distance(*weighted_stats(real), *weighted_stats(fake, fake_weights))


def _kth_radii(x: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    """Distance from each point to its k-th nearest other point in ``x``."""
    out = []
    for s in range(0, len(x), chunk):
        d = torch.cdist(x[s:s + chunk], x)
        out.append(d.kthvalue(k + 1, dim=1).values)  # +1: the point itself is at distance 0
    return torch.cat(out)


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage of ``fake [m, d]`` against ``real [n, d]`` with k-NN balls.

    Sources: Kynkäänniemi et al. 2019 (precision/recall), Naeem et al. 2020 (density/coverage), following the
    reference implementation clovaai/generative-evaluation-prdc.
    """
    r = torch.as_tensor(real, dtype=torch.float32)
    f = torch.as_tensor(fake, dtype=torch.float32)
    k_f = min(k, len(f) - 1)
    r_rad, f_rad = _kth_radii(r, k), _kth_radii(f, max(k_f, 1))
    d = torch.cdist(r, f)  # [n, m]
    inside_real = d <= r_rad[:, None]  # fake j inside real ball i
    precision = inside_real.any(0).float().mean().item()
    recall = (d <= f_rad[None, :]).any(1).float().mean().item()
    density = inside_real.sum(0).float().mean().item() / k
    coverage = (d.min(1).values <= r_rad).float().mean().item()
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage}


class PenultimateFeatures(torch.nn.Module):
    """Wrap a classifier so it returns the input of its last ``nn.Linear`` (penultimate features)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model.eval()
        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        if not linears:
            raise UserValueError("feature extractor: the model has no nn.Linear head; choose another "
                                 "metrics.features architecture")
        self._feat: list[torch.Tensor] = []
        linears[-1].register_forward_pre_hook(lambda _m, inp: self._feat.append(inp[0]))

    @torch.inference_mode()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._feat.clear()
        self.model(x)
        return self._feat[-1].flatten(1).float()


def features(extractor: torch.nn.Module, images: np.ndarray, batch_size: int = 256,
             device: torch.device | str = "cpu") -> np.ndarray:
    """uint8 ``[n, H, W, 3]`` → float32 features ``[n, d]`` (models take [0, 1] NCHW and normalise inside)."""
    out = []
    for s in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[s:s + batch_size])).to(device).permute(0, 3, 1, 2)
        x = x.float() / 255
        out.append(extractor(x).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def feature_model(teacher_spec: dict) -> torch.nn.Module:
    """The feature extractor's classifier: :func:`~ddoq_ray.students.teachers.load_teacher` of
    ``{"path", "arch", "num_classes", "class_index", "image_size"}`` (``image_size``: the run's
    ``train.image_size``, the side of the images whose features are taken)."""
    from .students.teachers import load_teacher

    return load_teacher(teacher_spec["path"], teacher_spec["arch"], teacher_spec["num_classes"],
                        teacher_spec.get("class_index"), image_size=int(teacher_spec["image_size"]))


class FeatureActor:
    """Ray Data callable class: loads the extractor once, maps ``{image}`` batches to ``{feature}``."""

    def __init__(self, teacher_spec: dict, num_threads: int = 1):
        torch.set_num_threads(num_threads)
        model = feature_model(teacher_spec)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # Ray sets the visible GPU
        self.extractor = PenultimateFeatures(model.to(self.device))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"idx": batch["idx"],
                "feature": features(self.extractor, np.asarray(batch["image"]), device=self.device)}


def extract_features(images: np.ndarray, teacher_spec: dict, batch_size: int = 256) -> np.ndarray:
    """Features of ``images`` through a Ray Data actor pool (one actor; GPU when the cluster has one)."""
    import ray

    from .runtime import cluster_gpus

    ds = ray.data.from_items([{"idx": i, "image": im} for i, im in enumerate(images)])
    ds = ds.map_batches(FeatureActor, fn_constructor_kwargs={"teacher_spec": teacher_spec, "num_threads": 2},
                        compute=ray.data.ActorPoolStrategy(size=1), batch_size=batch_size, batch_format="numpy",
                        num_cpus=1, num_gpus=1 if cluster_gpus() else None)
    rows = ds.take_all()
    rows.sort(key=lambda r: r["idx"])
    return np.stack([r["feature"] for r in rows]).astype(np.float32)


def inception_fid(real: np.ndarray, fake: np.ndarray) -> tuple[float | None, str]:
    """Standard Inception-v3 FID via torchmetrics (weights loaded by torch-fidelity); (None, reason) when
    unavailable (not installed, or offline with no cached weights). Unweighted: torchmetrics has no weights."""
    try:
        from torchmetrics.image.fid import FrechetInceptionDistance

        m = FrechetInceptionDistance(feature=2048, normalize=False)
        m.update(torch.from_numpy(real).permute(0, 3, 1, 2), real=True)
        m.update(torch.from_numpy(fake).permute(0, 3, 1, 2), real=False)
        return float(m.compute()), "torchmetrics FrechetInceptionDistance (Inception-v3 pool3, 2048-d)"
    except Exception as e:  # noqa: BLE001 - any failure (import, download) means: skip, never fail the run
        return None, f"skipped: {type(e).__name__}: {str(e)[:200]} (pip install 'torchmetrics[image]' online)"


def run_metrics(sets: dict[str, dict], real: np.ndarray, teacher_spec: dict, k: int, inception: str,
                out: str, summary: dict) -> None:
    """Compute every metric for each method's image set and write ``metrics.json``.

    Args:
        sets: ``{method: {"images": uint8 [m,H,W,3], "weights": float [m] or None}}``.
        real: uint8 ``[n,H,W,3]`` real test images.
    """
    # One pass through the actor pool for every image set (one model load, not one per set).
    names = list(sets)
    feats = extract_features(np.concatenate([real] + [sets[m]["images"] for m in names]), teacher_spec)
    bounds = np.cumsum([len(real)] + [len(sets[m]["images"]) for m in names])
    real_f = feats[:bounds[0]]
    ckpt = storage.basename(str(teacher_spec["path"]))
    res: dict = {"features": f"penultimate layer of {teacher_spec['arch']} ({ckpt})",
                 "label": "FID (teacher features): not Inception FID", "n_real": len(real),
                 "k": k, "methods": {}}
    note_logged = False
    for i, method in enumerate(names):
        s, f = sets[method], feats[bounds[i]:bounds[i + 1]]
        m = {"n": len(f), "fid_teacher": fid(real_f, f, s.get("weights")),
             "fid_teacher_unweighted": fid(real_f, f), **prdc(real_f, f, k)}
        if inception != "off":
            m["fid_inception"], note = inception_fid(real, s["images"])
            if m["fid_inception"] is None and not note_logged:
                log.warning("metrics: Inception FID %s", note)
                note_logged = True
            m["fid_inception_note"] = note
        res["methods"][method] = m
        log.info("metrics: %s FID (teacher features) %.3f, precision %.3f, recall %.3f", method,
                 m["fid_teacher"], m["precision"], m["recall"])
    storage.write_json(storage.join(out, "metrics.json"), res)
    summary.update({"methods": list(sets), "features": res["features"]})


def metrics_stage(run, out: str, summary: dict) -> None:
    """The registered ``metrics`` stage: each method's set (the same images and weights the students train on,
    :mod:`ddoq_ray.artifacts.methods`; ``random`` = the first student seed's subset) against the real test split,
    then :func:`run_metrics`. ``run`` is a :class:`ddoq_ray.context.Run`."""
    from .artifacts.methods import method_set, weight_scheme
    from .artifacts.synthetic import decoded_algorithms, load_synthetic
    from .data import list_split, load_arrays
    from .rundir import stage_path

    cfg, size = run.cfg, run.cfg.train.image_size
    run.require_test()
    test_index, _ = list_split(run.test_src, cfg.data, cfg.metrics.max_real_per_class, train=run.train_src)
    real = load_arrays(test_index, cfg.data.image_column, size)["images"]
    decode_dir = stage_path(run.dir, "decode")
    syn = {a: load_synthetic(decode_dir, size, a) for a in decoded_algorithms(decode_dir)}
    seed = cfg.train.seeds[0] if cfg.train.seeds else 0
    sets = {}
    for m in cfg.train.methods:
        s = method_set(m, seed, cfg.train, run_dir=run.dir, train_index=run.train_index,
                       image_column=cfg.data.image_column, ipc=cfg.quantize.ipc, syn=syn)
        # Unweighted sets get None: fid() then is exactly the usual FID.
        sets[m] = {"images": s["images"], "weights": s["weights"] if weight_scheme(m, cfg.train) not in
                   (None, "uniform") else None}
    class_index = list(cfg.data.class_subset) if cfg.data.class_subset is not None else None
    n_all = len(run.all_classes)
    if cfg.metrics.features == "teacher":
        if run.teacher_path is None:
            raise UserValueError("metrics.features=teacher needs a teacher checkpoint (train.teacher); set "
                                 "metrics.features=ARCH:CHECKPOINT or metrics.enabled=false")
        spec = {"path": run.teacher_path, "arch": cfg.train.teacher_arch, "num_classes": n_all,
                "class_index": class_index, "image_size": size}
    else:
        arch, _, path = cfg.metrics.features.partition(":")
        if not path:
            raise UserValueError(f"metrics.features={cfg.metrics.features!r}: use `teacher` or ARCH:CHECKPOINT")
        from .assets import resolve

        spec = {"path": resolve(path, run.root, "data"), "arch": arch, "num_classes": n_all, "class_index": None,
                "image_size": size}
    run_metrics(sets, real, spec, cfg.metrics.k, cfg.metrics.inception, out, summary)
