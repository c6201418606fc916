"""Student-evaluation protocols as named presets: every hyperparameter with its source (issue 14).

The evaluation recipe moves top-1 by 10-30 points (RD3, ICLR 2026; ../shared/notes/protocols.md §1), so every
method in a comparison must run under one named preset, and the gain over the random real subset under that same
preset is the number to report. Presets (protocols.md §2; method.md §4.4, §5):

- ``rded``: RDED (Sun et al., CVPR 2024; LINs-lab/RDED ``argument.py``, ``validation/main.py``): online teacher
  soft labels on every CutMix-ed batch, KL T = 20, AdamW (lr per student), wd 0.01, half-cosine schedule, 300
  epochs, batch 50 / 100 at IPC 10 / 50 on 10-class sets, best top-1 of the last 20 % of epochs.
- ``sre2l``: SRe2L / D4M FKD (VILA-Lab/SRe2L ``relabel.sh``, ``train_FKD.sh``; suduo94/D4M ``matching.sh``):
  soft labels precomputed per crop and epoch, KL T = 20, RandomResizedCrop(0.08-1) + CutMix, AdamW 1e-3, wd
  0.01, cosine to 0, 300 epochs, batch 1024, final epoch.
- ``dd_ranking``: DD-Ranking's CIFAR-10 setting (its ``D4M/CIFAR10/IPC10.yaml``): ConvNet-3 teacher online, KL
  T = 20, CutMix β = 1, RandomResizedCrop(32, 0.08-1), AdamW wd 0.01, its "cosine" (which its code implements
  as the half cosine 0.5 (1 + cos(pi e / E / 2)) per epoch), 500 epochs, batch 100, 5 runs.
- ``hard``: Minimax hard labels (Gu et al., CVPR 2024; MGD³ App. I): cross-entropy, RRC + CutMix, SGD 0.01
  decayed ×0.2 at 2/3 and 5/6, 2000 epochs at IPC 10 (1500 at IPC ≥ 20), mean ± std of 3 runs.
- ``ddoq_hard``: the hard-label protocol of this project's main job (configs/cifar10_taesd_ipc10.yaml), so it
  too has a name: weighted cross-entropy, AdamW 1e-3, cosine to 0, 300 epochs, batch 50, final epoch.

``None`` in a field means the source does not say (or the setting does not apply): :func:`train_overrides` then
leaves that ``train:`` field at the config's value. Every preset runs as documented (SGD, the half-cosine and
step schedules and best-of-last-20 % reporting are :class:`ddoq_ray.config.TrainConfig` fields); a setting the
loop could not express would be listed by :func:`unsupported` and refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

from ddoq_ray.errors import ConfigError

log = logging.getLogger("ddoq_ray")

Reported = Literal["final", "best_last_20pct", "best"]


@dataclass(frozen=True)
class Protocol:
    """One evaluation protocol. Units: lr per optimizer step; ``epochs`` passes over the distilled set;
    ``min_crop_scale`` the RandomResizedCrop area fraction lower bound; ``batch_size`` images per step
    (``None``: :meth:`batch_for` rule); ``eval_every`` epochs between test evaluations (for best-of reporting);
    ``reported``: which epoch's accuracy is the result (``final``; ``best_last_20pct``: best of the evaluations
    in the last 20 % of epochs; ``best``: best of the evaluations every ``eval_every`` epochs); ``runs``: students
    per method whose mean ± std is reported; ``seeds``: their seeds when the source fixes them (else 0..runs-1);
    ``deviations``: where this preset knowingly differs from its source (logged at config load and written into
    ``results.json``), so no number is silently produced under another recipe."""

    name: str
    label_mode: Literal["online", "precomputed", "hard"]
    teacher: str
    temperature: float | None
    mix: Literal["cutmix", "mixup"] | None
    cutmix_prob: float | None
    cutmix_beta: float | None
    min_crop_scale: float | None
    flip: bool
    optimizer: Literal["adamw", "sgd"]
    lr: float | None
    weight_decay: float | None
    schedule: Literal["cosine", "half_cosine", "step"]
    epochs: int
    epochs_ipc_ge_20: int | None
    batch_size: int | None
    reported: Reported
    eval_every: int | None
    runs: int
    sources: dict[str, str] = field(default_factory=dict, compare=False)
    seeds: tuple[int, ...] | None = None
    deviations: dict[str, str] = field(default_factory=dict, compare=False)

    def epochs_for(self, ipc: int) -> int:
        """Epochs at this IPC (Minimax: 2000 at IPC ≤ 10, 1500 at IPC ≥ 20; others: one value)."""
        return self.epochs_ipc_ge_20 if self.epochs_ipc_ge_20 is not None and ipc >= 20 else self.epochs

    def batch_for(self, ipc: int, n_classes: int) -> int | None:
        """Batch size at this IPC and class count, capped at the distilled set's size ipc·n_classes.

        RDED (method.md §5.2): 50 at IPC ≤ 10 and 100 above on 10-class sets, doubled for ImageNet-1K (1000
        classes); IPCs between 10 and 50 take 100 (an inference: RDED documents IPC 10 and 50 only)."""
        if self.name == "rded":
            b = (50 if ipc <= 10 else 100) * (2 if n_classes >= 1000 else 1)
        else:
            b = self.batch_size
        return None if b is None else min(b, ipc * n_classes)


_RDED = "LINs-lab/RDED argument.py / validation/main.py (method.md §5.2)"
_SRE2L = "VILA-Lab/SRe2L relabel.sh, train_FKD.sh; suduo94/D4M matching.sh, train_FKD.sh (method.md §4.4, §5.1)"
_DDR = ("DD-Ranking D4M/CIFAR10/IPC10.yaml and ddranking/metrics/soft_label.py (SoftLabelEvaluator; "
        "NUS-HPC-AI-Lab/DD-Ranking, read 2026-12-02)")
_MINIMAX = "Minimax (Gu et al. 2024) as described in MGD³ App. I (method.md §5.3, protocols.md §2)"
_MAIN = "configs/cifar10_taesd_ipc10.yaml, the project's main job (README 'Measured results')"

PRESETS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("rded", "online", "the run's teacher on every mixed batch (RDED: torchvision resnet18 on ImageNet)",
             20.0, "cutmix", 1.0, 1.0, 0.5, True, "adamw", None, 0.01, "half_cosine", 300, None, None,
             "best_last_20pct", 10, 3,
             {"all": _RDED, "lr": "None = RDED's per-student lr (ddoq_ray.config.default_lr)",
              "min_crop_scale": "RRC scale (1/factor, 1) with ShufflePatches factor 2; for non-mosaic images "
                                "method.md §5.2 suggests factor 1 [inference]",
              "runs": "not fixed by RDED; 3 as the project's tables [choice]"}),
    Protocol("sre2l", "precomputed", "the run's teacher, logits stored per crop and epoch (SRe2L/D4M: torchvision "
             "resnet18 IMAGENET1K_V1)", 20.0, "cutmix", 1.0, 1.0, 0.08, True, "adamw", 1e-3, 0.01, "cosine", 300,
             None, 1024, "final", None, 3,
             {"all": _SRE2L, "reported": "final epoch (protocols.md §2); D4M's train_FKD.py keeps the best of "
                                         "evaluations every 50 epochs (method.md §4.4)",
              "runs": "not fixed by SRe2L; 3 [choice]"}),
    Protocol("dd_ranking", "online", "ConvNet-3 teacher trained on the real train split", 20.0, "cutmix", 1.0,
             1.0, 0.08, True, "adamw", 0.01, 0.01, "half_cosine", 500, None, 100, "best", 20, 5,
             {"all": _DDR, "lr": "default_lr 0.01; SoftLabelEvaluator searches it per run (see deviations)",
              "schedule": "lr_scheduler: cosine, which ddranking/utils/train_and_eval.py get_lr_scheduler builds "
                          "as LambdaLR 0.5 (1 + cos(pi e / E / 2)), stepped per epoch: lr to lr/2, not to 0 "
                          "(found while building benchmarks/ddranking_check.py, which runs its evaluator beside "
                          "this preset)",
              "cutmix_prob": "Cutmix(beta 1) applied to every batch (data_aug_func: cutmix)",
              "reported": "best top-1 of the test evaluations every 20 epochs (test_interval = 20)",
              "seeds": "seed_list = [0, 1, 42, 1234, 3407] for num_eval = 5 runs"},
             seeds=(0, 1, 42, 1234, 3407),
             deviations={"lr": "DD-Ranking picks each run's lr from [0.001, 0.005, 0.01, 0.05, 0.1] by test "
                               "top-1; this preset trains at 0.01 (its default_lr). Sweep train.lr over that grid "
                               "with `ddoq-ray tune` to reproduce the search.",
                         "loss_scale": "DD-Ranking's KLDivergenceLoss defaults to scale_loss=False (KL, batchmean); "
                                       "here KL x T^2 (Hinton et al. 2015): under AdamW a constant loss scale "
                                       "changes the update only through eps = 1e-8",
                         "teacher": "DD-Ranking's pretrained ConvNet-3 teachers (downloaded); here the run's "
                                    "train.teacher",
                         "score": "DD-Ranking reports IOR = top-1(set) - top-1(random) and HLR; here top-1 per "
                                  "method and the gain over `random` under the same preset"}),
    Protocol("hard", "hard", "none", None, "cutmix", None, 1.0, None, True, "sgd", 0.01, None, "step", 2000, 1500,
             None, "final", None, 3,
             {"all": _MINIMAX, "schedule": "lr ×0.2 at 2/3 and 5/6 of training",
              "cutmix_prob": "not in the notes [?]", "min_crop_scale": "not in the notes [?]",
              "batch_size": "not in the notes [?]", "weight_decay": "not in the notes [?]"}),
    Protocol("ddoq_hard", "hard", "none", None, "cutmix", 0.5, 1.0, 0.5, True, "adamw", 1e-3, 0.01, "cosine", 300,
             None, 50, "final", None, 3, {"all": _MAIN}),
)}


def get(name: str) -> Protocol:
    """The preset called ``name``. Raises ConfigError (naming ``train.protocol``) for an unknown name."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"train.protocol={name!r} is not a preset; use one of {', '.join(PRESETS)}") from None


