"""Experiment tracking: students, Tune trials and a run's results in TensorBoard, MLflow or Weights & Biases.

Config section ``tracking:`` (:class:`ddoq_ray.config.TrackingConfig`; off by default, and no stage fingerprint
reads it: a tracked run reuses and produces exactly the stages of an untracked one)::

    tracking:
      backends: [tensorboard]   # any of tensorboard (tensorboardX, a Ray dependency), mlflow, wandb; [] = off
      experiment: null          # MLflow experiment / W&B project (entity: $WANDB_ENTITY); null: the run's name
      tensorboard_dir: null     # null: <output_dir>/tracking/tensorboard (a local folder)
      mlflow_tracking_uri: null # null: $MLFLOW_TRACKING_URI, else a file store at <output_dir>/tracking/mlruns
      log_artifacts: true       # results.json, report.html and report.md at the end of the run

What goes where:

- **Students** (Ray Train V2): :class:`StudentTracker` is a ``ray.train.UserCallback``; Train V2's ``RunConfig``
  accepts only those (Tune's ``LoggerCallback``\\ s such as ``MLflowLoggerCallback`` are rejected there,
  ray-project/ray#49454, #64179). Its ``after_report`` runs in the Train controller and logs rank 0's reported
  metrics (``train_loss``, ``epoch_s``, ``val_top1`` under Tune) at step ``epoch``; :meth:`StudentTracker.finish`
  runs in the driver after ``fit()`` and logs the final ``top1``/``train_loss``/``wall_s`` under ``final/``
  (measured with Ray 2.60: the last ``ray.train.report`` of a run reaches no user callback, so the final
  numbers come from the driver). TensorBoard:
  ``<tensorboard_dir>/students/<method>-seed<s>/``; MLflow: one run per student in the experiment; W&B: one run
  per student, grouped by the run's name.
- **Tune trials**: Ray Tune's own logger callbacks, ``ray.tune.logger.TBXLoggerCallback`` (event files in each
  trial folder), ``ray.air.integrations.mlflow.MLflowLoggerCallback`` (experiment ``<experiment>-tune``) and
  ``ray.air.integrations.wandb.WandbLoggerCallback`` (https://docs.ray.io/en/latest/tune/api/logging.html).
- **The run**: :func:`log_results` at the end of :func:`ddoq_ray.pipeline.run_all`: mean top-1 per method, the
  teacher's top-1 and the mean latent W2 per method as metrics, the config as params, and (``log_artifacts``)
  ``results.json``, ``report.html`` and ``report.md`` as artifacts (TensorBoard: the results table as text
  and the file paths). TensorBoard: ``<tensorboard_dir>/run``; MLflow / W&B: a run named after the config.

The pipeline activates tracking for the duration of a run (:func:`session`); the Train and Tune layers ask for
their callbacks with :func:`student_callbacks` / :func:`tune_callbacks` (empty when tracking is off).
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

from ray.train import UserCallback

from . import storage
from .config import ConfigError, RunConfig

PACKAGES = {"tensorboard": "tensorboardX", "mlflow": "mlflow", "wandb": "wandb"}
_active: Tracking | None = None
_lock = threading.Lock()  # students are started from several driver threads (evaluate.train_many)


class Tracking:
    """Where a run's tracking goes: resolved once in the driver, read by the callbacks it makes."""

    def __init__(self, cfg: RunConfig, run_dir: str):
        tc = cfg.tracking
        self.backends = list(dict.fromkeys(tc.backends))
        self.experiment = tc.experiment or cfg.name
        self.run_name = cfg.name
        self.log_artifacts = tc.log_artifacts
        missing = [f"{b} (pip install {PACKAGES[b]})" for b in self.backends
                   if importlib.util.find_spec(PACKAGES[b]) is None]
        if missing:
            raise ConfigError(f"tracking.backends: {', '.join(missing)} not installed; install it or remove the "
                              "backend from tracking.backends")
        local = not storage.is_uri(run_dir)
        tb = tc.tensorboard_dir or (os.path.join(run_dir, "tracking", "tensorboard") if local else None)
        if "tensorboard" in self.backends and (tb is None or storage.is_uri(tb)):
            raise ConfigError(f"tracking.tensorboard_dir: set a local folder (output_dir {run_dir} is remote; "
                              "TensorBoard event files are written by local processes)")
        self.tensorboard_dir = str(Path(tb).resolve()) if tb else None
        uri = tc.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if uri is None and "mlflow" in self.backends:
            if not local:
                raise ConfigError(f"tracking.mlflow_tracking_uri: set a tracking server or file store (output_dir "
                                  f"{run_dir} is remote)")
            uri = Path(run_dir, "tracking", "mlruns").resolve().as_uri()
        self.mlflow_uri = uri
        self.params = _flat({k: v for k, v in cfg.model_dump(mode="json").items() if k != "tracking"})

    def mlflow_experiment(self, suffix: str = "") -> str:
        """Id of the MLflow experiment ``experiment + suffix`` (created if missing)."""
        from mlflow.tracking import MlflowClient

        client, name = MlflowClient(self.mlflow_uri), self.experiment + suffix
        exp = client.get_experiment_by_name(name)
        return exp.experiment_id if exp else client.create_experiment(name)


