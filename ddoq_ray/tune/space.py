"""YAML search space -> Ray Tune samplers, and how many trials fit the cluster at once."""

from __future__ import annotations

import logging
from typing import Any

from ..config import TrainConfig, TuneConfig

log = logging.getLogger("ddoq_ray")


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
