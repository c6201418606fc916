"""The one precision policy (ddoq_ray.precision): its table, and the VAE and the students both following it."""

from __future__ import annotations

import pytest
import torch

from ddoq_ray import precision
from ddoq_ray.errors import DdoqError

BF16, FP16 = torch.bfloat16, torch.float16

# (precision, device, CPU has bf16) -> autocast dtype (None = fp32): the table in ddoq_ray/precision.py.
TABLE = [
    ("fp32", "cpu", True, None), ("fp32", "cpu", False, None), ("fp32", "cuda", False, None),
    ("bf16", "cpu", True, BF16), ("bf16", "cpu", False, BF16), ("bf16", "cuda", False, BF16),
    ("fp16", "cpu", True, FP16), ("fp16", "cpu", False, FP16), ("fp16", "cuda", False, FP16),
    ("auto", "cpu", True, BF16), ("auto", "cpu", False, None), ("auto", "cuda", False, FP16),
    ("auto", "cuda:1", True, FP16), ("auto", "meta", True, None),
]


@pytest.mark.parametrize(("name", "device", "has_bf16", "expected"), TABLE)
def test_autocast_dtype_table(monkeypatch, name, device, has_bf16, expected):
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: has_bf16)
    assert precision.autocast_dtype(name, device) == expected
    assert precision.autocast_dtype(name, torch.device(device)) == expected


def test_unknown_precision_is_a_user_error():
    with pytest.raises(DdoqError, match=r"'half'.*auto, fp32, bf16, fp16"):
        precision.autocast_dtype("half", "cpu")


@pytest.mark.parametrize("has_bf16", [True, False])
def test_vae_and_students_follow_the_one_policy(monkeypatch, has_bf16):
    from ddoq_ray.students.train import autocast_dtype as student_dtype
    from ddoq_ray.vae import pick_dtype

    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: has_bf16)
    for name, device, flag, expected in TABLE:
        if flag != has_bf16 and device == "cpu":
            continue
        assert student_dtype(device, name) == expected, (name, device)
        assert pick_dtype(name, torch.device(device)) == (expected or torch.float32), (name, device)
    # The word that used to mean two dtypes: fp16 on CPU is float16 for the VAE and the students alike.
    assert student_dtype("cpu", "fp16") == pick_dtype("fp16", torch.device("cpu")) == torch.float16


def test_auto_on_this_machine_is_unchanged():
    """``auto`` resolves as before the policy moved (the main job's numbers depend on it)."""
    flags = open("/proc/cpuinfo").read()
    has = "avx512_bf16" in flags or "amx_bf16" in flags
    assert precision.cpu_supports_bf16() is has
    assert precision.autocast_dtype("auto", "cpu") == (torch.bfloat16 if has else None)


def test_student_trains_in_fp16_autocast_on_cpu(monkeypatch):
    """``fp16`` on CPU is float16 autocast (with a GradScaler, as on CUDA), not bf16 as before the one policy."""
    import numpy as np

    from ddoq_ray.config import TrainConfig
    from ddoq_ray.students import train as student_train

    seen = []
    real_autocast = student_train.autocast

    def spy(device, dtype):
        seen.append(dtype)
        return real_autocast(device, dtype)

    monkeypatch.setattr(student_train, "autocast", spy)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(2), 8)
    images = np.clip(np.array([[200, 40, 40], [40, 40, 200]])[labels][:, None, None, :]
                     + rng.normal(0, 20, (16, 8, 8, 3)), 0, 255).astype(np.uint8)
    data = {"images": images, "labels": labels.astype(np.int64), "weights": np.ones(16, np.float32)}
    cfg = TrainConfig(student="convnet3", image_size=8, epochs=1, batch_size=8, precision="fp16")
    res = student_train.fit_student(data, data, None, cfg, seed=0, num_classes=2, device="cpu")
    assert seen and set(seen) == {torch.float16}
    assert np.isfinite(res["train_loss"]) and 0.0 <= res["top1"] <= 1.0
