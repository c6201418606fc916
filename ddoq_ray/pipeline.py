"""Stage order, resume and results: encode → quantize → decode → train.

Each stage is skipped when ``<run>/<stage>/_SUCCESS.json`` carries the current fingerprint (its config section
plus everything upstream); otherwise it is recomputed into a new attempt folder and committed by that pointer (see
:mod:`ddoq_ray.rundir`); the encode stage resumes an interrupted attempt at its first unfinished shard.
The run directory is a location (local path, ``s3://``, ``gs://``; :mod:`ddoq_ray.storage`); stages read each
other's outputs only through :func:`ddoq_ray.rundir.stage_path`. ``results.json`` and the printed table are rebuilt
from the committed artifacts at the end of every run.
"""

from __future__ import annotations

import json
import logging
import platform
from importlib import metadata

import numpy as np

from . import storage
from .assets import assets_root, is_named_teacher, resolve
from .config import STAGE_UPSTREAM, STAGES, RunConfig, dump_config, stage_fingerprint
from .data import list_split, load_classes
from .rundir import committed, stage_done, stage_path, stage_writer

# Stages that keep an interrupted attempt and continue it (the encode stage skips its finished shards).
RESUMABLE = {"encode"}

log = logging.getLogger("ddoq_ray")
VERSIONED = ("ddoq-ray", "torch", "torchvision", "ray", "diffusers", "faiss-cpu", "faiss-gpu", "pyarrow", "timm",
             "pot", "numpy", "pydantic")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


