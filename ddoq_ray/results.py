"""``results.json`` and the printed table, rebuilt from the committed artifacts (never from memory).

Schema of ``<run>/results.json``: ``name``, ``run_dir``, ``ipc``, ``classes``, ``versions``, ``stages`` (each
committed stage's ``_SUCCESS.json``), ``ignored_files``, ``w2_per_class`` (quantize's per-class table of its first
clustering, plus ``w2_random`` = the mean over seeds of the random subsets' W2 and ``w2_random_per_seed``),
``w2_decomposition`` (:func:`w2_decomposition`: per class and mean, every clustering x weight scheme, the
mass-vs-uniform reduction per clustering, and the W2 of the real latents shipped by the real-image methods),
``method_parts`` (each configured method's clustering, weights, images and mean latent W2), ``protocol`` (the
``train.protocol`` preset, and which epoch's accuracy is reported), ``teacher``, ``methods`` (top-1 per seed with
mean ± std, ddof 1), ``metrics``.
"""

from __future__ import annotations

import json
import platform
from importlib import metadata

import numpy as np

from . import storage
from .rundir import committed, stage_path
from .stages import REGISTRY

VERSIONED = ("ddoq-ray", "torch", "torchvision", "ray", "diffusers", "faiss-cpu", "faiss-gpu", "pyarrow", "timm",
             "pot", "numpy", "pydantic", "scikit-learn")


