"""``ddoq-ray tune``: a Ray Tune sweep of student hyperparameters on one distilled set, scored on validation data.

Search space: ``tune.search_space`` (YAML) maps ``train`` fields to ``ray.tune`` samplers
(:func:`param_space`). Every trial trains one student with :func:`ddoq_ray.students.train.fit_student`'s loop on
the run's decoded set (``tune.method``), reports ``val_top1`` every ``tune.eval_every`` epochs, and is early-stopped
by ASHA (``time_attr="epoch"``). Two trial runners:

* ``trainer: function`` (default): the loop *is* the Tune function trainable (``ray.tune.report`` with a
  checkpoint per validation). Use on one small node: a TorchTrainer inside each Tune trial leaks placement groups
  when ASHA stops it there (ray-project/ray#54305, notes G11).
* ``trainer: torch_trainer``: each trial is a light driver (no CPU) that runs a Ray Train ``TorchTrainer``
  (``train.num_workers`` x ``train.cpus_per_worker``) whose reports reach Tune through ``TuneReportCallback``.
  When Tune stops such a trial (ASHA, also at ``max_t``), only Train's ``PlacementGroupCleaner`` frees its worker
  placement group, and it needs the Ray State API (the dashboard): :func:`check_torch_trainer` refuses the sweep
  without it, and :func:`sweep` waits for the groups to be freed before it returns.

Validation: ``val_split: train_holdout`` takes ``val_per_class`` real train images per class, preferring images the
encode stage did not see (with ``data.max_per_class`` those exist; on a full split they were encoded, so they
shaped the k-means a little, but no student trains on them and they are disjoint from the test split);
``val_split: test`` tunes on the test split and logs a warning (the reported accuracy is then optimistic).

Outputs in ``<run>/tune/``: the Tune experiment ``sweep-<fingerprint>/`` (``Tuner.restore`` resumes it when it
exists), ``results.parquet`` (one row per trial: ``trial_id``, the swept fields, ``epochs`` (planned),
``epoch`` (reached), ``val_top1`` (last), ``best_val_top1``, ``test_top1`` (trials that finished, with
``report_test``), ``stopped_early``, ``error``) and ``best.json`` (the best finished trial by final val top-1).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from . import storage as fsio
from .config import RunConfig, TrainConfig, TuneConfig
from .rundir import stage_path

log = logging.getLogger("ddoq_ray")
CKPT_FILE = "state.pt"


def param_space(space: dict[str, Any]) -> dict[str, Any]:
    """YAML search space -> ``ray.tune`` param space: ``{lr: {loguniform: [1e-4, 1e-2]}}`` ->
    ``{"lr": tune.loguniform(1e-4, 1e-2)}``; ``choice`` takes a list, ``grid`` becomes ``tune.grid_search``;
    plain values stay constants."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, spec in space.items():
        if isinstance(spec, dict):
            kind, args = next(iter(spec.items()))
            if kind == "choice":
                out[key] = tune.choice(list(args))
            elif kind == "grid":
                out[key] = tune.grid_search(list(args))
            else:
                out[key] = getattr(tune, kind)(*args)
        else:
            out[key] = spec
    return out


def max_epochs(tcfg: TrainConfig, space: dict[str, Any]) -> int:
    """The largest ``epochs`` any trial can have (ASHA's ``max_t``)."""
    spec = space.get("epochs", tcfg.epochs)
    if isinstance(spec, dict):
        kind, args = next(iter(spec.items()))
        return int(max(args[:2]) if kind not in ("choice", "grid") else max(args))
    return int(spec)