class Run:
    """Resolved inputs of one run (paths, class lists, split indexes), shared by the stages."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.dir = storage.normalize(cfg.output_dir)  # a local path or a URI (s3://, gs://)
        storage.resolve(self.dir, field="output_dir")  # an unsupported scheme fails here, naming the field
        self.root = assets_root(cfg.assets_root)
        self.train_src = resolve(cfg.data.train, self.root, "data")
        self.test_src = resolve(cfg.data.test, self.root, "data") if cfg.data.test else None
        self.vae_path = resolve(cfg.encode.vae, self.root, "model")
        # A library teacher (timm:/torchvision:) is no file: its weights come from the library's cache or download.
        ref = cfg.train.teacher
        self.teacher_path = resolve(ref, self.root, "data") if ref and not is_named_teacher(ref) else None
        self._train_index = None
        self.classes: list[str] | None = None

    @property
    def train_index(self):
        if self._train_index is None:
            self._train_index, self.classes = list_split(self.train_src, self.cfg.data, self.cfg.data.max_per_class)
        return self._train_index

    def prepare(self) -> None:
        """Create the run directory with the resolved config, versions and class mapping."""
        storage.check_writable(self.dir, "output_dir")
        storage.write_text(storage.join(self.dir, "config.yaml"), dump_config(self.cfg))
        storage.write_json(storage.join(self.dir, "versions.json"), versions())
        counts = np.bincount(self.train_index.column("label").to_numpy(), minlength=len(self.classes))
        small = [f"{self.classes[c]!r} ({counts[c]})" for c in np.flatnonzero(counts < self.cfg.quantize.ipc)]
        if small and self.cfg.quantize.small_class == "error":  # fail before hours of encoding, not after
            raise ValueError(f"classes with fewer images than quantize.ipc={self.cfg.quantize.ipc}: "
                             f"{', '.join(small[:10])}; lower ipc or set quantize.small_class=shrink")
        storage.write_json(storage.join(self.dir, "classes.json"), self.classes, indent=1)


def run_stage(run: Run, stage: str, force: bool = False) -> bool:
    """Run one stage unless it is already complete; returns True when it ran."""
    from .runtime import init_ray

    cfg, fp = run.cfg, stage_fingerprint(run.cfg, stage)
    if not force and stage_done(run.dir, stage, fp):
        log.info("stage %s: complete (fingerprint %s), skipping", stage, fp)
        return False
    up = STAGE_UPSTREAM[stage]
    if up and not stage_done(run.dir, up, stage_fingerprint(cfg, up)):
        raise RuntimeError(f"stage {stage} needs a complete {up} stage for this config; run `ddoq-ray {up}` first "
                           "or `ddoq-ray run`")
    init_ray(cfg.ray)
    log.info("stage %s: running -> %s", stage, storage.join(run.dir, stage))
    with stage_writer(run.dir, stage, fp, resume=stage in RESUMABLE and not force) as (out, summary):
        if stage == "encode":
            from .encode import run_encode

            run_encode(cfg, run.train_index, run.vae_path, out, summary)
        elif stage == "quantize":
            from .quantize import run_quantize

            run_quantize(cfg.quantize, stage_path(run.dir, "encode"), list(range(len(run.classes))), out, summary)
        elif stage == "decode":
            from .decode import run_decode
            from .encode import check_meta, latent_shape, read_meta
            from .quantize import read_centroids

            check_meta(read_meta(stage_path(run.dir, "encode")), cfg.encode.vae,
                       latent_shape(run.vae_path, cfg.encode.vae_kind, cfg.data.image_size))
            run_decode(cfg, read_centroids(stage_path(run.dir, "quantize")), run.classes, run.vae_path, out,
                       summary)
        elif stage == "train":
            from .evaluate import run_train

            if run.test_src is None:
                raise ValueError("data.test is not set: students need a real test split to be evaluated on")
            test_index, _ = list_split(run.test_src, cfg.data, cfg.data.max_test_per_class, train=run.train_src)
            all_classes = load_classes(cfg.data, run.train_src) or run.classes
            run_train(cfg, run.dir, run.train_index, test_index, run.classes, all_classes, run.teacher_path, out,
                      summary)
        elif stage == "metrics":
            from .metrics import metrics_stage

            metrics_stage(run, out, summary)
        else:
            raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")
    return True


def metrics_possible(run: Run) -> bool:
    """The metrics stage needs a teacher checkpoint (the feature extractor) and a test split; say so if not."""
    cfg = run.cfg
    if not cfg.metrics.enabled:
        return False
    if (run.teacher_path is None and cfg.metrics.features == "teacher") or run.test_src is None:
        log.warning("stage metrics: skipped (needs train.teacher and data.test); set metrics.enabled=false to "
                    "silence this")
        return False
    return True


def run_all(cfg: RunConfig, stages: tuple[str, ...] = STAGES, force: bool = False) -> dict:
    """Run (or resume) the given stages in order, then write ``results.json`` and return it."""
    run = Run(cfg)
    run.prepare()
    for stage in stages:
        if stage == "metrics" and not metrics_possible(run):
            continue
        run_stage(run, stage, force)
    res = write_results(run)
    if "quantize" in res["stages"]:
        try:
            from .report import build_report

            build_report(run.dir)
        except Exception as e:  # noqa: BLE001 - a broken plot must never fail a finished run
            log.warning("report: could not be written (%s); retry with `ddoq-ray report %s`", e, run.dir)
    return res


def _mean_std(x: list[float]) -> tuple[float, float]:
    a = np.asarray(x, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def write_results(run: Run) -> dict:
    """Collect committed stage outputs into ``<run>/results.json`` (schema in the README)."""
    d, cfg = run.dir, run.cfg
    res: dict = {"name": cfg.name, "run_dir": d, "ipc": cfg.quantize.ipc, "classes": run.classes,
                 "versions": versions(), "stages": {}}
    for stage in STAGES:
        marker = committed(d, stage)
        if marker is not None:
            res["stages"][stage] = marker
    ignored = (run.train_index.schema.metadata or {}).get(b"ignored_files")
    res["ignored_files"] = json.loads(ignored) if ignored else []
    if "quantize" in res["stages"]:
        quantize = stage_path(d, "quantize")
        res["w2_per_class"] = storage.read_parquet(storage.join(quantize, "classes.parquet")).to_pylist()
    if "metrics" in res["stages"]:
        res["metrics"] = storage.read_json(storage.join(stage_path(d, "metrics"), "metrics.json"))
    if "train" in res["stages"]:
        train = stage_path(d, "train")
        rows = storage.read_parquet(storage.join(train, "students.parquet")).to_pylist()
        res["teacher"] = storage.read_json(storage.join(train, "teacher.json"))
        res["methods"] = {}
        for m in dict.fromkeys(r["method"] for r in rows):
            accs = [r["top1"] for r in rows if r["method"] == m]
            mean, std = _mean_std(accs)
            res["methods"][m] = {"top1_mean": mean, "top1_std": std, "top1": accs,
                                 "seeds": [r["seed"] for r in rows if r["method"] == m]}
    storage.write_json(storage.join(d, "results.json"), res)
    return res


def results_table(res: dict) -> str:
    """method | IPC | mean latent W2 | student top-1 (mean ± std), as Markdown."""
    w2 = res.get("w2_per_class") or []
    w2_of = {"random": np.mean([r["w2_random"] for r in w2]) if w2 else None,
             "d4m": np.mean([r["w2_uniform"] for r in w2]) if w2 else None,
             "ddoq": np.mean([r["w2_mass"] for r in w2]) if w2 else None}
    lines = ["| method | IPC | mean latent W2 | student top-1 (%) |", "|---|---|---|---|"]
    methods = res.get("methods") or {m: None for m in ("random", "d4m", "ddoq") if w2}
    for m, acc in methods.items():
        w = w2_of.get(m)
        a = f"{100 * acc['top1_mean']:.2f} ± {100 * acc['top1_std']:.2f} (n={len(acc['top1'])})" if acc else "—"
        w_txt = f"{w:.4f}" if w is not None else "—"
        lines.append(f"| {m} | {res['ipc']} | {w_txt} | {a} |")
    if res.get("teacher"):
        lines.append(f"| teacher (full data) | — | — | {100 * res['teacher']['top1']:.2f} |")
    return "\n".join(lines)
