"""Typed run configuration, loaded from YAML with ``--set key=value`` overrides.

The schema only (the ``train:`` and ``tune:`` sections in :mod:`ddoq_ray.config_train`, the runtime ones in
:mod:`ddoq_ray.config_runtime`): which stage reads which fields, and the fingerprints that key every stage's
output, live in :mod:`ddoq_ray.stages`. Unknown keys are an error that names the key (pydantic ``extra="forbid"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from .config_base import Section as _Section
from .config_runtime import MetricsConfig, RayConfig, TrackingConfig
from .config_train import WEIGHT_SCHEMES, TrainConfig, TuneConfig
from .errors import ConfigError
from .overrides import apply_overrides, format_errors, read_doc

# ConfigError lives in ddoq_ray.errors (leaf modules raise it); the runtime sections in config_runtime.
__all__ = ["WEIGHT_SCHEMES", "ConfigError", "MetricsConfig", "RayConfig", "TrackingConfig", "TrainConfig", "TuneConfig",
           "apply_overrides", "read_doc"]


class DataConfig(_Section):
    """Where the labelled images come from and how they are prepared for the VAE."""

    train: str = Field(description="Train split: HF-style Parquet file/dir (image bytes + label) or ImageFolder root.")
    test: str | None = Field(None, description="Test split, same formats; students are evaluated on it.")
    format: Literal["auto", "parquet", "imagefolder", "webdataset", "cifar"] = Field(
        "auto", description="auto detects each; webdataset: .tar shards; cifar: CIFAR-10/100 python batches "
                            "(ddoq_ray.formats). Any of them also behind hf://datasets/<owner>/<name>?split=..."
    )
    classes: str | list[str] | None = Field(
        None, description="classes.json path or list of names (index = label). ImageFolder: sorted folder names."
    )
    image_column: str = "image"
    label_column: str = "label"
    id_column: str | None = Field(None, description="Unique row id column; default: `filename`, else a content hash.")
    image_size: int = Field(64, gt=0, description="Square side (px) images are resized to before encoding.")
    class_subset: list[int] | None = Field(None, description="Keep only these labels (smoke runs).")
    max_per_class: int | None = Field(None, gt=0, description="Keep the first N train images of each class.")
    max_test_per_class: int | None = Field(None, gt=0)


class EncodeConfig(_Section):
    """Stage 1: VAE encoder as a Ray Data actor pool."""

    vae: str = Field("madebyollin/taesd", description="diffusers AutoencoderTiny/AutoencoderKL: hub id or path.")
    vae_kind: Literal["auto", "tiny", "kl"] = "auto"
    latent: Literal["mean", "sample"] = "mean"
    batch_size: int = Field(128, gt=0)
    batches_per_task: int = Field(
        8, gt=0, description="Encoder batches per Ray Data task (rows per task = batch_size x this; the VAE still "
                             "sees batch_size). Fewer tasks: less scheduling and driver bookkeeping (ray-project/ray"
                             "#66016); 8 encoded the ImageNet-shaped stand-in ~1.2x faster than 1. Not fingerprinted.")
    min_actors: int = Field(1, ge=1)
    max_actors: int = Field(1, ge=1)
    num_cpus_per_actor: float = Field(1.0, gt=0)
    num_gpus_per_actor: float = Field(1.0, ge=0, description="Used only when the cluster has GPUs.")
    num_threads: int | None = Field(None, gt=0, description="torch threads per CPU actor; None: num_cpus_per_actor.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: fp16 on GPU, bf16 autocast on CPUs with AVX-512 BF16/AMX, else fp32."
    )
    seed: int = 0
    shard_rows: int = Field(
        10_000, gt=0, description="Rows per encode shard: each shard is marked done as its last rows are written, so "
                                  "a killed run resumes at the unfinished shards and redoes at most their rows. All "
                                  "shards stream through one Ray Data pipeline (actors start and load the model "
                                  "once per run), so small shards cost nothing extra. Not part of the fingerprint."
    )


class QuantizeConfig(_Section):
    """Stage 2: per-class clustering (:mod:`ddoq_ray.clustering`), exact cell masses and latent W2.

    The stage runs every algorithm in ``algorithms`` and every one a configured method needs
    (:func:`ddoq_ray.artifacts.method_presets.needed_algorithms`), each followed by the exact assignment pass.
    """

    algorithms: list[Literal["lloyd", "minibatch", "clvq"]] = Field(
        ["lloyd"], description="Clusterings computed even if no method trains on them (for the W2 decomposition); "
                               "lloyd: faiss k-means (seed + label per class); minibatch: D4M's MiniBatchKMeans "
                               "partial_fit over mini-batches of km_expand*IPC latents in stored order, "
                               "random_state = seed for every class (D4M: 0); clvq: one streaming pass, eta=1/count."
    )
    km_expand: int = Field(1, ge=1, description="minibatch: mini-batch size = km_expand * IPC (D4M ImageNet: 1).")
    init: Literal["random", "k-means++"] = Field(
        "random", description="lloyd seeding: random (faiss, the pre-issue-14 stage exactly) or k-means++ "
                              "(scikit-learn kmeans_plusplus, then faiss iterations)."
    )
    n_init: int = Field(1, ge=1, description="lloyd restarts; the lowest exact inertia is kept (restart 0 = seed).")
    ipc: int = Field(10, gt=0, description="Images per class = K centroids per class.")
    niter: int = Field(50, gt=0)
    nredo: int = Field(1, gt=0)
    seed: int = 0
    num_cpus: float = Field(1.0, gt=0, description="CPUs per class task (= faiss threads).")
    num_gpus: float = Field(
        0.25, ge=0, le=1, description="GPU share per class task, used only when the cluster has GPUs and the "
                                      "workers' faiss has GPU support (faiss-gpu): k-means then runs on the GPU. "
                                      "0 = always CPU. Not in the stage fingerprint (a resource setting)."
    )
    small_class: Literal["error", "shrink"] = Field(
        "error", description="Class with fewer latents than IPC: fail, or use K = class size (recorded)."
    )


class DecodeConfig(_Section):
    """Stage 3: centroids -> images (``vae``: VAE decoder only; ``sd_img2img`` / ``dit``: noise each centroid to
    ``strength``, denoise it conditioned on its class, then VAE-decode; see README "Decode modes")."""

    mode: Literal["vae", "sd_img2img", "dit"] = "vae"
    model: str | None = Field(
        None, description="sd_img2img: SD-1.x/2.x pipeline folder or hub id; dit: diffusers DiT pipeline. Its vae/ "
                          "decodes; encode.vae must be this id or one of compatible_vaes (same latent space)."
    )
    compatible_vaes: list[str] = Field(
        [], description="encode.vae ids whose latents this model accepts besides its own (e.g. sd-vae-ft-ema/-mse "
                        "for DiT: they share the SD encoder)."
    )
    prompt_template: str = Field("a photo of a {name}", description="sd_img2img prompt; {name} = class name.")
    negative_prompt: str = "cartoon, anime, painting"
    strength: float = Field(0.7, description="Noise level in [0, 1]: int(steps*strength) steps run; 0 = VAE decode.")
    guidance_scale: float = Field(8.0, description="Classifier-free guidance (>= 0; <= 1 disables CFG).")
    guidance_channels: Literal["all", "first3"] = Field(
        "all", description="dit: latent channels CFG guides. all: every channel (standard CFG, diffusers DiTPipeline); "
                           "first3: channels 0-2 only, the 4th keeps the conditional prediction, as the original DiT "
                           "sampler's forward_with_cfg (and the Minimax baseline) does."
    )
    allow_numeric_prompts: bool = Field(
        False, description="sd_img2img: allow prompts from bare label numbers ('a photo of a 3') when the data has "
                           "no class names; off: such a run is refused until data.classes names the classes."
    )
    num_inference_steps: int = Field(50, gt=0, description="Scheduler steps for strength 1.")
    scheduler: str | None = Field(None, description="diffusers scheduler class name (e.g. DDIMScheduler); "
                                                    "None: the checkpoint's own.")
    class_ids: list[int] | str | None = Field(
        None, description="Run label -> model label id (dit): a list, or a JSON file (list, or dict keyed by label "
                          "or class name). None: ImageNet WNID class names -> ImageNet index, else identity."
    )
    images_per_centroid: int = Field(1, ge=1, description="Images per centroid (fresh noise each); weight = mass/n.")
    seed: int = Field(0, description="Run seed; each image's seed is a hash of (seed, label, k, copy).")
    batch_size: int = Field(64, gt=0)
    output_size: int | None = Field(None, gt=0, description="Resize decoded images to this side (px); None keeps.")
    num_actors: int = Field(1, ge=1)
    num_cpus_per_actor: float = Field(1.0, gt=0)
    num_gpus_per_actor: float = Field(1.0, ge=0, description="Used only when the cluster has GPUs (then fp16).")

    @field_validator("strength")
    @classmethod
    def _strength(cls, v: float) -> float:
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"strength must be in [0, 1] (0 = plain VAE decode, 1 = start from pure noise); got {v}")
        return v

    @field_validator("guidance_scale")
    @classmethod
    def _guidance(cls, v: float) -> float:
        if v < 0:
            raise ValueError(f"guidance_scale must be >= 0 (values <= 1 turn classifier-free guidance off); got {v}")
        return v

    @field_validator("prompt_template")
    @classmethod
    def _template(cls, v: str) -> str:
        try:
            v.format(name="x")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"prompt_template {v!r} may only use the placeholder {{name}} ({e})") from e
        return v

    @field_validator("class_ids")
    @classmethod
    def _class_ids(cls, v):
        if isinstance(v, list) and any(i < 0 for i in v):
            raise ValueError("class_ids must be non-negative model label ids")
        return v

    @model_validator(mode="after")
    def _needs_model(self):
        if self.mode != "vae" and not self.model:
            raise ValueError(f"decode.mode={self.mode!r} needs decode.model (a pipeline hub id or folder)")
        if self.guidance_channels != "all" and self.mode != "dit":
            raise ValueError(f"decode.guidance_channels={self.guidance_channels!r} applies to mode dit only "
                             f"(mode {self.mode!r} guides every channel); remove it or set it to 'all'")
        return self


class RunConfig(_Section):
    """A whole DDOQ run: data -> encode -> quantize -> decode -> train."""

    name: str = "ddoq"
    output_dir: str = Field("runs/ddoq", description="Run directory (resolved config, artifacts, results.json).")
    assets_root: str | None = Field(
        None, description="Folder for `assets:` refs and local model copies; default $DDOQ_ASSETS or ../shared."
    )
    seed: int = 0
    data: DataConfig
    encode: EncodeConfig = EncodeConfig()
    quantize: QuantizeConfig = QuantizeConfig()
    decode: DecodeConfig = DecodeConfig()
    train: TrainConfig = TrainConfig()
    metrics: MetricsConfig = MetricsConfig()
    ray: RayConfig = RayConfig()
    tune: TuneConfig | None = None
    tracking: TrackingConfig = TrackingConfig()

    @field_validator("output_dir")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("output_dir must not be empty")
        return v

    @model_validator(mode="before")
    @classmethod
    def _protocol(cls, doc: Any) -> Any:
        from .students.protocols import apply_protocol

        return apply_protocol(doc, QuantizeConfig.model_fields["ipc"].default) if isinstance(doc, dict) else doc


def validate_doc(doc: dict, source: str) -> RunConfig:
    """Validate a config document into a :class:`RunConfig`.

    Raises:
        ConfigError: unknown keys or wrong types (the message names ``source`` and the field).
    """
    try:
        return RunConfig.model_validate(doc)
    except ValidationError as e:
        raise ConfigError(format_errors(source, e)) from e


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML run config (a local path, or a URI such as a run directory's ``s3://.../config.yaml``) and
    apply ``--set`` overrides. A list ``quantize.ipc`` (several IPCs in one run) is read by
    :func:`ddoq_ray.ipcs.load_configs` instead.

    Raises:
        ConfigError: missing file, bad YAML, unknown keys or wrong types (message names file and field).
    """
    doc = read_doc(path, overrides)
    if isinstance((doc.get("quantize") or {}).get("ipc"), list):
        raise ConfigError(f"{path}: quantize.ipc is a list (several IPCs in one run): `ddoq-ray run` and the stage "
                          "commands run one run per IPC sharing the encode stage; this command needs one IPC "
                          "(--set quantize.ipc=10)")
    return validate_doc(doc, str(path))


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML (every default spelled out), stored in the run directory."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
