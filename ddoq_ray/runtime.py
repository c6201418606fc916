"""Ray start-up and resource questions shared by the stages (thin; no pipeline logic)."""

from __future__ import annotations

import logging
import os

from .config import RayConfig

log = logging.getLogger("ddoq_ray")


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
        ray.init(address=address, log_to_driver=False)
        return
    kwargs = {"num_cpus": rcfg.num_cpus, "object_store_memory": rcfg.object_store_memory,
              "include_dashboard": rcfg.include_dashboard}
    log.info("starting an embedded local Ray cluster")
    ray.init(address="local", log_to_driver=False, **{k: v for k, v in kwargs.items() if v is not None})


def cluster_gpus() -> int:
    """Number of GPUs in the Ray cluster (0 on CPU-only clusters; stages then never request GPUs)."""
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def cluster_cpus() -> int:
    import ray

    return int(ray.cluster_resources().get("CPU", 1))
