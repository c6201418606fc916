"""``results.json`` and the printed table, rebuilt from the committed artifacts (never from memory).

Schema of ``<run>/results.json``: ``name``, ``run_dir``, ``ipc``, ``classes``, ``versions``, ``stages`` (each
committed stage's ``_SUCCESS.json``), ``ignored_files``, ``w2_per_class`` (quantize's per-class table plus
``w2_random`` = the mean over seeds of the random subsets' W2 and ``w2_random_per_seed``), ``teacher``,
``methods`` (top-1 per seed with mean ± std, ddof 1), ``metrics``.
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


def w2_per_class(run_dir: str) -> list[dict]:
    """Quantize's per-class W2 rows joined with the subsets stage's random-subset W2 (when committed)."""
    from .artifacts.centroids import read_class_table
    from .artifacts.subsets import w2_by_class

    rows = read_class_table(stage_path(run_dir, "quantize"))
    rand = w2_by_class(stage_path(run_dir, "subsets")) if committed(run_dir, "subsets") else {}
    for r in rows:
        got = rand.get(r["label"])
        r["w2_random"] = got["w2"] if got else None
        r["w2_random_per_seed"] = {str(k): v for k, v in got["w2_per_seed"].items()} if got else None
    return rows


def write_results(run) -> dict:
    """Collect committed stage outputs into ``<run>/results.json`` (schema in the module docstring)."""
    d, cfg = run.dir, run.cfg
    res: dict = {"name": cfg.name, "run_dir": d, "ipc": cfg.quantize.ipc, "classes": run.classes,
                 "versions": versions(), "stages": {}}
    for stage in REGISTRY:
        marker = committed(d, stage)
        if marker is not None:
            res["stages"][stage] = marker
    ignored = (run.train_index.schema.metadata or {}).get(b"ignored_files")
    res["ignored_files"] = json.loads(ignored) if ignored else []
    if "quantize" in res["stages"]:
        res["w2_per_class"] = w2_per_class(d)
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
    storage.write_json(storage.join(d, "results.json"), res)
    return res


def results_table(res: dict) -> str:
    """method | IPC | mean latent W2 | student top-1 (mean ± std), as Markdown."""
    w2 = res.get("w2_per_class") or []

    def mean_of(key: str) -> float | None:
        vals = [r[key] for r in w2 if r.get(key) is not None]
        return float(np.mean(vals)) if vals and len(vals) == len(w2) else None

    w2_of = {"random": mean_of("w2_random"), "d4m": mean_of("w2_uniform"), "ddoq": mean_of("w2_mass")}
    lines = ["| method | IPC | mean latent W2 | student top-1 (%) |", "|---|---|---|---|"]
    methods = res.get("methods") or {m: None for m in ("random", "d4m", "ddoq") if w2}
    for m, acc in methods.items():
        w = w2_of.get(m)
        a = f"{100 * acc['top1_mean']:.2f} ± {100 * acc['top1_std']:.2f} (n={len(acc['top1'])})" if acc else "—"
        w_txt = f"{w:.4f}" if w is not None else "—"
        lines.append(f"| {m} | {res['ipc']} | {w_txt} | {a} |")
    teacher = res.get("teacher") or {}
    if teacher.get("top1") is not None:
        lines.append(f"| teacher (full data) | — | — | {100 * teacher['top1']:.2f} |")
    return "\n".join(lines)
