"""Batch plans: which samples, crops, flips and mixes every training step uses.

The training loop (:mod:`ddoq_ray.students.train`) consumes one :class:`Batch` per step. :class:`OnlinePlan`
draws them from seeded generators (the online protocol); :class:`~ddoq_ray.students.labels.PrecomputedPlan`
replays them, with the stored teacher logits, from Parquet files written by
:func:`~ddoq_ray.students.labels.precompute_soft_labels` (which itself records an :class:`OnlinePlan`), so a
precomputed run sees exactly the batches an online run with the same seed would.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ddoq_ray.config import TrainConfig
from ddoq_ray.students.augment import sample_crop_flip
from ddoq_ray.students.losses import sample_cutmix, sample_mixup

MIX_CODES = {"none": 0, "cutmix": 1, "mixup": 2}


@dataclass
class Batch:
    """One training step's plan.

    Attributes:
        idx: int64 [B] rows of the training set.
        boxes: int64 [B, 4] crop (top, left, h, w) per sample; flips: bool [B].
        mix: ``none`` | ``cutmix`` | ``mixup``; lam: fraction of each sample that stays its own (1.0 for none).
        perm: int64 [B] position of each sample's mixing partner in the batch (None for none).
        box: CutMix box (y1, y2, x1, x2) or None.
        logits: float [B, C] precomputed teacher logits (None: compute online / hard labels).
    """

    idx: torch.Tensor
    boxes: torch.Tensor
    flips: torch.Tensor
    mix: str = "none"
    lam: float = 1.0
    perm: torch.Tensor | None = None
    box: tuple[int, int, int, int] | None = None
    logits: torch.Tensor | None = None


def steps_per_epoch(n: int, batch_size: int, world_size: int = 1) -> tuple[int, int, int]:
    """``(steps, per-rank batch, per-rank shard)`` for ``n`` samples (distributed-sampler semantics)."""
    shard = math.ceil(n / world_size)
    bs = max(1, math.ceil(batch_size / world_size))
    return max(1, math.ceil(shard / bs)), bs, shard


class OnlinePlan:
    """Seeded batch plans: per epoch one shuffle (``shuffle_gen``, seed ``seed``, identical on every rank, padded
    to a multiple of ``world_size`` and strided by rank), then per step RandomResizedCrop + flip parameters and,
    with probability ``cfg.cutmix_prob``, CutMix or Mixup parameters (``aug_gen``, seed
    ``seed * 1000 + 7919 * rank + 1``). Batches of one sample are skipped (BatchNorm students)."""

    def __init__(self, n: int, cfg: TrainConfig, seed: int, image_size: int, rank: int = 0, world_size: int = 1):
        self.n, self.cfg, self.seed, self.rank, self.world = n, cfg, seed, rank, world_size
        self.size = image_size
        self.steps, self.bs, self.shard = steps_per_epoch(n, cfg.batch_size, world_size)
        self.shuffle_gen = torch.Generator().manual_seed(seed)
        self.aug_gen = torch.Generator().manual_seed(seed * 1000 + 7919 * rank + 1)

    def state(self) -> dict:
        return {"shuffle_gen": self.shuffle_gen.get_state(), "aug_gen": [self.aug_gen.get_state()]}

    def load_state(self, state: dict) -> None:
        self.shuffle_gen.set_state(state["shuffle_gen"])
        gens = state["aug_gen"]
        self.aug_gen.set_state(gens[self.rank] if self.rank < len(gens) else
                               torch.Generator().manual_seed(self.seed * 1000 + 7919 * self.rank + 2).get_state())

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """The batches of one epoch (``epoch`` is unused: the generators carry the position)."""
        cfg, h = self.cfg, self.size
        perm = torch.randperm(self.n, generator=self.shuffle_gen)
        if self.world > 1:
            perm = torch.cat([perm, perm[: self.shard * self.world - self.n]])[self.rank::self.world]
        for step in range(self.steps):
            idx = perm[step * self.bs:(step + 1) * self.bs]
            if len(idx) < 2 <= len(perm):  # a batch of 1 breaks BatchNorm students; reshuffled next epoch
                continue
            boxes, flips = sample_crop_flip(len(idx), h, h, cfg.min_crop_scale, self.aug_gen)
            b = Batch(idx=idx, boxes=boxes, flips=flips)
            if cfg.cutmix_prob > 0 and float(torch.rand((), generator=self.aug_gen)) < cfg.cutmix_prob:
                if cfg.mix == "cutmix":
                    b.lam, b.perm, b.box = sample_cutmix(len(idx), h, h, cfg.cutmix_beta, self.aug_gen)
                else:
                    b.lam, b.perm = sample_mixup(len(idx), cfg.mixup_alpha, self.aug_gen)
                b.mix = cfg.mix
            yield b