def concurrency(tc: TuneConfig, tcfg: TrainConfig) -> tuple[int, dict]:
    """``(max_concurrent_trials, per-trial resources)`` sized to the cluster: CPUs // CPUs per trial (and
    GPUs // GPUs per trial when the cluster has GPUs and the trial asks for them)."""
    import ray

    res = ray.cluster_resources()
    cpus, gpus = float(res.get("CPU", 1)), float(res.get("GPU", 0))
    if tc.trainer == "function":
        need_cpu, need_gpu = tc.cpus_per_trial, tc.gpus_per_trial if gpus > 0 else 0.0
        resources = {"cpu": need_cpu, "gpu": need_gpu}
    else:  # the trial driver holds no CPU; its TorchTrainer workers do
        need_cpu = max(1, tcfg.num_workers) * tcfg.cpus_per_worker
        need_gpu = max(1, tcfg.num_workers) if (gpus > 0 and tcfg.use_gpu is not False) else 0.0
        resources = {"cpu": 0, "memory": 64 * 1024**2}
    n = int(cpus // need_cpu) if need_cpu > 0 else 1
    if need_gpu:
        n = min(n, int(gpus // need_gpu))
    if tc.max_concurrent_trials is not None:
        n = min(n, tc.max_concurrent_trials) if n >= 1 else tc.max_concurrent_trials
    return max(1, n), resources


def _trial_cfg(base: dict, config: dict) -> TrainConfig:
    return TrainConfig.model_validate({**base, **{k: v for k, v in config.items() if k in TrainConfig.model_fields}})


def _weights(data: dict, cfg: TrainConfig, method: str) -> np.ndarray:
    from .students.weights import sample_weights

    if method == "random":
        return np.ones(len(data["labels"]), np.float32)
    scheme = "uniform" if method == "d4m" else cfg.weight_scheme
    return sample_weights(data["labels"], data["mass"], scheme, cfg.weight_alpha, cfg.weight_tau, cfg.weight_norm)


def _function_trial(config: dict, data: dict) -> None:
    """Tune function trainable: one student, ``ray.tune.report`` (+ checkpoint) at every validation."""
    import torch
    from ray import tune

    from .students.ray_train import _build_teacher
    from .students.train import _fit, default_device

    cfg = _trial_cfg(data["base"], config)
    torch.set_num_threads(max(1, int(data["threads"])))
    train = {"images": data["train"]["images"], "labels": data["train"]["labels"],
             "weights": _weights(data["train"], cfg, data["method"])}
    teacher = None if cfg.label_mode == "hard" else _build_teacher(data["spec"], data["num_classes"],
                                                                    cfg.image_size)
    start_state = None
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            start_state = torch.load(os.path.join(d, CKPT_FILE), map_location="cpu", weights_only=False)

    def on_epoch(metrics: dict, make_state, final: bool) -> None:
        if "val_top1" not in metrics:
            return
        rep = {"epoch": metrics["epoch"], "val_top1": metrics["val_top1"], "train_loss": metrics["train_loss"],
               "epochs": cfg.epochs, "finished": final}
        if final and metrics.get("top1") is not None:
            rep["test_top1"] = metrics["top1"]
        with tempfile.TemporaryDirectory() as d:
            torch.save(make_state(), os.path.join(d, CKPT_FILE))
            tune.report(rep, checkpoint=tune.Checkpoint.from_directory(d))

    _fit(train, data["test"], teacher, cfg, data["seed"], data["num_classes"], device=default_device(),
         on_epoch=on_epoch, start_state=start_state, val=data["val"], val_every=data["eval_every"])


def _torch_trainer_trial(config: dict, data: dict) -> None:
    """Tune trial driver: a Ray Train ``TorchTrainer`` whose reports reach Tune via ``TuneReportCallback``."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from .students.ray_train import train_student_ray

    cfg = _trial_cfg(data["base"], config)
    train = {"images": data["train"]["images"], "labels": data["train"]["labels"],
             "weights": _weights(data["train"], cfg, data["method"])}
    spec = None if cfg.label_mode == "hard" else data["spec"]
    trial = tune.get_context().get_trial_id()
    test = data["test"] if data["test"] is not None else data["val"]
    # Every report (epoch, val_top1, epochs, finished, test_top1 at the end) comes from the Train workers through
    # TuneReportCallback; a report from this driver after fit() would never arrive when ASHA stops the trial at
    # max_t, which it does as soon as the last epoch's report comes in.
    train_student_ray(train, test, spec, cfg, data["seed"], data["num_classes"], data["storage"], f"trial-{trial}",
                      val=data["val"], val_every=data["eval_every"], callbacks=[TuneReportCallback()],
                      tune_keys=True, tune_test=data["test"] is not None)


def check_torch_trainer(tc: TuneConfig, wait_s: float = 3.0) -> None:
    """Fail early when ``trainer: torch_trainer`` would leak placement groups.

    When Tune stops a trial (ASHA, including at ``max_t``, or ``time_budget_s``) it kills the trial's actor, and
    with it the Ray Train controller, before the controller can remove its worker placement group. In Ray 2.60
    only Train's detached ``PlacementGroupCleaner`` frees that group, and it learns that the controller died
    through the Ray State API, which is served by the dashboard. Without it the group stays reserved until the
    driver exits and the next trials wait for CPUs that never come back (ray-project/ray#54305; notes G11;
    measured here: both Train groups of a 2-trial ASHA sweep still CREATED 28 s after the sweep without the
    dashboard, removed within 4 s with it). A FIFO sweep without a time budget never stops a trial, so it needs
    no dashboard.

    Raises:
        RuntimeError: the State API does not answer within ``wait_s``; the message says what to change.
    """
    if tc.trainer != "torch_trainer" or (tc.scheduler == "fifo" and tc.time_budget_s is None):
        return
    from ray.util.state import list_nodes

    deadline, err = time.monotonic() + wait_s, None
    while True:
        try:
            list_nodes(limit=1, timeout=5, raise_on_missing_output=False)
            return
        except Exception as e:  # noqa: BLE001 - ServerUnavailable, or any failure to reach the State API
            err = e
        if time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    raise RuntimeError(
        "tune.trainer=torch_trainer with ASHA (or tune.time_budget_s) needs the Ray dashboard: Ray Train frees the "
        "placement group of a trial that Tune stopped only through the Ray State API, otherwise the group leaks and "
        "later trials hang (ray-project/ray#54305). The State API did not answer "
        f"({type(err).__name__}: {str(err).splitlines()[0][:160]}). Start the cluster with the dashboard "
        "(ray[default] installed; `ray.include_dashboard: true` for an embedded cluster), or use "
        "tune.trainer=function on one node, or tune.scheduler=fifo without time_budget_s."
    )


def _wait_for_placement_groups(before: set[str], timeout_s: float) -> list[str]:
    """Wait until every placement group created since ``before`` is removed; return those still there."""
    import ray

    deadline = time.monotonic() + timeout_s
    while True:
        left = [k for k, v in ray.util.placement_group_table().items() if k not in before and v["state"] != "REMOVED"]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(0.5)


def sweep(train: dict, val: dict, test: dict | None, spec: dict | None, tcfg: TrainConfig, tc: TuneConfig,
          num_classes: int, storage: str | Path, name: str) -> list[dict]:
    """Run (or resume) a sweep and return one row per trial (see module docstring for the columns).

    Args:
        train: ``{"images": uint8 [n,S,S,3], "labels": int64 [n], "mass": float [n]}`` (mass: cell masses; for
            ``tune.method == "random"`` it is ignored).
        val, test: ``{"images", "labels"}`` (test None: no test top-1).
        spec: teacher spec as for :func:`~ddoq_ray.students.ray_train.train_student_ray` (None: hard labels).
        tcfg: base train config; search-space values override its fields per trial.
        storage, name: the Tune experiment folder ``storage/name``; restored with ``Tuner.restore`` if present.
    """
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if tcfg.label_mode == "precomputed":
        raise ValueError("tune: train.label_mode=precomputed is not swept (soft labels depend on the trial's "
                         "epochs); tune with online labels, then train the chosen config with precomputed ones")
    # Snapshots after every report are cheap here (small trials), but Tune warns when they take > 5 s on a busy box.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    check_torch_trainer(tc)
    n_conc, resources = concurrency(tc, tcfg)
    epochs_max = max_epochs(tcfg, tc.search_space)
    data = {"train": train, "val": val, "test": test if tc.report_test else None, "spec": spec,
            "base": tcfg.model_dump(mode="json"), "num_classes": num_classes, "seed": tc.seed,
            "method": tc.method, "eval_every": tc.eval_every, "threads": max(1, int(tc.cpus_per_trial)),
            "storage": fsio.join(storage, "train")}
    fn = _function_trial if tc.trainer == "function" else _torch_trainer_trial
    trainable = tune.with_resources(tune.with_parameters(fn, data=data), resources)
    fs, root = fsio.resolve(storage)  # local disk or a bucket: Tune syncs through this filesystem
    exp = f"{root}/{name}"
    if tune.Tuner.can_restore(exp, storage_filesystem=fs):
        log.info("tune: resuming the sweep in %s", exp)
        tuner = tune.Tuner.restore(exp, trainable=trainable, resume_unfinished=True, resume_errored=True,
                                   storage_filesystem=fs)
    else:
        if tc.scheduler == "asha":
            sched = ASHAScheduler(time_attr="epoch", max_t=epochs_max, grace_period=min(tc.grace_period, epochs_max),
                                  reduction_factor=tc.reduction_factor)
        else:
            sched = FIFOScheduler()
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(tc.search_space),
            tune_config=tune.TuneConfig(metric=tc.metric, mode="max", scheduler=sched, num_samples=tc.num_samples,
                                        time_budget_s=tc.time_budget_s,
                                        # Tune ignores max_concurrent_trials for a SearchGenerator (it logs so):
                                        # the generator limits concurrency itself.
                                        search_alg=BasicVariantGenerator(random_state=tc.seed,
                                                                         max_concurrent=n_conc)),
            run_config=tune.RunConfig(name=name, storage_path=root, storage_filesystem=fs, verbose=0,
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
        )
    log.info("tune: %d samples, up to %d trials at once (%s per trial, %s), ASHA max_t=%d epochs",
             tc.num_samples, n_conc, resources, tc.trainer, epochs_max)
    assert ray.is_initialized()
    pgs_before = set(ray.util.placement_group_table())
    grid = tuner.fit()
    if tc.trainer == "torch_trainer":  # stopped trials' Train groups are freed by Train's cleaner a few s later
        left = _wait_for_placement_groups(pgs_before, timeout_s=60.0)
        if left:
            log.warning("tune: %d placement group(s) created during the sweep are still reserved (%s); see "
                        "ray-project/ray#54305", len(left), ", ".join(left))
    return _rows(grid, list(tc.search_space), tcfg.epochs)


def _rows(grid, keys: list[str], default_epochs: int = 0) -> list[dict]:
    rows = []
    for r in grid:
        m = r.metrics or {}
        hist = r.metrics_dataframe
        best_val = float(hist["val_top1"].max()) if hist is not None and "val_top1" in hist else float("nan")
        row = {"trial_id": m.get("trial_id") or Path(str(r.path)).name}
        for k in keys:
            v = r.config.get(k)
            row[k] = v if isinstance(v, int | float | str | bool) or v is None else json.dumps(v)
        epochs = int(m.get("epochs") or r.config.get("epochs") or default_epochs)
        row.update({"epochs": epochs, "epoch": int(m.get("epoch") or 0),
                    "val_top1": float(m.get("val_top1", float("nan"))), "best_val_top1": best_val,
                    "test_top1": float(m["test_top1"]) if m.get("test_top1") is not None else None,
                    "stopped_early": not bool(m.get("finished")) and r.error is None,
                    "error": str(r.error).splitlines()[0][:300] if r.error else None})
        rows.append(row)
    return rows


def best_trial(rows: list[dict]) -> dict | None:
    """The finished trial with the highest final val top-1 (else the best of all trials), or None."""
    ok = [r for r in rows if r["error"] is None and not np.isnan(r["val_top1"])]
    done = [r for r in ok if not r["stopped_early"]] or ok
    return max(done, key=lambda r: r["val_top1"]) if done else None


def table(rows: list[dict], keys: list[str]) -> str:
    """Trials sorted by final val top-1, as Markdown."""
    def fmt(v):
        if isinstance(v, float):
            return "—" if np.isnan(v) else (f"{v:.3g}" if abs(v) < 0.01 else f"{v:.4g}")
        return "—" if v is None else str(v)

    head = ["trial", *keys, "epoch", "val top-1 (%)", "test top-1 (%)", "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(rows, key=lambda r: -np.nan_to_num(r["val_top1"], nan=-1)):
        status = "error" if r["error"] else "stopped (ASHA)" if r["stopped_early"] else "finished"
        test = f"{100 * r['test_top1']:.2f}" if r["test_top1"] is not None else "—"
        lines.append("| " + " | ".join([r["trial_id"][-8:], *(fmt(r.get(k)) for k in keys),
                                        f"{r['epoch']}/{r['epochs']}", f"{100 * r['val_top1']:.2f}", test,
                                        status]) + " |")
    return "\n".join(lines)


def validation_set(cfg: RunConfig, run, tc: TuneConfig) -> tuple[dict, str]:
    """The validation images (see module docstring) and a description of where they come from."""
    from .data import list_split, load_arrays
    from .encode import scan

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
    from .config import stage_fingerprint

    doc = {"decode": stage_fingerprint(cfg, "decode"), "train": cfg.train.model_dump(mode="json"),
           "tune": cfg.tune.model_dump(mode="json"), "data_test": cfg.data.test}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:12]


def run_tune(cfg: RunConfig) -> dict:
    """Run the encode/quantize/decode stages if needed (resumable), then the sweep; write ``results.parquet`` and
    ``best.json`` under ``<run>/tune`` and return ``best.json``'s content (plus ``table``)."""
    from .data import list_split, load_arrays, load_classes
    from .decode import load_synthetic
    from .evaluate import EvalInputs, make_teacher, method_set
    from .pipeline import Run, run_stage
    from .runtime import init_ray

    if cfg.tune is None:
        raise ValueError("config has no `tune:` section (see configs/cifar10_tune.yaml)")
    tc, tcfg = cfg.tune, cfg.train
    t0 = time.perf_counter()
    if tc.trainer == "torch_trainer":  # before the encode/quantize/decode stages, not after them
        init_ray(cfg.ray)
        check_torch_trainer(tc)
    run = Run(cfg)
    run.prepare()
    for stage in ("encode", "quantize", "decode"):
        run_stage(run, stage)
    init_ray(cfg.ray)
    size = tcfg.image_size
    n_classes = len(run.classes)
    val, val_src = validation_set(cfg, run, tc)
    test = None
    if run.test_src is not None:
        test_index, _ = list_split(run.test_src, cfg.data, cfg.data.max_test_per_class, train=run.train_src)
        test = load_arrays(test_index, cfg.data.image_column, size)
    elif tc.report_test:
        log.warning("tune: data.test is not set; no test top-1")
    all_classes = load_classes(cfg.data, run.train_src) or run.classes
    teacher_info, spec = {"source": None, "top1": None}, None
    if tcfg.label_mode != "hard":
        _, spec, teacher_info = make_teacher(cfg, run.dir, run.train_index, test if test is not None else val,
                                             n_classes, all_classes, run.teacher_path, run.classes)
    syn = load_synthetic(stage_path(run.dir, "decode"), size)
    if tc.method == "random":
        inp = EvalInputs(cfg, run.dir, run.train_index, test or val, n_classes, None, spec, teacher_info, syn)
        from .encode import scan

        ok = scan(stage_path(run.dir, "encode"), columns=["id", "label"], status="ok")
        for i, c in zip(ok.column("id").to_pylist(), ok.column("label").to_pylist(), strict=True):
            inp.ids_by_class.setdefault(c, []).append(i)
        s = method_set(inp, "random", tc.seed, tcfg)
        train = {"images": s["images"], "labels": s["labels"], "mass": np.ones(len(s["labels"]))}
    else:
        train = {"images": syn["images"], "labels": syn["labels"], "mass": syn["mass"]}
    out = fsio.join(run.dir, "tune")
    fsio.makedirs(out)
    name = f"sweep-{fingerprint(cfg)}"
    rows = sweep(train, val, test, spec, tcfg, tc, n_classes, out, name)
    return write_results(rows, list(tc.search_space), out, {
        "experiment": fsio.join(out, name), "method": tc.method, "validation": val_src,
        "wall_s": round(time.perf_counter() - t0, 1), "teacher": teacher_info})


def write_results(rows: list[dict], keys: list[str], out: str, info: dict) -> dict:
    """Write ``out/results.parquet`` (one row per trial) and ``out/best.json`` (``info`` plus trial counts, the
    best trial and its config); return best.json's content plus ``table`` (Markdown). ``out``: a location."""
    fsio.makedirs(out)
    fsio.write_parquet(pa.Table.from_pylist(rows), fsio.join(out, "results.parquet"))
    best = best_trial(rows)
    res = {**info, "results": fsio.join(out, "results.parquet"), "trials": len(rows),
           "finished": sum(not r["stopped_early"] and r["error"] is None for r in rows),
           "errors": sum(r["error"] is not None for r in rows), "best": best,
           "best_config": {k: best[k] for k in keys} if best else None}
    fsio.write_text(fsio.join(out, "best.json"), json.dumps(res, indent=2, default=float))
    res["table"] = table(rows, keys)
    return res
