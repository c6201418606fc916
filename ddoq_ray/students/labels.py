"""Precomputed soft labels (FKD / SRe2L style), stored as plain Parquet and replayed exactly at train time.

:func:`precompute_soft_labels` records, for every epoch and step of an :class:`~ddoq_ray.students.plan.OnlinePlan`
(the same seeded draws an online run makes), the sample rows, crop boxes, flip flags and CutMix/Mixup parameters,
runs the teacher on the augmented, mixed batch and stores its logits in fp16. :class:`PrecomputedPlan` reads them
back with plain ``pyarrow.parquet`` (no patched torch, no pickles) and yields the same :class:`Batch` objects, so
the student sees identical inputs; only the teacher logits are rounded to fp16.

Layout of a label directory::

    meta.json                 schema_version, n_train, num_classes, epochs, steps_per_epoch, batch_size,
                              image_size, seed, teacher, bytes, bytes_per_image_epoch (written last = complete)
    epoch_00000.parquet ...   one file per epoch, one row per sample per step:

    epoch int32 | step int32 | pos int16 (position in the batch) | index int32 (row of the training set)
    crop_top, crop_left, crop_h, crop_w int16 | flip bool
    mix int8 (0 none, 1 cutmix, 2 mixup) | lam float64 (fraction of the sample that stays its own)
    partner int16 (position of the mixing partner in the batch; = pos when mix = 0)
    box_y1, box_y2, box_x1, box_x2 int16 (CutMix box; -1 otherwise)
    logits fixed_size_list<float16>[num_classes] (teacher logits on the augmented, mixed image)

Read one epoch with ``pq.read_table(path)``; logits as numpy:
``t["logits"].combine_chunks().flatten().to_numpy().reshape(-1, num_classes)`` (float16).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from ddoq_ray import storage
from ddoq_ray.config import TrainConfig
from ddoq_ray.students.augment import apply_crop_flip
from ddoq_ray.students.losses import apply_mix
from ddoq_ray.students.plan import MIX_CODES, Batch, OnlinePlan

SCHEMA_VERSION = 1
_CODE_MIX = {v: k for k, v in MIX_CODES.items()}


def label_schema(num_classes: int) -> pa.Schema:
    """The Parquet schema of one epoch file (see module docstring)."""
    i16 = pa.int16()
    return pa.schema([
        ("epoch", pa.int32()), ("step", pa.int32()), ("pos", i16), ("index", pa.int32()),
        ("crop_top", i16), ("crop_left", i16), ("crop_h", i16), ("crop_w", i16), ("flip", pa.bool_()),
        ("mix", pa.int8()), ("lam", pa.float64()), ("partner", i16),
        ("box_y1", i16), ("box_y2", i16), ("box_x1", i16), ("box_x2", i16),
        ("logits", pa.list_(pa.float16(), num_classes)),
    ])


def _meta_key(images: np.ndarray, cfg: TrainConfig, seed: int, num_classes: int, teacher_name: str) -> dict:
    """Everything the stored labels depend on: the images (sha256 of their bytes), the teacher, the plan."""
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()
    return {"schema_version": SCHEMA_VERSION, "n_train": len(images), "images_sha256": digest,
            "teacher": teacher_name, "precision": cfg.precision, "num_classes": num_classes, "epochs": cfg.epochs,
            "batch_size": cfg.batch_size, "image_size": cfg.image_size, "seed": seed,
            "min_crop_scale": cfg.min_crop_scale, "mix": cfg.mix, "cutmix_prob": cfg.cutmix_prob,
            "cutmix_beta": cfg.cutmix_beta, "mixup_alpha": cfg.mixup_alpha}


@torch.no_grad()
def precompute_soft_labels(images: np.ndarray, teacher: nn.Module, cfg: TrainConfig, seed: int, num_classes: int,
                           out_dir: str | Path, device: torch.device | str = "cpu", teacher_name: str = "") -> dict:
    """Write ``cfg.epochs`` epochs of batch plans + fp16 teacher logits to ``out_dir`` (skipped when an identical
    set is already complete there).

    Args:
        images: uint8 [N, S, S, 3] training images at ``cfg.image_size``.
        teacher: frozen classifier on float [0, 1] NCHW images, ``num_classes`` outputs.
        cfg: batch size, epochs, augmentation and mixing parameters (as for the online run).
        seed: the student seed whose online plan is recorded.

    Returns:
        The ``meta.json`` dict (includes ``bytes`` and ``bytes_per_image_epoch``).
    """
    from ddoq_ray.precision import autocast, autocast_dtype
    from ddoq_ray.students.tensors import to_float_nchw

    out = storage.normalize(out_dir)  # a local path or a URI: the label set is read back on any node
    key = _meta_key(images, cfg, seed, num_classes, teacher_name)
    meta_path = storage.join(out, "meta.json")
    if storage.is_file(meta_path):
        meta = storage.read_json(meta_path)
        if {k: meta.get(k) for k in key} == key:
            return meta
    storage.makedirs(out)
    dev = torch.device(device)
    teacher = teacher.to(dev).eval()
    amp = autocast_dtype(cfg.precision, dev)
    x_all = to_float_nchw(images)
    plan = OnlinePlan(len(images), cfg, seed, cfg.image_size)
    schema = label_schema(num_classes)
    total = 0
    for epoch in range(cfg.epochs):
        cols: dict[str, list] = {name: [] for name in schema.names if name != "logits"}
        logits_all = []
        for step, b in enumerate(plan.epoch(epoch)):
            x = apply_crop_flip(x_all[b.idx], b.boxes, b.flips)
            if b.mix != "none":
                x, _ = apply_mix(x, torch.ones(len(b.idx)), b.lam, b.perm, b.box)
            with autocast(dev, amp):
                logits = teacher(x.to(dev))
            logits_all.append(logits.float().cpu().numpy().astype(np.float16))
            B = len(b.idx)
            box = b.box or (-1, -1, -1, -1)
            cols["epoch"] += [epoch] * B
            cols["step"] += [step] * B
            cols["pos"] += list(range(B))
            cols["index"] += b.idx.tolist()
            for j, name in enumerate(("crop_top", "crop_left", "crop_h", "crop_w")):
                cols[name] += b.boxes[:, j].tolist()
            cols["flip"] += b.flips.tolist()
            cols["mix"] += [MIX_CODES[b.mix]] * B
            cols["lam"] += [b.lam] * B
            cols["partner"] += b.perm.tolist() if b.perm is not None else list(range(B))
            for j, name in enumerate(("box_y1", "box_y2", "box_x1", "box_x2")):
                cols[name] += [box[j]] * B
        flat = np.concatenate(logits_all).reshape(-1)
        arrays = [pa.array(cols[name], type=schema.field(name).type) for name in schema.names if name != "logits"]
        arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float16()), num_classes))
        # No temporary file: meta.json, written last, is what marks the set complete.
        loc = storage.join(out, f"epoch_{epoch:05d}.parquet")
        storage.write_parquet(pa.Table.from_arrays(arrays, schema=schema), loc)
        total += storage.info(loc).size
    meta = {**key, "steps_per_epoch": plan.steps, "teacher": teacher_name, "bytes": total,
            "bytes_per_image_epoch": total / (len(images) * cfg.epochs)}
    storage.write_json(meta_path, meta)
    return meta


class PrecomputedPlan:
    """Replays a label directory written by :func:`precompute_soft_labels` (plain pyarrow reads).

    Raises:
        FileNotFoundError: no complete label set (``meta.json``) in ``label_dir``.
        ValueError: the set was made for a different training set size, batch size, image size or fewer epochs.
    """

    def __init__(self, label_dir: str | Path, n: int, cfg: TrainConfig, num_classes: int):
        self.dir = storage.normalize(label_dir)
        meta_path = storage.join(self.dir, "meta.json")
        if not storage.is_file(meta_path):
            raise FileNotFoundError(f"no precomputed soft labels in {self.dir} (meta.json missing)")
        self.meta = storage.read_json(meta_path)
        want = {"n_train": n, "batch_size": cfg.batch_size, "image_size": cfg.image_size,
                "num_classes": num_classes}
        bad = {k: (self.meta.get(k), v) for k, v in want.items() if self.meta.get(k) != v}
        if self.meta["epochs"] < cfg.epochs:
            bad["epochs"] = (self.meta["epochs"], cfg.epochs)
        if bad:
            raise ValueError(f"precomputed labels {self.dir} do not fit this run: (stored, wanted) {bad}")
        self.steps = int(self.meta["steps_per_epoch"])
        self.num_classes = num_classes

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:  # the epoch number is the whole position
        pass

    def epoch(self, epoch: int) -> Iterator[Batch]:
        t = storage.read_parquet(storage.join(self.dir, f"epoch_{epoch:05d}.parquet"))
        cols = {name: t[name].to_numpy() for name in t.column_names if name != "logits"}
        logits = t["logits"].combine_chunks().flatten().to_numpy().reshape(-1, self.num_classes)
        steps = cols["step"]
        bounds = np.flatnonzero(np.diff(steps)) + 1
        for rows in np.split(np.arange(len(steps)), bounds):
            r0 = rows[0]
            mix = _CODE_MIX[int(cols["mix"][r0])]
            order = rows[np.argsort(cols["pos"][rows])]
            yield Batch(
                idx=torch.from_numpy(cols["index"][order].astype(np.int64)),
                boxes=torch.from_numpy(np.stack([cols[k][order] for k in ("crop_top", "crop_left", "crop_h",
                                                                          "crop_w")], 1).astype(np.int64)),
                flips=torch.from_numpy(cols["flip"][order].astype(bool)),
                mix=mix,
                lam=float(cols["lam"][r0]),
                perm=torch.from_numpy(cols["partner"][order].astype(np.int64)) if mix != "none" else None,
                box=tuple(int(cols[k][r0]) for k in ("box_y1", "box_y2", "box_x1", "box_x2"))
                if mix == "cutmix" else None,
                logits=torch.from_numpy(logits[order].astype(np.float32)),
            )
