"""The student loop's optimisers, lr schedules and best-of-last-20 % reporting (what the rded and hard presets
need): factors at known steps, the SGD state, and the reported epoch of a tiny run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddoq_ray.config import TrainConfig
from ddoq_ray.students.train import fit_student, make_optimizer, scored_epoch


def lrs(cfg: TrainConfig, n_steps: int) -> list[float]:
    opt, sched = make_optimizer(torch.nn.Linear(2, 2), cfg, n_steps)
    out = []
    for _ in range(cfg.epochs * n_steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_step_schedule_is_x02_at_two_thirds_and_five_sixths():
    cfg = TrainConfig(optimizer="sgd", schedule="step", epochs=12, lr=0.01)
    lr = lrs(cfg, n_steps=2)  # epochs 0-7: 0.01, 8-9: 0.002, 10-11: 0.0004
    assert lr[0] == lr[15] == pytest.approx(0.01) and lr[16] == lr[19] == pytest.approx(0.002)
    assert lr[20] == lr[23] == pytest.approx(0.0004)
    opt, _ = make_optimizer(torch.nn.Linear(2, 2), cfg, 2)
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.9


def test_half_cosine_ends_near_half_and_cosine_at_zero():
    lr = lrs(TrainConfig(schedule="half_cosine", epochs=10, lr=1e-3), n_steps=3)
    assert lr[0] == lr[2] == pytest.approx(1e-3)  # per epoch (RDED steps its LambdaLR once an epoch)
    assert lr[-1] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 9 / 10 / 2)))
    cos = lrs(TrainConfig(schedule="cosine", epochs=10, lr=1e-3), n_steps=3)
    assert cos[-1] < 1e-5 and cos[1] < cos[0]  # per step, to 0


def test_best_of_last_20pct_scores_only_late_epochs():
    cfg = TrainConfig(reported="best_last_20pct", eval_every=10, epochs=300)
    assert [e for e in range(1, 301) if scored_epoch(cfg, e)] == [250, 260, 270, 280, 290, 300]
    assert not any(scored_epoch(TrainConfig(epochs=300), e) for e in range(1, 301))
    every = TrainConfig(reported="best", eval_every=20, epochs=100)  # DD-Ranking: test_interval 20
    assert [e for e in range(1, 101) if scored_epoch(every, e)] == [20, 40, 60, 80, 100]


def test_reported_best_is_at_least_the_final_top1():
    rng = np.random.default_rng(0)
    train = {"images": rng.integers(0, 255, (20, 8, 8, 3), dtype=np.uint8), "labels": np.arange(20) % 2}
    test = {"images": rng.integers(0, 255, (40, 8, 8, 3), dtype=np.uint8), "labels": np.arange(40) % 2}
    base = dict(label_mode="hard", epochs=10, batch_size=10, image_size=8, precision="fp32", student="convnet3")
    best = fit_student(train, test, None, TrainConfig(**base, reported="best_last_20pct", eval_every=1), 0, 2,
                       device="cpu")
    final = fit_student(train, test, None, TrainConfig(**base), 0, 2, device="cpu")
    assert best["top1_final"] == final["top1"] == final["top1_final"]  # scoring does not change training
    assert best["top1"] >= best["top1_final"] and best["top1_epoch"] in (9, 10)
    assert final["top1_epoch"] == 10
