"""``ddoq-ray tune``: the stages a sweep reads, its validation split, its key, and the sweep itself."""

from __future__ import annotations

import hashlib
import json
import logging
import time

import numpy as np

from .. import storage as fsio
from ..config import RunConfig, TuneConfig
from ..rundir import stage_path
from .sweep import check_torch_trainer, sweep, write_results

log = logging.getLogger("ddoq_ray")


def validation_set(cfg: RunConfig, run, tc: TuneConfig) -> tuple[dict, str]:
    """The validation images (see module docstring) and a description of where they come from."""
    from ..artifacts.latents import scan
    from ..data import list_split, load_arrays

    size = cfg.train.image_size
    if tc.val_split == "test":
        log.warning("tune: validating on the TEST split (tune.val_split=test): the tuned accuracy is optimistic; "
                    "use val_split=train_holdout for an unbiased choice")
        idx, _ = list_split(run.test_src, cfg.data, tc.val_per_class, train=run.train_src)
        return load_arrays(idx, cfg.data.image_column, size), f"test split, first {tc.val_per_class} per class"
    full, _ = list_split(run.train_src, cfg.data, None)
    seen = set(scan(stage_path(run.dir, "encode"), columns=["id"]).column("id").to_pylist())
    rng = np.random.default_rng(tc.seed + 12345)
    ids, labels = full.column("id").to_pylist(), full.column("label").to_numpy()
    pick, n_seen = [], 0
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        unseen = [i for i in rows if ids[i] not in seen]
        rest = [i for i in rows if ids[i] in seen]
        order = list(rng.permutation(unseen)) + list(rng.permutation(rest))
        chosen = order[: tc.val_per_class]
        n_seen += sum(1 for i in chosen if ids[i] in seen)
        pick.extend(int(i) for i in chosen)
    if n_seen:
        log.warning("tune: %d of %d validation images were encoded (the train split has no unused images); they "
                    "never train a student and are disjoint from the test split", n_seen, len(pick))
    val = load_arrays(full.take(sorted(pick)), cfg.data.image_column, size)
    return val, f"train split hold-out, {tc.val_per_class} per class ({n_seen} of them seen by the encode stage)"


def fingerprint(cfg: RunConfig) -> str:
    """The sweep's key: everything its trials read (decoded set, subsets, teacher, train and tune sections)."""
    from ..stages import fingerprint as stage_fp

    doc = {"train_inputs": stage_fp(cfg, "train"), "tune": cfg.tune.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:12]


def run_tune(cfg: RunConfig) -> dict:
    """Run the stages the sweep reads if needed (resumable), then the sweep; write ``results.parquet`` and
    ``best.json`` under ``<run>/tune`` and return ``best.json``'s content (plus ``table``)."""
    from ..artifacts.train_inputs import load_train_inputs
    from ..data import load_arrays
    from ..errors import UserValueError
    from ..pipeline import Run, run_stage
    from ..runtime import init_ray
    from ..stages import closure

    if cfg.tune is None:
        raise UserValueError("config has no `tune:` section (see configs/cifar10_tune.yaml)")
    tc, tcfg = cfg.tune, cfg.train
    t0 = time.perf_counter()
    if tc.trainer == "torch_trainer":  # before the encode/quantize/decode stages, not after them
        init_ray(cfg.ray)
        check_torch_trainer(tc)
    run = Run(cfg)
    run.prepare()
    needs_teacher = tcfg.label_mode != "hard"
    for name in closure(["decode", "subsets"] + (["teacher"] if needs_teacher else [])):
        run_stage(run, name)
    init_ray(cfg.ray)
    val, val_src = validation_set(cfg, run, tc)
    test = None
    if run.test_src is not None:
        test = load_arrays(run.test_index, cfg.data.image_column, tcfg.image_size)
    elif tc.report_test:
        log.warning("tune: data.test is not set; no test top-1")
    inp = load_train_inputs(run, test=False, teacher=needs_teacher)
    s = inp.method_set(tc.method, tc.seed)  # the same images as the train stage's students (weights per trial)
    train = {"images": s["images"], "labels": s["labels"], "mass": s["mass"]}
    out = fsio.join(run.dir, "tune")
    fsio.makedirs(out)
    name = f"sweep-{fingerprint(cfg)}"
    rows = sweep(train, val, test, inp.spec, tcfg, tc, len(run.classes), out, name)
    info = {k: inp.teacher_info.get(k) for k in ("source", "top1")}
    return write_results(rows, list(tc.search_space), out, {
        "experiment": fsio.join(out, name), "method": tc.method, "validation": val_src,
        "wall_s": round(time.perf_counter() - t0, 1), "teacher": info})
