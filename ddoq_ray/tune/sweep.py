"""Running the sweep (Tuner, ASHA, placement-group hygiene) and its result rows, table and best trial."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from .. import storage as fsio
from ..config import TrainConfig, TuneConfig
from ..errors import UserRuntimeError, UserValueError
from .space import concurrency, max_epochs, param_space
from .trials import function_trial, torch_trainer_trial

log = logging.getLogger("ddoq_ray")


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
    raise UserRuntimeError(
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

    from ..tracking import tune_callbacks

    if tcfg.label_mode == "precomputed":
        raise UserValueError("tune: train.label_mode=precomputed is not swept (soft labels depend on the trial's "
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
    fn = function_trial if tc.trainer == "function" else torch_trainer_trial
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
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                      callbacks=tune_callbacks(name)),  # tracking: (ddoq_ray.tracking)
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
