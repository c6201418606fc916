"""Run (or resume) stages by walking the stage registry (:mod:`ddoq_ray.stages`).

A stage is skipped when ``<run>/<stage>/_SUCCESS.json`` carries its current fingerprint (everything it depends
on, :func:`ddoq_ray.stages.fingerprint`); otherwise it is recomputed into a new attempt folder and committed by
that pointer (:mod:`ddoq_ray.rundir`); resumable stages (encode, train, matrix) continue an interrupted attempt with the
same fingerprint. The run directory is a location (local path, ``s3://``, ``gs://``; :mod:`ddoq_ray.storage`).
``results.json`` and the printed table are rebuilt from the committed artifacts at the end of every run
(:mod:`ddoq_ray.results`).
"""

from __future__ import annotations

import logging

from .config import RunConfig
from .context import Run
from .driver_memory import mark, release
from .errors import StageOrderError
from .results import results_table, write_results
from .rundir import stage_done, stage_writer
from .stages import REGISTRY, STAGES, closure, fingerprint, stage

__all__ = ["Run", "results_table", "run_all", "run_stage", "write_results"]

log = logging.getLogger("ddoq_ray")


def run_stage(run: Run, name: str, force: bool = False, extra: dict | None = None) -> bool:
    """Run one stage unless it is already complete for this config; returns True when it ran.

    Args:
        extra: keyword arguments of the stage's run function that are part of its fingerprint (the matrix's
            ``archs``).
    Raises:
        StageOrderError: a stage it reads is not complete for this config (``ddoq-ray <stage>`` runs one stage).
    """
    from .runtime import init_ray

    s, cfg = stage(name), run.cfg
    fp = fingerprint(cfg, name, extra)
    if not force and stage_done(run.dir, name, fp):
        log.info("stage %s: complete (fingerprint %s), skipping", name, fp)
        return False
    for up in s.upstream:
        if not stage_done(run.dir, up, fingerprint(cfg, up)):
            raise StageOrderError(f"stage {name} needs a complete {up} stage for this config; run "
                                  f"`ddoq-ray {up}` first or `ddoq-ray run`")
    if "test" in s.needs:
        run.require_test()
    init_ray(cfg.ray)
    log.info("stage %s: running (%s)", name, s.doc)
    mark(f"{name}: start")
    with stage_writer(run.dir, name, fp, resume=s.resumable and not force) as (out, summary):
        s.run_function()(run, out, summary, **(extra or {}))
    release()
    mark(f"{name}: committed")
    return True


def metrics_possible(run: Run) -> bool:
    """The metrics stage needs a feature extractor (a teacher checkpoint) and a test split; say so if not."""
    cfg = run.cfg
    if not cfg.metrics.enabled:
        return False
    if (run.teacher_path is None and cfg.metrics.features == "teacher") or run.test_src is None:
        log.warning("stage metrics: skipped (needs train.teacher and data.test); set metrics.enabled=false to "
                    "silence this")
        return False
    return True


def run_all(cfg: RunConfig, stages: tuple[str, ...] = STAGES, force: bool = False, report: bool = True) -> dict:
    """Run (or resume) the given stages and every stage they read, in registry order; then write
    ``results.json`` and the report, log them to the ``tracking:`` backends (:mod:`ddoq_ray.tracking`) and return
    the results. ``force`` recomputes only the stages named; ``report=False`` leaves the report to the caller
(:func:`ddoq_ray.ipcs.run_ipcs` writes each IPC's once, with the other IPCs).

    Raises:
        ConfigError: a ``tracking.backends`` package is missing (checked before any stage runs).
    """
    from . import tracking

    mark("run_all: start")
    run = Run(cfg)
    with tracking.session(cfg, run.dir) as tr:
        log.info("run directory: %s (config.yaml, one folder per stage; results.json and report.html at the end)",
                 run.dir)
        if tr is not None:
            log.info("tracking: %s", ", ".join(_where_tracked(tr)))
        run.prepare()
        for name in closure(stages):
            if name == "metrics" and not metrics_possible(run):
                continue
            run_stage(run, name, force and name in stages)
        res = write_results(run)
        mark("results written")
        if report and "quantize" in res["stages"]:
            try:
                from .report import build_report

                build_report(run.dir, index=run.train_index_file)
                release()
                mark("report written")
            except Exception as e:  # noqa: BLE001 - a broken plot must never fail a finished run
                log.warning("report: could not be written (%s); retry with `ddoq-ray report %s`", e, run.dir)
        tracking.log_results(tr, res, run.dir)
    return res


def _where_tracked(tr) -> list[str]:
    where = {"tensorboard": f"tensorboard --logdir {tr.tensorboard_dir}", "mlflow": f"mlflow at {tr.mlflow_uri}",
             "wandb": f"wandb project {tr.experiment}"}
    return [where[b] for b in tr.backends]


__all__ += ["REGISTRY", "metrics_possible"]
