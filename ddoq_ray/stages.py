"""The stage registry: each stage's run function, the stages it reads, and what its output depends on.

The pipeline walks :data:`REGISTRY` (no if/elif chain); :func:`fingerprint` hashes everything that determines a
stage's output — the config fields it reads (:attr:`Stage.inputs`) and the fingerprints of the stages it reads —
so a committed stage is reused exactly when nothing it depends on changed, and every cache inside a stage's
attempt folder inherits that key. The graph (``->`` = "is read by")::

    encode -> quantize -> decode -> train, metrics, matrix
    encode, quantize -> subsets ---> train, metrics, matrix
              teacher  ----------> train, metrics, matrix

The subsets stage always reads quantize (the nearest_real methods need its centroids); the random subsets it
draws do not depend on quantize, so they are the same images whatever the clustering.

Each run function has the signature ``run(run: Run, out: str, summary: dict) -> None`` (``out`` is the attempt
folder, ``summary`` goes into ``_SUCCESS.json``); they are imported lazily so that ``import ddoq_ray.stages``
loads no torch, Ray or faiss.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field

from . import storage
from .artifacts.method_presets import decoded_algorithms, needed_algorithms, subsets_methods
from .config import RunConfig


def _section(name: str, exclude: set[str] | None = None) -> Callable[[RunConfig], dict]:
    return lambda cfg: {name: getattr(cfg, name).model_dump(mode="json", exclude=exclude)}


def _fields(name: str, keys: tuple[str, ...]) -> Callable[[RunConfig], dict]:
    return lambda cfg: {name: {k: getattr(getattr(cfg, name), k) for k in keys}}


# Data fields that only the test split reads (the encode stage and the random subsets never see them).
TEST_FIELDS = ("test", "max_test_per_class")
# Train fields that decide which teacher the run has and how it is evaluated.
TEACHER_FIELDS = ("teacher", "teacher_arch", "teacher_epochs", "teacher_finetune_epochs", "teacher_finetune_lr",
                  "image_size", "eval_batch_size", "precision")


def _checkpoint_stat(cfg: RunConfig) -> dict:
    """Size and modification time of a teacher checkpoint file, so that a replaced file is a new teacher."""
    from .assets import assets_root, is_named_teacher, resolve

    ref = cfg.train.teacher
    if not ref or is_named_teacher(ref):
        return {}
    try:
        fs, path = storage.resolve(resolve(ref, assets_root(cfg.assets_root), "data"))
        info = fs.get_file_info(path)
        return {"teacher_file": [info.size, info.mtime_ns]}
    except Exception:  # noqa: BLE001 - a missing checkpoint fails in the stage itself, with its own message
        return {}


def _encode_inputs(cfg: RunConfig) -> dict:
    data = cfg.data.model_dump(mode="json", exclude=set(TEST_FIELDS))
    return {"data": data, "encode": cfg.encode.model_dump(mode="json", exclude={"shard_rows", "batches_per_task"})}


def _quantize_inputs(cfg: RunConfig) -> dict:
    # num_gpus decides where k-means runs, not what it returns (the CPU path is bit-identical to before).
    return {"quantize": cfg.quantize.model_dump(mode="json", exclude={"num_gpus"}),
            "algorithms": needed_algorithms(cfg)}


def _subsets_inputs(cfg: RunConfig) -> dict:
    return {"ipc": cfg.quantize.ipc, "small_class": cfg.quantize.small_class, "seeds": sorted(set(cfg.train.seeds)),
            "selections": subsets_methods(cfg)}


def _decode_inputs(cfg: RunConfig) -> dict:
    return {**_section("decode", {"allow_numeric_prompts"})(cfg), "algorithms": decoded_algorithms(cfg)}


def _teacher_inputs(cfg: RunConfig) -> dict:
    # data.image_size is the VAE's input size: the teacher sees train.image_size.
    return {"data": cfg.data.model_dump(mode="json", exclude={"image_size"}), **_fields("train", TEACHER_FIELDS)(cfg),
            **_checkpoint_stat(cfg)}


def _train_inputs(cfg: RunConfig) -> dict:
    return {"train": cfg.train.model_dump(mode="json"), "data": {k: getattr(cfg.data, k) for k in TEST_FIELDS}}


@dataclass(frozen=True)
class Stage:
    """One stage: where its run function lives, which stages it reads, which config it depends on."""

    name: str
    runner: str  # "module:function", imported when the stage runs
    upstream: tuple[str, ...]
    inputs: Callable[[RunConfig], dict]
    resumable: bool = False  # keep an interrupted attempt and continue it (same fingerprint)
    default: bool = True  # part of `ddoq-ray run`
    doc: str = ""
    needs: tuple[str, ...] = field(default=())  # what the run must have, checked before any work ("test")

    def run_function(self) -> Callable:
        module, _, fn = self.runner.partition(":")
        return getattr(importlib.import_module(f"ddoq_ray.{module}"), fn)


REGISTRY: dict[str, Stage] = {s.name: s for s in (
    Stage("encode", "encode:encode_stage", (), _encode_inputs, resumable=True,
          doc="VAE-encode every train image into a latent (Ray Data actor pool)"),
    Stage("quantize", "quantize:quantize_stage", ("encode",), _quantize_inputs,
          doc="per-class clustering (every algorithm the methods need): centroids, cell masses, W2"),
    Stage("subsets", "subsets:subsets_stage", ("encode", "quantize"), _subsets_inputs,
          doc="the real images of random (per seed), herding, k_center and nearest_real, and their latent W2"),
    Stage("decode", "decode:decode_stage", ("quantize",), _decode_inputs,
          doc="centroids of the decoded methods' clusterings -> images (VAE, SD img2img or DiT)"),
    Stage("teacher", "teacher:teacher_stage", (), _teacher_inputs,
          doc="the soft-label teacher (checkpoint, library model or trained here) and its test top-1"),
    Stage("train", "evaluate:train_stage", ("decode", "subsets", "teacher"), _train_inputs, resumable=True,
          needs=("test",),
          doc="students on every method's set, top-1 on the real test split"),
    Stage("metrics", "metrics:metrics_stage", ("decode", "subsets", "teacher"),
          lambda cfg: {"metrics": cfg.metrics.model_dump(mode="json"), **_train_inputs(cfg)}, needs=("test",),
          doc="FID / precision / recall of each set in a feature space"),
    Stage("matrix", "evaluate:matrix_stage", ("decode", "subsets", "teacher"), _train_inputs, resumable=True,
          default=False, needs=("test",), doc="`evaluate --archs`: method x student architecture"),
)}
STAGES: tuple[str, ...] = tuple(n for n, s in REGISTRY.items() if s.default)


def stage(name: str) -> Stage:
    """The registered stage ``name``.

    Raises:
        KeyError: not a stage (the message lists them).
    """
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(REGISTRY)}") from None


def fingerprint(cfg: RunConfig, name: str, extra: dict | None = None) -> str:
    """sha256 (hex, 16 chars) of a stage's config inputs, the run seed, ``extra`` (e.g. the matrix's student
    architectures) and the fingerprints of every stage it reads (recursively)."""
    s = stage(name)
    doc = {**s.inputs(cfg), "seed": cfg.seed, "upstream": {u: fingerprint(cfg, u) for u in s.upstream}}
    if extra:
        doc["extra"] = extra
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def closure(names: tuple[str, ...] | list[str]) -> list[str]:
    """``names`` plus every stage they read, in registry (= execution) order."""
    need: set[str] = set()

    def add(n: str) -> None:
        if n not in need:
            need.add(n)
            for u in stage(n).upstream:
                add(u)

    for n in names:
        add(n)
    return [n for n in REGISTRY if n in need]
