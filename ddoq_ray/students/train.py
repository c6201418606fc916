"""Student training on a (weighted) distilled set with teacher soft labels (no Ray; see ``ray_train.py``).

Recipe (per epoch, per batch, :mod:`~ddoq_ray.students.plan`): seeded shuffle -> per-sample RandomResizedCrop +
flip -> CutMix or Mixup with probability ``cfg.cutmix_prob`` (weights mixed by lam) -> soft labels by
``cfg.label_mode``: ``online`` (the frozen teacher labels the augmented, mixed batch), ``precomputed`` (the same
batches and fp16 teacher logits replayed from Parquet, :mod:`~ddoq_ray.students.labels`) or ``hard``
(weighted cross-entropy, labels mixed by lam) -> loss :func:`~ddoq_ray.students.losses.soft_label_kl` with the
per-sample weights (``cfg.weight_norm == "batch"``: rescaled to mean 1 per batch). AdamW or SGD with the
``cfg.schedule`` lr schedule (:func:`make_optimizer`); lr ``cfg.resolved_lr()``; the reported top-1 is the final
epoch's or the best of scheduled test evaluations (``cfg.reported``, :func:`scored_epoch`). Everything random is
driven by ``seed`` (torch.manual_seed for the init, explicit generators for shuffling and augmentation), so two
runs with the same seed give the same model on CPU.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ddoq_ray import precision as precision_policy
from ddoq_ray.config import TrainConfig
from ddoq_ray.precision import autocast
from ddoq_ray.students.augment import apply_crop_flip
from ddoq_ray.students.losses import apply_mix, soft_label_kl, weighted_cross_entropy
from ddoq_ray.students.models import build_model
from ddoq_ray.students.plan import OnlinePlan, steps_per_epoch
from ddoq_ray.students.tensors import to_float_nchw
from ddoq_ray.students.weights import batch_normalise

CKPT_FILE = "state.pt"


def autocast_dtype(device: torch.device | str, precision: str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None = plain fp32): the project's one policy,
    :func:`ddoq_ray.precision.autocast_dtype` (its table), with this module's argument order.

    Raises:
        UserValueError: unknown ``precision``.
    """
    return precision_policy.autocast_dtype(precision, device)