class StudentTracker(UserCallback):
    """Ray Train V2 callback of one student: logs every report of rank 0 (see module docstring).

    Args:
        tracking: the active :class:`Tracking`. name: the student's Ray Train run name (``<method>-seed<s>``).
    """

    def __init__(self, tracking: Tracking, name: str):
        self.backends, self.name = tracking.backends, name
        self.tb_dir = os.path.join(tracking.tensorboard_dir, "students", name) if tracking.tensorboard_dir else None
        self.mlflow_uri, self.mlflow_run = tracking.mlflow_uri, None
        self.wandb = {"project": tracking.experiment, "group": tracking.run_name, "name": name}
        if "mlflow" in self.backends:  # created here so that finish() in the driver can close the same run
            from mlflow.tracking import MlflowClient

            run = MlflowClient(self.mlflow_uri).create_run(
                tracking.mlflow_experiment(), run_name=name, tags={"ddoq.run": tracking.run_name})
            self.mlflow_run = run.info.run_id
        if "wandb" in self.backends:
            import wandb

            self.wandb["id"] = wandb.util.generate_id()
        self._tb = None

    def _log(self, metrics: dict, step: int, prefix: str = "") -> None:
        scalars = {prefix + k: float(v) for k, v in metrics.items()
                   if isinstance(v, int | float) and not isinstance(v, bool) and k != "epoch"}
        if "tensorboard" in self.backends:
            if self._tb is None:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(self.tb_dir)
            for k, v in scalars.items():
                self._tb.add_scalar(k, v, global_step=step)
            self._tb.flush()  # Train V2 has no end-of-run hook for user callbacks: every report is flushed
        if self.mlflow_run:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(self.mlflow_uri)
            for k, v in scalars.items():
                client.log_metric(self.mlflow_run, k.replace("/", "_"), v, step=step)
        if "wandb" in self.backends:
            import wandb

            run = wandb.init(**self.wandb, resume="allow", reinit="create_new")
            run.log(scalars, step=step)

    def after_report(self, run_context, metrics: list[dict], checkpoint) -> None:
        """Train V2 hook (in the controller): ``metrics[0]`` is rank 0's report."""
        if metrics:
            self._log(metrics[0], int(metrics[0].get("epoch") or 0))

    def finish(self, result: dict) -> None:
        """In the driver, after ``fit()``: the final ``top1``, ``train_loss`` and ``wall_s`` under ``final/``, then
        close (MLflow run FINISHED, W&B run finished)."""
        self._log({k: result[k] for k in ("top1", "train_loss", "wall_s") if result.get(k) is not None},
                  int(result.get("epochs") or 0), prefix="final/")
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self.mlflow_run:
            from mlflow.tracking import MlflowClient

            MlflowClient(self.mlflow_uri).set_terminated(self.mlflow_run)
        if "wandb" in self.backends:
            import wandb

            wandb.init(**self.wandb, resume="allow", reinit="create_new").finish()


@contextmanager
def session(cfg: RunConfig, run_dir: str):
    """Activate ``cfg.tracking`` for the students and Tune trials started inside the ``with`` block; yields the
    :class:`Tracking` or None when ``tracking.backends`` is empty.

    Raises:
        ConfigError: a backend's package is missing, or no local place for its files (before any work is done).
    """
    global _active
    t = Tracking(cfg, run_dir) if cfg.tracking.backends else None
    with _lock:
        before, _active = _active, t
    try:
        yield t
    finally:
        with _lock:
            _active = before