def train_overrides(name: str, ipc: int, n_classes: int) -> dict:
    """The ``train:`` fields (:class:`ddoq_ray.config.TrainConfig` names) that preset ``name`` sets at this IPC
    and class count; fields the preset leaves open (``None``) are absent. Raises ConfigError for an unknown name
    or ipc / n_classes < 1."""
    if ipc < 1 or n_classes < 1:
        raise ConfigError(f"protocol {name!r}: need ipc >= 1 and n_classes >= 1 (got {ipc}, {n_classes})")
    p = get(name)
    out = {"label_mode": p.label_mode, "epochs": p.epochs_for(ipc), "batch_size": p.batch_for(ipc, n_classes),
           "temperature": p.temperature, "mix": p.mix, "cutmix_prob": p.cutmix_prob, "cutmix_beta": p.cutmix_beta,
           "min_crop_scale": p.min_crop_scale, "weight_decay": p.weight_decay,
           "seeds": list(p.seeds or range(p.runs))}
    out.update({"optimizer": p.optimizer, "lr": p.lr, "schedule": p.schedule, "reported": p.reported,
                "eval_every": p.eval_every})
    return {k: v for k, v in out.items() if v is not None}


def unsupported(name: str) -> dict[str, str]:
    """Settings of preset ``name`` that :class:`ddoq_ray.config.TrainConfig` cannot express (empty for every
    preset since the student loop gained SGD, the half-cosine and step schedules and best-of-last-20 % reporting;
    kept so that a future preset with a gap is refused, not silently run another way)."""
    p = get(name)
    gaps = {}
    if not p.flip:
        gaps["flip"] = "off"
    return gaps


