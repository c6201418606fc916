"""The student and sweep sections of the run configuration: ``train:`` (stage 4, students on every method's
set) and ``tune:`` (a Ray Tune sweep over ``train`` fields). Re-exported by :mod:`ddoq_ray.config`, which holds
the rest of the schema and the loader."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator

from .config_base import Section as _Section

WEIGHT_SCHEMES = ("uniform", "mass", "sqrt_mass", "power", "tempered")


class TrainConfig(_Section):
    """Stage 4: students trained on each distilled set, evaluated on the real test split.

    Defaults reproduce the online RDED-style protocol (teacher soft labels on every augmented batch, CutMix,
    per-class mean-1 weights). See README "Students, soft labels and Tune sweeps".
    """

    methods: list[str] = Field(
        ["random", "d4m", "ddoq"], description="Method presets (clustering, weights, images), "
                                               "ddoq_ray.artifacts.method_presets: random, herding, k_center, d4m, "
                                               "ddoq, lloyd_uniform, lloyd_mass, clvq_uniform, clvq_mass, "
                                               "ddoq_nearest, lloyd_nearest."
    )
    protocol: Literal["rded", "sre2l", "dd_ranking", "hard", "ddoq_hard"] | None = Field(
        None, description="Evaluation preset (ddoq_ray.students.protocols): sets the train fields it defines at "
                          "config load; fields written in the config (or --set) win over the preset."
    )
    weight_scheme: Literal["uniform", "mass", "sqrt_mass", "power", "tempered"] = Field(
        "mass", description="Centroid weight of the `mass` methods (ddoq, lloyd_mass, nearest ones; the uniform "
                            "ones are always uniform). power: mass**alpha; tempered: softmax(log(mass) / "
                            "weight_tau) within the class."
    )
    weight_alpha: float = Field(1.0, description="Exponent for `power`: w ∝ mass**alpha.")
    weight_tau: float = Field(1.0, gt=0, description="Temperature for `tempered` (1 = mass, large -> uniform).")
    weight_norm: Literal["class", "batch", "none"] = Field(
        "class", description="class: mean 1 within each class; batch: mean 1 over the set, then every (mixed) batch "
                             "is rescaled to mean 1; none: mean 1 over the whole set."
    )
    label_mode: Literal["online", "precomputed", "hard"] = Field(
        "online", description="online: teacher on every augmented batch (RDED); precomputed: FKD/SRe2L-style "
                              "crop/flip/mix parameters + fp16 teacher logits stored in Parquet and replayed; hard: "
                              "cross-entropy on hard labels (Minimax)."
    )
    seeds: list[int] = [0, 1, 2]
    student: str = Field("convnet3", description="Student architecture: `convnet3` or a timm model name.")
    teacher: str | None = Field(
        None, description="Teacher: checkpoint path / assets: ref, `timm:<name>` or `torchvision:<name>` (library "
                          "pretrained weights: downloaded on first use, or from the library's cache offline), or "
                          "None: train one on the full real train set."
    )
    teacher_arch: str = "resnet56_cifar"
    teacher_epochs: int = Field(15, gt=0, description="Epochs when ddoq-ray trains the teacher itself.")
    teacher_finetune_epochs: int = Field(
        0, ge=0, description="Fine-tune a checkpoint teacher on the run's real train split for this many epochs "
                             "(a teacher matched to the data, e.g. a JPEG copy); 0: use it as given.")
    teacher_finetune_lr: float = Field(1e-4, gt=0, description="AdamW lr of the teacher fine-tuning (cosine).")
    image_size: int = Field(32, gt=0, description="Side (px) students see, for synthetic and real images.")
    epochs: int = Field(300, gt=0)
    batch_size: int = Field(64, gt=0)
    lr: float | None = Field(
        None, gt=0, description="lr; None: SGD 0.01, AdamW the RDED per-architecture default (1e-3 ResNets/"
                                "ConvNets, 2e-3 EfficientNet-B0, 2.5e-3 MobileNet-V2, 1e-4 Swin/ViT)."
    )
    weight_decay: float = Field(0.01, ge=0)
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="adamw, or sgd with `momentum` (Minimax).")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (not published by Minimax: 0.9 [choice]).")
    schedule: Literal["cosine", "half_cosine", "step"] = Field(
        "cosine", description="cosine: per step to 0; half_cosine: RDED's 0.5(1+cos(pi*epoch/epochs/2)), ends at "
                              "lr/2; step: x0.2 at 2/3 and 5/6 of the epochs (Minimax).")
    reported: Literal["final", "best_last_20pct", "best"] = Field(
        "final", description="The top-1 reported: the final epoch's; best_last_20pct: RDED's best of the test "
                             "evaluations every `eval_every` epochs in the last 20 % (and the final one); best: "
                             "DD-Ranking's best of the evaluations every `eval_every` epochs.")
    eval_every: int = Field(10, gt=0, description="Epochs between test evaluations (reported=best_last_20pct).")
    temperature: float = Field(4.0, gt=0, description="KL temperature T for soft labels.")
    mix: Literal["cutmix", "mixup"] = Field("cutmix", description="Batch mixing applied with prob. cutmix_prob.")
    cutmix_prob: float = Field(0.5, ge=0, le=1, description="Probability that a batch is mixed (CutMix or Mixup).")
    cutmix_beta: float = Field(1.0, gt=0)
    mixup_alpha: float = Field(0.8, gt=0, description="Mixup: lam ~ Beta(alpha, alpha).")
    min_crop_scale: float = Field(0.5, gt=0, le=1, description="RandomResizedCrop lower scale bound.")
    eval_batch_size: int = Field(500, gt=0)
    num_workers: int = Field(1, ge=0, description="Ray Train workers per student (0 = local mode in driver).")
    cpus_per_worker: float = Field(
        1.0, gt=0, description="CPUs per Ray Train worker (= torch threads); 2: one student uses 2 cores."
    )
    use_gpu: Literal["auto", True, False] = "auto"
    concurrent_students: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        "auto", description="Students trained at the same time (each its own TorchTrainer). auto: as many as the "
                            "cluster's CPUs (and GPUs) hold at num_workers x cpus_per_worker each; 1: in sequence."
    )
    checkpoint_every: int = Field(50, gt=0, description="Epochs between Ray Train checkpoints.")
    max_failures: int = Field(2, ge=0, description="Ray Train FailureConfig(max_failures): worker restarts.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Student/teacher autocast. auto: bf16 on CPUs with AVX512-BF16/AMX, fp16 on GPU."
    )

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: list[str]) -> list[str]:
        from .artifacts.method_presets import check_method

        return [check_method(m) for m in v]

    def resolved_lr(self) -> float:
        """``lr`` if set, else SGD's 0.01 (Minimax) or AdamW's per-architecture default for ``student``
        (:func:`default_lr`)."""
        from .students.defaults import default_lr

        if self.lr is not None:
            return self.lr
        return 0.01 if self.optimizer == "sgd" else default_lr(self.student)


class TuneConfig(_Section):
    """``ddoq-ray tune``: a Ray Tune sweep over ``train`` fields on one distilled set (see ddoq_ray/tune/).

    ``search_space`` maps a ``train`` field to a constant or a one-key sampler mapping, e.g.
    ``lr: {loguniform: [1.0e-4, 1.0e-2]}``, ``weight_scheme: {choice: [uniform, mass, sqrt_mass]}``,
    ``epochs: {grid: [50, 100]}``. Samplers: uniform, loguniform, quniform, qloguniform, randint, lograndint,
    qrandint, randn (args as in ``ray.tune``), choice (a list), grid (``tune.grid_search``).
    """

    method: str = Field("ddoq", description="Which method's set the students train on (a train.methods preset).")
    search_space: dict[str, Any] = Field(default_factory=dict)
    num_samples: int = Field(8, ge=1, description="Trials (per grid point when `grid` is used).")
    metric: Literal["val_top1"] = "val_top1"
    scheduler: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(20, ge=1, description="ASHA: epochs every trial runs before it can be stopped.")
    reduction_factor: int = Field(3, ge=2)
    eval_every: int = Field(10, ge=1, description="Epochs between validation reports (ASHA rungs use epochs).")
    val_split: Literal["train_holdout", "test"] = Field(
        "train_holdout", description="train_holdout: val_per_class real train images per class (preferring ones "
                                     "the encode stage did not see); test: the test split (optimistic, warned)."
    )
    val_per_class: int = Field(50, ge=1)
    report_test: bool = Field(True, description="Also report test top-1 of every trial that runs to the end.")
    cpus_per_trial: float = Field(1.0, gt=0, description="CPUs (= torch threads) per trial.")
    gpus_per_trial: float = Field(0.0, ge=0, description="Used only when the cluster has GPUs.")
    max_concurrent_trials: int | None = Field(None, ge=1, description="None: cluster CPUs (GPUs) // per trial.")
    trainer: Literal["function", "torch_trainer"] = Field(
        "function", description="function: the loop as a Tune function trainable (single node; avoids ray#54305 "
                                "placement-group leaks); torch_trainer: TorchTrainer per trial + TuneReportCallback."
    )
    seed: int = Field(0, description="Student seed in every trial; also seeds the search algorithm.")
    time_budget_s: float | None = Field(None, gt=0)

    @field_validator("method")
    @classmethod
    def _method(cls, v: str) -> str:
        from .artifacts.method_presets import check_method

        return check_method(v)

    @field_validator("search_space")
    @classmethod
    def _space(cls, v: dict) -> dict:
        from .samplers import check_space

        def check_value(key: str, val: Any) -> None:
            try:
                TrainConfig.model_validate({key: val})
            except ValidationError as e:
                raise ValueError(e.errors()[0]["msg"]) from None

        check_space(v, TrainConfig.model_fields, check_value)
        return v
