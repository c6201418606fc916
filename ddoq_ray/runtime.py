"""Ray start-up and resource questions shared by the stages (thin; no pipeline logic).

- :func:`init_ray`: attach to a cluster (``ray.address`` / ``RAY_ADDRESS``) or start an embedded local one.
- :func:`actor_device`: where a stage's actors run. GPUs are requested only where the cluster has them; with
  ``ray.require_gpu`` a missing GPU is an error after ``ray.gpu_wait_s`` (autoscaling clusters get that long to
  add a GPU node), never a silent CPU fallback and never a hang.
- :func:`configure_data`: Ray Data settings that must be in place *before* a Dataset is built (the Dataset
  captures the ``DataContext`` when it is created).
- :func:`set_verbose`: the CLI's ``--verbose``. Quiet (the default): Ray's own INFO logs and Ray Data's
  per-operator progress are off on the console (Ray Data still writes everything to the session's
  ``logs/ray-data/ray-data.log``), warnings are kept; on a terminal Ray Data shows one global progress bar with an
  ETA, in a log file none (its non-terminal progress is a multi-line block every few seconds).

Fault tolerance comes from Ray's defaults, which ddoq-ray keeps (Ray 2.60): Ray Data actor pools run with
``max_restarts=-1`` and ``max_task_retries=-1`` (an actor lost with its node is restarted elsewhere and its
in-flight batches are re-run), Ray Data tasks and the quantize tasks retry system failures (``max_retries=3``).
Passing ``max_restarts``/``max_task_retries`` to ``map_batches`` is only possible through the deprecated
``**ray_remote_args`` in 2.60, so the stages leave them at these defaults.
"""

from __future__ import annotations

import logging
import os
import time

from .config import RayConfig
from .errors import DdoqError

log = logging.getLogger("ddoq_ray")
_verbose = False  # set by the CLI's --verbose (set_verbose); quiet by default, also for library callers


def set_verbose(verbose: bool) -> None:
    """``True``: Ray's INFO logs and Ray Data's per-operator progress on the console (as Ray's defaults);
    ``False`` (default): only warnings from Ray and one Ray Data progress bar on a terminal."""
    global _verbose
    _verbose = bool(verbose)


class GPUUnavailableError(DdoqError, RuntimeError):
    """The config requires GPUs (``ray.require_gpu``) and the cluster supplied none within ``ray.gpu_wait_s``."""


