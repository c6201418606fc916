"""Config sections that say how a run executes and is observed (metrics stage, Ray, tracking); the stage sections
are in :mod:`ddoq_ray.config`, which re-exports these."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .config_base import Section as _Section


class MetricsConfig(_Section):
    """Stage 5: image-space distribution metrics of each distilled set against the real test split."""

    enabled: bool = True
    features: str = Field(
        "teacher", description="Feature extractor: `teacher` (the run's teacher, penultimate layer) or ARCH:CHECKPOINT "
                               "(any model name + local checkpoint loadable as a teacher)."
    )
    inception: Literal["auto", "off"] = Field(
        "auto", description="auto: also Inception FID via torchmetrics when installed with weights; else skipped."
    )
    k: int = Field(5, gt=0, description="k of the k-NN balls for precision/recall/density/coverage.")
    max_real_per_class: int | None = Field(500, gt=0, description="Real test images per class used (None: all).")


class RayConfig(_Section):
    address: str | None = Field(
        None, description="None: RAY_ADDRESS if set, else a local embedded cluster. 'auto' or ray://... to attach."
    )
    num_cpus: int | None = Field(None, description="Logical CPUs for an embedded local cluster.")
    object_store_memory: int | None = None
    include_dashboard: bool = False
    require_gpu: bool = Field(
        False, description="Encode/decode actors must run on GPUs: wait up to gpu_wait_s for the cluster to have "
                           "one, then fail with an error (never fall back to CPUs). False: GPUs only if present."
    )
    gpu_wait_s: float = Field(
        600.0, ge=0, description="How long require_gpu waits for GPU nodes (an autoscaling group may start at 0)."
    )
    actor_wait_s: float = Field(
        900.0, description="Ray Data wait_for_min_actors_s: an actor pool that cannot start its minimum actors "
                           "(and load their models) within this many seconds fails instead of hanging; <= 0 waits "
                           "forever."
    )


class TrackingConfig(_Section):
    """Experiment tracking, off by default and in no stage fingerprint: fields in ddoq_ray/tracking.py's docstring."""
    backends: list[Literal["tensorboard", "mlflow", "wandb"]] = []
    experiment: str | None = None
    tensorboard_dir: str | None = None
    mlflow_tracking_uri: str | None = None
    log_artifacts: bool = True