def apply_protocol(doc: dict, default_ipc: int = 10) -> dict:
    """Fill the ``train:`` fields of preset ``train.protocol`` (:func:`train_overrides`) into a raw config mapping
    (called by :class:`ddoq_ray.config.RunConfig` before validation; ``default_ipc``: ``quantize.ipc``'s
    default). Fields already written in ``train:`` win over the preset, so ``--set train.epochs=2`` still
    shortens a preset run, and re-loading a resolved config changes nothing.

    The preset's batch rule needs the class count: ``len(data.class_subset)`` or a ``data.classes`` list, else 10
    (CIFAR-10, Imagenette, ImageWoof; set ``train.batch_size`` for other class counts).

    Raises:
        ConfigError: unknown preset, or one whose settings the student loop cannot run (:func:`unsupported`).
    """
    train = doc.get("train")
    name = train.get("protocol") if isinstance(train, dict) else None
    if name is None:
        return doc
    gaps = unsupported(name)
    for key, why in get(name).deviations.items() if not gaps else ():
        log.warning("train.protocol=%s differs from its source in %s: %s", name, key, why)
    if gaps:
        raise ConfigError(f"train.protocol={name!r} needs settings the student loop does not implement yet ("
                          + ", ".join(f"{k}: {v}" for k, v in gaps.items())
                          + "); write the train fields yourself")
    data = doc.get("data") if isinstance(doc.get("data"), dict) else {}
    listed = data.get("class_subset") or (data.get("classes") if isinstance(data.get("classes"), list) else None)
    ipc = (doc.get("quantize") or {}).get("ipc", default_ipc)
    preset = train_overrides(name, int(ipc), len(listed) if listed else 10)
    return {**doc, "train": {**preset, **train}}