@torch.no_grad()
def evaluate(model: nn.Module, images: np.ndarray, labels: np.ndarray, batch_size: int,
             device: torch.device | str | None = None, precision: str = "fp32") -> float:
    """Top-1 accuracy in [0, 1] of ``model`` (eval mode) on uint8 [N, H, W, 3] images with int labels [N].

    Converts one batch at a time (the full float test set would need 12 bytes per pixel). The model's training
    mode is restored afterwards. ``precision`` as ``TrainConfig.precision`` (default fp32).
    """
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    n = len(labels_t)
    if n == 0:
        raise ValueError("evaluate: empty test set")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    dtype = autocast_dtype(device, precision)
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, n, batch_size):
        x = to_float_nchw(images[i:i + batch_size]).to(device)
        with autocast(device, dtype):
            logits = model(x)
        correct += int((logits.argmax(1).cpu() == labels_t[i:i + batch_size]).sum())
    model.train(was_training)
    return correct / n


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def fit_loop(
    train: dict,
    test: dict | None,
    teacher: nn.Module | None,
    cfg: TrainConfig,
    seed: int,
    num_classes: int,
    *,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    wrap_model: Callable[[nn.Module], nn.Module] | None = None,
    on_epoch: Callable[[dict, Callable[[], dict], bool], None] | None = None,
    start_state: dict | None = None,
    val: dict | None = None,
    val_every: int = 0,
) -> dict:
    """The student training loop shared by :func:`fit_student`, the Ray Train workers and the Tune trials.

    Args:
        train: ``{"images" uint8 [n,S,S,3], "labels" int [n], "weights" float [n] (optional), "soft_labels"
            (precomputed mode: a :func:`~ddoq_ray.students.labels.precompute_soft_labels` folder)}``.
        test, val: ``{"images", "labels"}`` scored at the end (``val`` also every ``val_every`` epochs).
        teacher: frozen classifier on float [0, 1] NCHW images (online soft labels), or None.
        rank, world_size, wrap_model: data-parallel sharding of each global batch (DDP in Ray Train).
        on_epoch: ``(metrics, make_state, final)`` after every epoch (checkpoints, Tune reports).
        start_state: a ``make_state()`` dict to resume from.
    Returns:
        ``{"top1", "train_loss", "epochs", "n_train", "train_s", "start_epoch"}`` (+ ``val_top1``).
    Raises:
        ValueError: an empty set, images not at ``cfg.image_size``, labels outside ``[0, num_classes)``.
    """
    # Step 1, inputs: images, labels and per-image weights as tensors, checked once.
    images, labels = train["images"], np.asarray(train["labels"])
    n = len(labels)
    if n == 0:
        raise ValueError("fit_student: empty training set")
    if images.shape[1] != cfg.image_size or images.shape[2] != cfg.image_size:
        raise ValueError(f"train images are {images.shape[1:3]}, expected cfg.image_size={cfg.image_size}")
    weights = train.get("weights")
    w_all = torch.ones(n) if weights is None else torch.tensor(np.asarray(weights), dtype=torch.float32)
    x_all = to_float_nchw(images)
    y_all = torch.tensor(labels, dtype=torch.long)
    if int(y_all.min()) < 0 or int(y_all.max()) >= num_classes:
        lo, hi = int(y_all.min()), int(y_all.max())
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{lo}, {hi}]")

    # Step 2, models: the student (seeded init) and the frozen teacher on the device.
    torch.manual_seed(seed)  # model init (identical on every rank; DDP broadcasts rank 0's anyway)
    model = build_model(cfg.student, num_classes, cfg.image_size).to(device)
    if wrap_model is not None:
        model = wrap_model(model)
    if teacher is not None:
        teacher = teacher.to(device).eval()

    # Step 3, the batch plan (crops, flips, mixing; replayed from disk in precomputed mode).
    # Distributed-sampler semantics: every rank draws the same permutation, pads it to a multiple of world_size
    # and takes every world_size-th index; the global batch stays cfg.batch_size.
    if cfg.label_mode == "hard":
        teacher = None
    if cfg.label_mode == "precomputed":
        from ddoq_ray.students.labels import PrecomputedPlan

        if world_size > 1:
            raise ValueError("label_mode=precomputed replays global batches: use num_workers <= 1")
        if not train.get("soft_labels"):
            raise ValueError("label_mode=precomputed needs train['soft_labels'] (a precompute_soft_labels dir)")
        plan = PrecomputedPlan(train["soft_labels"], n, cfg, num_classes)
        teacher = None
    else:
        plan = OnlinePlan(n, cfg, seed, cfg.image_size, rank, world_size)
    # Step 4, optimiser, cosine schedule and mixed precision; resume from a checkpoint state.
    n_steps = steps_per_epoch(n, cfg.batch_size, world_size)[0]
    opt, sched = make_optimizer(model, cfg, n_steps)
    amp = autocast_dtype(device, cfg.precision)
    scaler = torch.amp.GradScaler(device.type) if amp == torch.float16 else None
    start_epoch, train_loss = 0, float("nan")
    best = {"top1": None, "epoch": None}  # reported != final: the best test evaluation so far
    if start_state is not None:
        _unwrap(model).load_state_dict(start_state["model"])
        opt.load_state_dict(start_state["optimizer"])
        sched.load_state_dict(start_state["scheduler"])
        plan.load_state(start_state)
        start_epoch = int(start_state["epoch"])
        train_loss = float(start_state.get("train_loss", float("nan")))
        best = start_state.get("best", best)

    def make_state() -> dict:
        # Deep copies: state_dict() returns live tensors that later optimizer steps modify in place.
        return {
            "model": {k: v.detach().to("cpu", copy=True) for k, v in _unwrap(model).state_dict().items()},
            "optimizer": copy.deepcopy(opt.state_dict()),
            "scheduler": sched.state_dict(),
            **plan.state(),
            "epoch": epoch_done,
            "train_loss": train_loss,
            "best": dict(best),
            "student": cfg.student,
            "num_classes": num_classes,
        }

    def val_top1() -> float:
        return evaluate(_unwrap(model), val["images"], val["labels"], cfg.eval_batch_size, device, cfg.precision)

    # Step 5, the epochs: augment, mix, label (teacher, stored logits or hard), weighted loss, step.
    epoch_done = start_epoch
    t_train = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        t_epoch = time.perf_counter()
        model.train()
        loss_sum, count = 0.0, 0
        for b in plan.epoch(epoch):
            x = apply_crop_flip(x_all[b.idx], b.boxes, b.flips).to(device)
            y, w = y_all[b.idx].to(device), w_all[b.idx].to(device)
            if b.mix != "none":
                x, w = apply_mix(x, w, b.lam, b.perm, b.box)
            if cfg.weight_norm == "batch":
                w = batch_normalise(w)
            with autocast(device, amp):
                logits = model(x)
                if teacher is not None:
                    with torch.no_grad():
                        t_logits = teacher(x)
            if b.logits is not None:
                t_logits = b.logits.to(device)
            if teacher is not None or b.logits is not None:
                loss = soft_label_kl(logits, t_logits, w, cfg.temperature)
            else:
                # The mix already folded the partner's weight into w; the CE term mixes the labels by lam.
                y_b = y[b.perm.to(device)] if b.perm is not None else None
                loss = weighted_cross_entropy(logits, y, w, y_b, b.lam)
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(b.idx)
            count += len(b.idx)
        train_loss = loss_sum / max(count, 1)
        epoch_done = epoch + 1
        if rank == 0 and test is not None and epoch_done < cfg.epochs and scored_epoch(cfg, epoch_done):
            top1 = evaluate(_unwrap(model), test["images"], test["labels"], cfg.eval_batch_size, device,
                            cfg.precision)
            if best["top1"] is None or top1 > best["top1"]:
                best = {"top1": top1, "epoch": epoch_done}
        if on_epoch is not None and epoch_done < cfg.epochs:
            m = {"epoch": epoch_done, "train_loss": train_loss, "epoch_s": time.perf_counter() - t_epoch}
            if val is not None and val_every and epoch_done % val_every == 0 and rank == 0:
                m["val_top1"] = val_top1()
            on_epoch(m, make_state, False)

    # Step 6, final metrics: validation and test top-1 on rank 0.
    train_s = time.perf_counter() - t_train
    metrics: dict[str, Any] = {"epoch": epoch_done, "train_loss": train_loss, "train_s": train_s}
    top1 = None
    if rank == 0 and val is not None:
        metrics["val_top1"] = val_top1()
    if rank == 0 and test is not None:
        top1 = evaluate(_unwrap(model), test["images"], test["labels"], cfg.eval_batch_size, device,
                        cfg.precision)
        metrics["top1_final"] = top1
        metrics["top1_epoch"] = epoch_done
        if cfg.reported != "final" and best["top1"] is not None and best["top1"] > top1:
            top1 = best["top1"]
            metrics["top1_epoch"] = best["epoch"]
        metrics["top1"] = top1
    if on_epoch is not None:
        on_epoch(dict(metrics), make_state, True)
    return {"top1": top1, "train_loss": train_loss, "epochs": epoch_done, "n_train": n, "train_s": train_s,
            "start_epoch": start_epoch, **{k: metrics[k] for k in ("val_top1", "top1_final", "top1_epoch")
                                           if k in metrics}}


