"""Typed run configuration, loaded from YAML with ``--set key=value`` overrides.

Every stage reads only its own section; :func:`stage_fingerprint` hashes a stage's section together with the
fingerprints of the stages it depends on, so a re-run skips a stage exactly when nothing upstream changed.
Unknown keys are an error that names the key (pydantic ``extra="forbid"``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file and field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Where the labelled images come from and how they are prepared for the VAE."""

    train: str = Field(description="Train split: HF-style Parquet file/dir (image bytes + label) or ImageFolder root.")
    test: str | None = Field(None, description="Test split, same formats; students are evaluated on it.")
    format: Literal["auto", "parquet", "imagefolder"] = "auto"
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
    min_actors: int = Field(1, ge=1)
    max_actors: int = Field(1, ge=1)
    num_cpus_per_actor: float = Field(1.0, gt=0)
    num_gpus_per_actor: float = Field(1.0, ge=0, description="Used only when the cluster has GPUs.")
    num_threads: int | None = Field(None, gt=0, description="torch threads per CPU actor; None: num_cpus_per_actor.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: fp16 on GPU, bf16 autocast on CPUs with AVX-512 BF16/AMX, else fp32."
    )
    seed: int = 0


class QuantizeConfig(_Section):
    """Stage 2: per-class k-means (faiss), exact cell masses and latent W2."""

    ipc: int = Field(10, gt=0, description="Images per class = K centroids per class.")
    niter: int = Field(50, gt=0)
    nredo: int = Field(1, gt=0)
    seed: int = 0
    num_cpus: float = Field(1.0, gt=0, description="CPUs per class task (= faiss threads).")
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
        return self


class TrainConfig(_Section):
    """Stage 4: students trained on each distilled set, evaluated on the real test split."""

    methods: list[Literal["random", "d4m", "ddoq"]] = ["random", "d4m", "ddoq"]
    weight_scheme: Literal["uniform", "mass", "sqrt_mass", "power"] = Field(
        "mass", description="Centroid weight used by the `ddoq` method (d4m is always uniform)."
    )
    weight_alpha: float = Field(1.0, description="Exponent for `power`: w ∝ mass**alpha.")
    seeds: list[int] = [0, 1, 2]
    student: str = Field("convnet3", description="Student architecture: `convnet3` or a timm model name.")
    teacher: str | None = Field(
        None, description="Teacher checkpoint (path or assets: ref). None: train one on the full real train set."
    )
    teacher_arch: str = "resnet56_cifar"
    teacher_epochs: int = Field(15, gt=0, description="Epochs when ddoq-ray trains the teacher itself.")
    image_size: int = Field(32, gt=0, description="Side (px) students see, for synthetic and real images.")
    epochs: int = Field(300, gt=0)
    batch_size: int = Field(64, gt=0)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    temperature: float = Field(4.0, gt=0, description="KL temperature T for soft labels.")
    cutmix_prob: float = Field(0.5, ge=0, le=1)
    cutmix_beta: float = Field(1.0, gt=0)
    min_crop_scale: float = Field(0.5, gt=0, le=1, description="RandomResizedCrop lower scale bound.")
    eval_batch_size: int = Field(500, gt=0)
    num_workers: int = Field(1, ge=0, description="Ray Train workers per student (0 = local mode in driver).")
    cpus_per_worker: float = Field(
        1.0, gt=0, description="CPUs per Ray Train worker (= torch threads); 2: one student uses 2 cores."
    )
    use_gpu: Literal["auto", True, False] = "auto"
    checkpoint_every: int = Field(50, gt=0, description="Epochs between Ray Train checkpoints.")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Student/teacher autocast. auto: bf16 on CPUs with AVX512-BF16/AMX, fp16 on GPU."
    )


class RayConfig(_Section):
    address: str | None = Field(
        None, description="None: RAY_ADDRESS if set, else a local embedded cluster. 'auto' or ray://... to attach."
    )
    num_cpus: int | None = Field(None, description="Logical CPUs for an embedded local cluster.")
    object_store_memory: int | None = None
    include_dashboard: bool = False


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
    ray: RayConfig = RayConfig()

    @field_validator("output_dir")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("output_dir must not be empty")
        return v


STAGES = ("encode", "quantize", "decode", "train")
# Which config sections each stage's output depends on (its own and its inputs').
STAGE_INPUTS: dict[str, tuple[str, ...]] = {
    "encode": ("data", "encode"),
    "quantize": ("quantize",),
    "decode": ("decode",),
    "train": ("train",),
}
STAGE_UPSTREAM: dict[str, str | None] = {"encode": None, "quantize": "encode", "decode": "quantize", "train": "decode"}


def _parse_value(raw: str) -> Any:
    """`--set` values are YAML scalars/lists: `3`, `true`, `[0, 1]`, `null`, `runs/x`."""
    return yaml.safe_load(raw)


def apply_overrides(doc: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` strings to a nested dict (in place) and return it.

    Raises:
        ConfigError: an override without ``=``.
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set train.epochs=10")
        key, raw = item.split("=", 1)
        node = doc
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {p!r} is not a section")
        node[parts[-1]] = _parse_value(raw)
    return doc


def _format_errors(source: str, err: ValidationError) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        unknown = e["type"] == "extra_forbidden"
        msg = "unknown key (check spelling; see configs/ for valid keys)" if unknown else e["msg"]
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML run config and apply ``--set`` overrides.

    Raises:
        ConfigError: missing file, bad YAML, unknown keys or wrong types (message names file and field).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (see configs/ for examples)")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections (data, encode, ...)")
    apply_overrides(doc, overrides or [])
    try:
        return RunConfig.model_validate(doc)
    except ValidationError as e:
        raise ConfigError(_format_errors(str(path), e)) from e


def dump_config(cfg: RunConfig) -> str:
    """The resolved config as YAML (every default spelled out), stored in the run directory."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def stage_fingerprint(cfg: RunConfig, stage: str) -> str:
    """sha256 (hex, 16 chars) of the config sections a stage's output depends on, chained with its upstream."""
    doc = {s: getattr(cfg, s).model_dump(mode="json") for s in STAGE_INPUTS[stage]}
    up = STAGE_UPSTREAM[stage]
    doc["upstream"] = stage_fingerprint(cfg, up) if up else None
    doc["seed"] = cfg.seed
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]