def student_callbacks(name: str) -> list[StudentTracker]:
    """The active tracking's callback for the Ray Train run ``name`` (``[]`` when tracking is off)."""
    with _lock:
        t = _active
    return [StudentTracker(t, name)] if t is not None else []


def tune_callbacks(sweep: str) -> list:
    """Ray Tune logger callbacks for the active tracking's backends (``[]`` when off); ``sweep`` names the
    W&B group and is an MLflow tag."""
    with _lock:
        t = _active
    if t is None:
        return []
    out = []
    if "tensorboard" in t.backends:
        from ray.tune.logger import TBXLoggerCallback

        out.append(TBXLoggerCallback())
    if "mlflow" in t.backends:
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        out.append(MLflowLoggerCallback(tracking_uri=t.mlflow_uri, experiment_name=f"{t.experiment}-tune",
                                        tags={"ddoq.run": t.run_name, "ddoq.sweep": sweep}))
    if "wandb" in t.backends:
        from ray.air.integrations.wandb import WandbLoggerCallback

        out.append(WandbLoggerCallback(project=t.experiment, group=sweep))
    return out


def summary_metrics(res: dict) -> dict[str, float]:
    """The run's main numbers from ``results.json``: ``<method>/top1_mean``, ``<method>/top1_std``,
    ``teacher/top1`` and ``<method>/w2_mean`` (mean latent W2 over classes: random, d4m = uniform, ddoq = mass)."""
    out = {}
    for m, acc in (res.get("methods") or {}).items():
        out.update({f"{m}/top1_mean": acc["top1_mean"], f"{m}/top1_std": acc["top1_std"]})
    if (res.get("teacher") or {}).get("top1") is not None:
        out["teacher/top1"] = res["teacher"]["top1"]
    w2 = res.get("w2_per_class") or []
    for m, key in (("random", "w2_random"), ("d4m", "w2_uniform"), ("ddoq", "w2_mass")):
        vals = [r[key] for r in w2 if r.get(key) is not None]
        if vals and len(vals) == len(w2):
            out[f"{m}/w2_mean"] = sum(vals) / len(vals)
    return {k: float(v) for k, v in out.items()}


def log_results(t: Tracking | None, res: dict, run_dir: str) -> None:
    """Log a finished run's results (metrics, params and, with ``log_artifacts``, ``results.json`` and the report
    files present in ``run_dir``) to every backend of ``t`` (None: nothing)."""
    if t is None:
        return
    from .results import results_table

    metrics = summary_metrics(res)
    files = [n for n in ("results.json", "report.html", "report.md") if storage.is_file(storage.join(run_dir, n))]
    if not t.log_artifacts:
        files = []
    if "tensorboard" in t.backends:
        from tensorboardX import SummaryWriter

        with SummaryWriter(os.path.join(t.tensorboard_dir, "run")) as w:
            for k, v in metrics.items():
                w.add_scalar(k, v, global_step=0)
            w.add_text("results", results_table(res), global_step=0)
            w.add_text("files", "\n\n".join(storage.join(run_dir, n) for n in files) or "-", global_step=0)
    with tempfile.TemporaryDirectory() as tmp:  # artifacts are uploaded from local files (the run may be remote)
        local = []
        for n in files:
            Path(tmp, n).write_bytes(storage.read_bytes(storage.join(run_dir, n)))
            local.append(os.path.join(tmp, n))
        if "mlflow" in t.backends:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(t.mlflow_uri)
            run_id = client.create_run(t.mlflow_experiment(), run_name=t.run_name,
                                       tags={"ddoq.run": t.run_name}).info.run_id
            for k, v in t.params.items():
                client.log_param(run_id, k, v)
            for k, v in metrics.items():
                client.log_metric(run_id, k.replace("/", "_"), v)
            for f in local:
                client.log_artifact(run_id, f)
            client.set_terminated(run_id)
        if "wandb" in t.backends:
            import wandb

            run = wandb.init(project=t.experiment, group=t.run_name, name=t.run_name,
                             config=t.params, job_type="results", reinit="create_new")
            run.log(metrics)
            if local:
                art = wandb.Artifact(f"{t.run_name}-results", type="results")
                for f in local:
                    art.add_file(f)
                run.log_artifact(art)
            run.finish()


def _flat(doc: dict, prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 0.001}}`` -> ``{"train.lr": "0.001"}`` (MLflow params are strings of <= 500 chars)."""
    out = {}
    for k, v in doc.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)[:500]
    return out