def make_optimizer(model: nn.Module, cfg: TrainConfig, n_steps: int):
    """``(optimizer, per-step lr scheduler)`` of ``cfg`` for ``n_steps`` steps per epoch.

    - ``adamw`` (lr, weight_decay) or ``sgd`` (lr, ``momentum``, weight_decay);
    - ``cosine``: ``CosineAnnealingLR`` over every step, to 0 (SRe2L / D4M FKD, the project's default);
    - ``half_cosine``: RDED's per-epoch factor 0.5 (1 + cos(pi e / E / 2)), from 1 to ~0.5 (method.md §5.2);
    - ``step``: x0.2 at 2/3 and at 5/6 of the E epochs (Minimax, method.md §5.3).
    """
    import math

    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=cfg.resolved_lr(), momentum=cfg.momentum,
                              weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.resolved_lr(), weight_decay=cfg.weight_decay)
    E = cfg.epochs
    if cfg.schedule == "cosine":
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=E * n_steps)
    if cfg.schedule == "half_cosine":
        def factor(step):
            return 0.5 * (1 + math.cos(math.pi * (step // n_steps) / E / 2))
    else:
        def factor(step):
            e = step // n_steps
            return 0.2 ** ((e >= 2 * E / 3) + (e >= 5 * E / 6))
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def scored_epoch(cfg: TrainConfig, epoch: int) -> bool:
    """Whether the test split is scored after ``epoch`` (1-based): ``reported=best_last_20pct``: every
    ``eval_every`` epochs in the last 20 % of training (RDED ``validation/main.py``, method.md §5.2); ``best``:
    every ``eval_every`` epochs (DD-Ranking's ``test_interval``); the final epoch is always scored."""
    if cfg.reported == "final" or epoch % cfg.eval_every:
        return False
    return cfg.reported == "best" or epoch > 0.8 * cfg.epochs


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def fit_student(
    train: dict,
    test: dict,
    teacher: nn.Module | None,
    cfg: TrainConfig,
    seed: int,
    num_classes: int,
    on_epoch: Callable[[dict, Callable[[], dict], bool], None] | None = None,
    start_state: dict | None = None,
    *,
    device: torch.device | str | None = None,
    val: dict | None = None,
    val_every: int = 0,
) -> dict:
    """Train ``cfg.student`` on a weighted distilled set and evaluate it on ``test``.

    Args:
        train: ``{"images": uint8 [N, H, W, 3], "labels": int64 [N] in [0, num_classes),
            "weights": float32 [N], "soft_labels": dir}`` (weights optional: all ones; soft_labels only for
            ``label_mode=precomputed``: a :func:`~ddoq_ray.students.labels.precompute_soft_labels` directory).
            Images already at ``cfg.image_size``.
        test: ``{"images": uint8 [M, H, W, 3], "labels": int [M]}``.
        teacher: frozen classifier on float [0, 1] NCHW images with ``num_classes`` outputs (``online``);
            ignored for ``precomputed`` and ``hard``; None: weighted hard-label cross-entropy.
        cfg: :class:`~ddoq_ray.config.TrainConfig`.
        seed: drives model init, shuffling, augmentation and CutMix.
        on_epoch: ``on_epoch(metrics, make_state, final)`` after every epoch; ``metrics`` has ``epoch`` and
            ``train_loss`` (and ``top1`` when ``final``); ``make_state()`` returns a resumable state dict
            (model/optimizer/scheduler/generators/epoch) for checkpointing.
        start_state: a ``make_state()`` dict to resume from (continues at its epoch).
        device: default CUDA if available else CPU.
        val, val_every: optional ``{"images", "labels"}``; its top-1 is added to ``on_epoch``'s metrics as
            ``val_top1`` every ``val_every`` epochs and at the end.

    Returns:
        ``{"top1": float in [0, 1] (None without test), "train_loss": float (mean over the last epoch),
        "epochs": int, "n_train": int, "train_s": float, "start_epoch": int, "val_top1" (with val)}``.
    """
    dev = torch.device(device) if device is not None else default_device()
    return fit_loop(train, test, teacher, cfg, seed, num_classes, device=dev, on_epoch=on_epoch,
                start_state=start_state, val=val, val_every=val_every)