def versions() -> dict[str, str]:
    """Python and package versions of this environment."""
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def mean_std(x: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    a = np.asarray(x, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


SCHEMES = ("uniform", "mass", "sqrt_mass")


def w2_per_class(run_dir: str) -> list[dict]:
    """Quantize's per-class W2 rows of its first clustering joined with the subsets stage's random-subset W2 (when
    committed)."""
    from .artifacts.centroids import algorithms, read_class_table
    from .artifacts.subsets import w2_by_class

    q = stage_path(run_dir, "quantize")
    rows = read_class_table(q, algorithms(q)[0])
    rand = w2_by_class(stage_path(run_dir, "subsets")) if committed(run_dir, "subsets") else {}
    for r in rows:
        got = rand.get(r["label"])
        r["w2_random"] = got["w2"] if got else None
        r["w2_random_per_seed"] = {str(k): v for k, v in got["w2_per_seed"].items()} if got else None
    return rows


def w2_decomposition(run_dir: str) -> dict:
    """The latent W2 of every set the run measured, per class and mean.

    Returns:
        ``{"clusterings": {algorithm: {"per_class": [{label, uniform, mass, sqrt_mass}], "mean": {scheme: W2},
        "mass_vs_uniform_reduction_pct": 100 (1 - mean mass / mean uniform)}}, "shipped": {method: {"per_class":
        {label: W2}, "mean": W2}}}``; ``shipped`` holds the real-image methods (``random``: mean over its seeds) with
        the W2 of the latents actually shipped with their weights (:mod:`ddoq_ray.artifacts.subsets`).
    """
    from .artifacts.centroids import algorithms, read_class_table
    from .artifacts.subsets import read_w2

    q = stage_path(run_dir, "quantize")
    out: dict = {"clusterings": {}, "shipped": {}}
    for a in algorithms(q):
        rows = read_class_table(q, a)
        per = [{"label": r["label"], **{s: r.get(f"w2_{s}") for s in SCHEMES}} for r in rows]
        mean = {s: float(np.mean([p[s] for p in per])) if all(p[s] is not None for p in per) else None
                for s in SCHEMES}
        out["clusterings"][a] = {"per_class": per, "mean": mean,
                                 "mass_vs_uniform_reduction_pct": float(100 * (1 - mean["mass"] / mean["uniform"]))}
    if committed(run_dir, "subsets"):
        by: dict[str, dict[int, list[float]]] = {}
        for r in read_w2(stage_path(run_dir, "subsets")):
            by.setdefault(r["method"], {}).setdefault(r["label"], []).append(r["w2"])
        for m, cls in by.items():
            per = {int(c): float(np.mean(v)) for c, v in sorted(cls.items())}
            out["shipped"][m] = {"per_class": {str(c): v for c, v in per.items()},
                                 "mean": float(np.mean(list(per.values())))}
    return out


def method_parts(cfg, dec: dict | None) -> dict:
    """``{method: {"clustering", "weights", "images", "w2"}}`` for ``train.methods``: the three parts of each
    preset (``weights`` names the scheme actually used: ``train.weight_scheme`` for the mass methods) and the
    mean latent W2 of the set it trains on (None when not measured, e.g. ``power`` weights)."""
    from .artifacts.method_presets import get_method

    out = {}
    for name in cfg.train.methods:
        m = get_method(name)
        scheme = cfg.train.weight_scheme if m.weights == "mass" else "uniform"
        w2 = None
        if dec is not None:
            if m.images == "decoded" and m.algorithm in dec["clusterings"]:
                w2 = dec["clusterings"][m.algorithm]["mean"].get(scheme)
            elif name in dec["shipped"]:
                w2 = dec["shipped"][name]["mean"]
        out[name] = {"clustering": m.clustering, "weights": scheme, "images": m.images, "w2": w2}
    return out


def protocol_info(tcfg) -> dict:
    """The evaluation protocol of the run's students: the ``train.protocol`` preset (None: the fields as written),
    and which epoch's accuracy is reported (``train.reported``: the final epoch's test top-1, or the best of the
    test evaluations every ``eval_every`` epochs in the last 20 % of training, RDED's rule)."""
    from .students.protocols import get

    reported = {"final": "final epoch",
                "best_last_20pct": f"best of the test evaluations every {tcfg.eval_every} epochs in the last 20 % "
                                   "and the final one",
                "best": f"best of the test evaluations every {tcfg.eval_every} epochs"}[tcfg.reported]
    deviations = dict(get(tcfg.protocol).deviations) if tcfg.protocol else {}
    return {"name": tcfg.protocol, "reported": reported, "deviations": deviations, "epochs": tcfg.epochs,
            "label_mode": tcfg.label_mode, "batch_size": tcfg.batch_size, "seeds": list(tcfg.seeds),
            "optimizer": tcfg.optimizer, "lr": tcfg.resolved_lr(), "schedule": tcfg.schedule}


def write_results(run) -> dict:
    """Collect committed stage outputs into ``<run>/results.json`` (schema in the module docstring)."""
    d, cfg = run.dir, run.cfg
    res: dict = {"name": cfg.name, "run_dir": d, "ipc": cfg.quantize.ipc, "classes": run.classes,
                 "versions": versions(), "stages": {}}
    for stage in REGISTRY:
        marker = committed(d, stage)
        if marker is not None:
            res["stages"][stage] = marker
    ignored = (run.train_index_file.metadata or {}).get(b"ignored_files")
    res["ignored_files"] = json.loads(ignored) if ignored else []
    dec = None
    if "quantize" in res["stages"]:
        res["w2_per_class"] = w2_per_class(d)
        res["w2_decomposition"] = dec = w2_decomposition(d)
    res["method_parts"] = method_parts(cfg, dec)
    res["protocol"] = protocol_info(cfg.train)
    if "teacher" in res["stages"]:
        from .artifacts.teacher import read_info

        info = read_info(stage_path(d, "teacher"))
        res["teacher"] = {k: info[k] for k in ("source", "arch", "top1", "kind")}
    if "metrics" in res["stages"]:
        res["metrics"] = storage.read_json(storage.join(stage_path(d, "metrics"), "metrics.json"))
    if "train" in res["stages"]:
        rows = storage.read_parquet(storage.join(stage_path(d, "train"), "students.parquet")).to_pylist()
        res["methods"] = {}
        for m in dict.fromkeys(r["method"] for r in rows):
            accs = [r["top1"] for r in rows if r["method"] == m]
            mean, std = mean_std(accs)
            res["methods"][m] = {"top1_mean": mean, "top1_std": std, "top1": accs,
                                 "seeds": [r["seed"] for r in rows if r["method"] == m]}
        add_gains(res["methods"])
    storage.write_json(storage.join(d, "results.json"), res)
    return res


def add_gains(methods: dict) -> None:
    """Add ``gain_over_random`` to every method of ``methods`` (``results.json`` ``methods``) when ``random`` ran
    in the same train stage, hence under the same protocol preset: ``{"mean", "std", "n"}`` of the per-seed paired
    differences top-1(method, seed s) - top-1(random, seed s) over the seeds both ran (top-1 fractions; std ddof
    1, 0 for one seed), and ``beats_random``: mean > std over >= 2 seeds ("beats random by more than 1 std")."""
    rnd = methods.get("random")
    if not rnd:
        return
    by_seed = dict(zip(rnd["seeds"], rnd["top1"], strict=True))
    for v in methods.values():
        diffs = [a - by_seed[s] for s, a in zip(v["seeds"], v["top1"], strict=True) if s in by_seed]
        if not diffs:
            continue
        mean, std = mean_std(diffs)
        v["gain_over_random"] = {"mean": mean, "std": std, "n": len(diffs)}
        v["beats_random"] = len(diffs) > 1 and mean > std


def results_table(res: dict) -> str:
    """method | clustering | weights | images | IPC | mean latent W2 | student top-1 (mean ± std), as Markdown
    (the three parts from ``method_parts``; results written before issue 14 show ``—`` there)."""
    parts = res.get("method_parts") or {}
    lines = ["| method | clustering | weights | images | IPC | mean latent W2 | top-1 (%) | vs random (points) |",
             "|---|---|---|---|---|---|---|---|"]
    methods = res.get("methods") or {m: None for m in parts}
    for m, acc in methods.items():
        p = parts.get(m) or {}
        a = f"{100 * acc['top1_mean']:.2f} ± {100 * acc['top1_std']:.2f} (n={len(acc['top1'])})" if acc else "—"
        g = (acc or {}).get("gain_over_random")
        g_txt = "—" if not g or m == "random" else f"{100 * g['mean']:+.2f} ± {100 * g['std']:.2f}"
        w_txt = f"{p['w2']:.4f}" if p.get("w2") is not None else "—"
        lines.append(f"| {m} | {p.get('clustering', '—')} | {p.get('weights', '—')} | {p.get('images', '—')} | "
                     f"{res['ipc']} | {w_txt} | {a} | {g_txt} |")
    teacher = res.get("teacher") or {}
    if teacher.get("top1") is not None:
        lines.append(f"| teacher (full data) | — | — | real | — | — | {100 * teacher['top1']:.2f} | — |")
    return "\n".join(lines)


def w2_table(res: dict) -> str:
    """The W2 decomposition as Markdown: clustering x weight scheme (mean latent W2) with the mass-vs-uniform
    reduction, then the real-image sets' shipped W2."""
    dec = res.get("w2_decomposition") or {}
    lines = ["| clustering | uniform | mass | sqrt_mass | mass vs uniform |", "|---|---|---|---|---|"]
    for a, v in (dec.get("clusterings") or {}).items():
        cells = " | ".join("—" if v["mean"].get(s) is None else f"{v['mean'][s]:.4f}" for s in SCHEMES)
        lines.append(f"| {a} | {cells} | {-v['mass_vs_uniform_reduction_pct']:+.2f} % |")
    from .artifacts.method_presets import METHODS

    for m, v in (dec.get("shipped") or {}).items():  # under the weights it ships with
        mass = m in METHODS and METHODS[m].weights == "mass"
        w = f"{v['mean']:.4f}"
        lines.append(f"| {m} (real latents shipped) | {'—' if mass else w} | {w if mass else '—'} | — | — |")
    return "\n".join(lines) if len(lines) > 2 else ""