def init_ray(rcfg: RayConfig) -> None:
    """Attach to a cluster or start an embedded local one.

    ``address`` set (or ``RAY_ADDRESS`` in the environment, as under ``ray job submit``) attaches; otherwise a
    local cluster is started with ``address="local"`` so a stray ``ray start`` cluster on the machine is never
    joined by accident (see README, "Ray").
    """
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = rcfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("attaching to Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=False, logging_level=_ray_log_level())
        return
    kwargs = {"num_cpus": rcfg.num_cpus, "object_store_memory": rcfg.object_store_memory,
              "include_dashboard": rcfg.include_dashboard}
    log.info("starting an embedded local Ray cluster")
    ray.init(address="local", log_to_driver=False, logging_level=_ray_log_level(),
             **{k: v for k, v in kwargs.items() if v is not None})


def _ray_log_level() -> int:
    # ray.init(logging_level=...) sets the driver's "ray" logger ("Started a local Ray instance", ...).
    return logging.INFO if _verbose else logging.WARNING


def cluster_gpus() -> int:
    """Number of GPUs in the Ray cluster (0 on CPU-only clusters; stages then never request GPUs)."""
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def cluster_cpus() -> int:
    import ray

    return int(ray.cluster_resources().get("CPU", 1))


def wait_for_gpus(rcfg: RayConfig, stage: str, poll_s: float = 2.0) -> int:
    """Wait up to ``rcfg.gpu_wait_s`` for the cluster to show a GPU; return the GPU count.

    On an autoscaling cluster whose GPU group scales from zero the wait asks the autoscaler for one GPU bundle
    (``ray.autoscaler.sdk.request_resources``), so a GPU node is launched although no actor asked yet.

    Raises:
        GPUUnavailableError: no GPU after the timeout; the message names the config keys.
    """
    n = cluster_gpus()
    if n:
        return n
    log.info("%s: ray.require_gpu is set and the cluster has no GPU yet; waiting up to %.0f s (ray.gpu_wait_s)",
             stage, rcfg.gpu_wait_s)
    deadline = time.monotonic() + rcfg.gpu_wait_s
    _request_gpu(1)
    try:
        while time.monotonic() < deadline:
            time.sleep(max(0.0, min(poll_s, deadline - time.monotonic())))
            n = cluster_gpus()
            if n:
                return n
    finally:
        _request_gpu(0)
    import ray

    have = {k: v for k, v in ray.cluster_resources().items() if k in ("CPU", "GPU", "memory") or "accelerator" in k}
    raise GPUUnavailableError(
        f"{stage}: the config requires GPUs (ray.require_gpu: true) but the Ray cluster has none after waiting "
        f"{rcfg.gpu_wait_s:g} s (ray.gpu_wait_s); cluster resources: {have}. Add a GPU worker group "
        "(cluster/*.yaml), raise ray.gpu_wait_s if GPU nodes take longer to start, or set ray.require_gpu=false "
        "to run on CPUs.")


def _request_gpu(n: int) -> None:
    """Ask the autoscaler for ``n`` GPU bundles (0 clears the request); a no-op where no autoscaler runs."""
    try:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=[{"GPU": 1}] * n)
    except Exception as e:  # local clusters without an autoscaler, older GCS: the wait alone still applies
        log.debug("request_resources(GPU x %d) failed: %s", n, e)


def actor_device(rcfg: RayConfig, gpus_per_actor: float, stage: str) -> str:
    """``"cuda"`` when the stage's actors should request GPUs, else ``"cpu"``.

    GPUs are used when the cluster has them and ``gpus_per_actor > 0``. With ``ray.require_gpu`` the stage
    waits for GPUs (:func:`wait_for_gpus`) and fails if none appear, instead of falling back to CPUs.
    """
    if rcfg.require_gpu:
        if gpus_per_actor <= 0:
            raise GPUUnavailableError(f"{stage}: ray.require_gpu is true but {stage}.num_gpus_per_actor is "
                                      f"{gpus_per_actor}; give the actors a GPU share (e.g. 1 or 0.5)")
        wait_for_gpus(rcfg, stage)
        return "cuda"
    return "cuda" if gpus_per_actor > 0 and cluster_gpus() else "cpu"


def configure_data(rcfg: RayConfig) -> None:
    """Process-wide Ray Data settings; call before building a Dataset (it captures the context on creation).

    ``wait_for_min_actors_s``: an actor pool whose minimum actors cannot start (no node can fit them, e.g. GPU
    actors on a CPU-only cluster) raises ``GetTimeoutError`` after ``ray.actor_wait_s`` instead of hanging.
    """
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.wait_for_min_actors_s = rcfg.actor_wait_s if rcfg.actor_wait_s > 0 else -1
    ctx.enable_operator_progress_bars = _verbose
    _ray_data_console(logging.INFO if _verbose else logging.WARNING)


class _DropProgressHint(logging.Filter):
    """Ray Data warns once that operator progress bars are off and how to turn them on: here that is --verbose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Progress bars for operators disabled")


def _ray_data_console(level: int) -> None:
    """Set the level of the ``ray.data`` logger's console handler (Ray Data's logging config: a file handler into
    the session's ray-data.log at DEBUG, a console handler at INFO; ray/data/_internal/logging.py). Its
    execution plans, "execution finished" lines and, off a terminal, its progress blocks are INFO."""
    for h in logging.getLogger("ray.data").handlers:
        if isinstance(h, logging.StreamHandler):
            h.setLevel(level)
            if not any(isinstance(f, _DropProgressHint) for f in h.filters):
                h.addFilter(_DropProgressHint())
