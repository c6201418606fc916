"""Students: architectures, teacher loading, losses, augmentation, deterministic training, one Ray run."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ddoq_ray.config import TrainConfig
from ddoq_ray.students import (
    build_model,
    cutmix,
    evaluate,
    fit_student,
    load_teacher,
    random_resized_crop_flip,
    soft_label_kl,
    train_student_ray,
)

ASSETS = Path(os.environ.get("DDOQ_ASSETS", Path(__file__).resolve().parents[1].parent / "shared"))
TEACHER = ASSETS / "models" / "cifar10_resnet_akamaster" / "resnet56-4bfd9763.th"
CIFAR = ASSETS / "data" / "cifar10"

needs_assets = pytest.mark.skipif(
    not (TEACHER.is_file() and (CIFAR / "test.parquet").is_file()), reason=f"assets not found under {ASSETS}"
)


def _load_cifar(split: str, per_class: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The first ``per_class`` images of every class (rows are sorted by class), starting at ``offset``."""
    import pyarrow.parquet as pq
    from PIL import Image

    t = pq.read_table(CIFAR / f"{split}.parquet", columns=["image", "label"])
    labels = t["label"].to_numpy().astype(np.int64)
    idx = np.concatenate([np.flatnonzero(labels == c)[offset:offset + per_class] for c in range(10)])
    col = t["image"]
    imgs = np.stack([np.asarray(Image.open(io.BytesIO(col[int(i)].as_py())).convert("RGB")) for i in idx])
    assert imgs.shape == (len(idx), 32, 32, 3) and imgs.dtype == np.uint8
    return imgs, labels[idx]


@pytest.fixture(scope="module")
def cifar_test_500():
    return _load_cifar("test", 50)


# ----------------------------------------------------------------------------------------------- models


@pytest.mark.parametrize(
    ("name", "n_params"), [("convnet3", 320_010), ("resnet20_cifar", 269_722), ("resnet18", 11_173_962)]
)
def test_model_output_shapes(name, n_params):
    torch.manual_seed(0)
    m = build_model(name, 10, 32).eval()
    with torch.no_grad():
        out = m(torch.rand(4, 3, 32, 32))
    assert out.shape == (4, 10)
    assert torch.isfinite(out).all()
    assert sum(p.numel() for p in m.parameters()) == n_params


def test_timm_resnet_gets_cifar_stem():
    m = build_model("resnet18", 7, 32)
    assert m.model.conv1.kernel_size == (3, 3) and m.model.conv1.stride == (1, 1)
    assert isinstance(m.model.maxpool, torch.nn.Identity)
    assert build_model("resnet18", 7, 224).model.conv1.kernel_size == (7, 7)


def test_convnet3_other_size_and_unknown_name():
    assert build_model("convnet3", 3, 64)(torch.rand(2, 3, 64, 64)).shape == (2, 3)
    with pytest.raises(ValueError, match="convnet3, resnet20_cifar, resnet56_cifar"):
        build_model("no_such_net", 10, 32)


def test_resnet56_parameter_names_match_checkpoint_layout():
    keys = set(build_model("resnet56_cifar", 10, 32).state_dict())
    assert {"conv1.weight", "bn1.running_mean", "layer3.8.bn2.weight", "linear.weight", "linear.bias"} <= keys
    assert not any("shortcut" in k or "norm" in k for k in keys)  # option A: parameter-free shortcut


# ---------------------------------------------------------------------------------------------- teacher


@needs_assets
def test_teacher_loads_strictly_and_is_accurate(cifar_test_500):
    x, y = cifar_test_500
    teacher = load_teacher(str(TEACHER), "resnet56_cifar", 10)
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    top1 = evaluate(teacher, x, y, 250)
    assert top1 > 0.75, top1  # measured 0.830 on these 50/class (README: 83.2 % on the full test set)


@needs_assets
def test_teacher_class_index_selects_columns():
    full = load_teacher(str(TEACHER), "resnet56_cifar", 10)
    sub = load_teacher(str(TEACHER), "resnet56_cifar", 10, class_index=[3, 5, 7])
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        a, b = full(x), sub(x)
    assert b.shape == (5, 3)
    torch.testing.assert_close(b, a[:, [3, 5, 7]])


def test_teacher_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.th"):
        load_teacher(str(tmp_path / "missing.th"), "resnet56_cifar", 10)
    bad = tmp_path / "r20.th"
    sd = {"module." + k: v for k, v in build_model("resnet20_cifar", 10, 32).state_dict().items()}
    torch.save({"state_dict": sd}, bad)
    with pytest.raises(ValueError, match="does not fit"):
        load_teacher(str(bad), "resnet56_cifar", 10)
    assert load_teacher(str(bad), "resnet20_cifar", 10)(torch.rand(1, 3, 32, 32)).shape == (1, 10)


# ------------------------------------------------------------------------------------------------ losses


def test_kl_zero_for_identical_logits_and_linear_in_weights():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g)
    w = torch.rand(8, generator=g)
    assert soft_label_kl(t, t, w, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    base = soft_label_kl(s, t, w, 4.0)
    assert base.item() > 0
    torch.testing.assert_close(soft_label_kl(s, t, 3.0 * w, 4.0), 3.0 * base)
    torch.testing.assert_close(soft_label_kl(s, t, None, 4.0), soft_label_kl(s, t, torch.ones(8), 4.0))
    # Definition: mean_i w_i KL(p_t || p_s) T^2.
    p_t, log_p_s = torch.softmax(t / 2, 1), torch.log_softmax(s / 2, 1)
    ref = (w * (p_t * (p_t.log() - log_p_s)).sum(1)).mean() * 4
    torch.testing.assert_close(soft_label_kl(s, t, w, 2.0), ref)


def test_zero_weight_sample_gets_no_gradient():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(4, 10, generator=g, requires_grad=True)
    t = torch.randn(4, 10, generator=g)
    soft_label_kl(s, t, torch.tensor([1.0, 0.0, 2.0, 0.5]), 4.0).backward()
    assert torch.count_nonzero(s.grad[1]) == 0
    assert torch.count_nonzero(s.grad[0]) > 0


def test_cutmix_mixes_weights_by_actual_box_area():
    g = torch.Generator().manual_seed(3)
    x = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 3, 16, 16).contiguous()
    w = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    xm, wm, lam, perm = cutmix(x, w, 1.0, g, return_perm=True)
    assert 0.0 <= lam <= 1.0 and xm.shape == x.shape
    torch.testing.assert_close(wm, lam * w + (1 - lam) * w[perm])
    # lam is the fraction of each image that still shows its own pixels.
    own = (xm[:, 0] == x[:, 0]).float().mean(dim=(1, 2))
    moved = perm != torch.arange(6)
    torch.testing.assert_close(own[moved], torch.full((int(moved.sum()),), lam))
    # Same generator seed -> same mix; 3-tuple by default.
    xm2, wm2, lam2 = cutmix(x, w, 1.0, torch.Generator().manual_seed(3))
    assert lam2 == lam and torch.equal(xm2, xm) and torch.equal(wm2, wm)


def test_augment_is_seeded_and_keeps_shape():
    x = torch.rand(5, 3, 32, 32)
    a = random_resized_crop_flip(x, 0.5, torch.Generator().manual_seed(0))
    b = random_resized_crop_flip(x, 0.5, torch.Generator().manual_seed(0))
    c = random_resized_crop_flip(x, 0.5, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= -1e-4 and float(a.max()) <= 1 + 1e-4
    flip_only = random_resized_crop_flip(x, 1.0, torch.Generator().manual_seed(0), flip_p=1.0)
    torch.testing.assert_close(flip_only, x.flip(-1))


# -------------------------------------------------------------------------------------------- training


def _synthetic(n_per_class: int, seed: int) -> dict:
    """Three classes that differ in mean colour: learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), n_per_class)
    base = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]])[labels]
    noise = rng.normal(0, 30, (len(labels), 16, 16, 3))
    imgs = np.clip(base[:, None, None, :] + noise, 0, 255).astype(np.uint8)
    return {"images": imgs, "labels": labels.astype(np.int64), "weights": np.ones(len(labels), np.float32)}


def test_fit_student_is_deterministic_and_learns():
    cfg = TrainConfig(student="convnet3", image_size=16, epochs=4, batch_size=16, lr=3e-3, precision="fp32")
    train, test = _synthetic(10, 0), _synthetic(20, 1)
    r1 = fit_student(train, test, None, cfg, seed=0, num_classes=3, device="cpu")
    r2 = fit_student(train, test, None, cfg, seed=0, num_classes=3, device="cpu")
    r1.pop("train_s"), r2.pop("train_s")  # wall time
    assert r1 == r2
    assert r1["epochs"] == 4 and r1["n_train"] == 30
    assert r1["top1"] > 0.9, r1


def test_fit_student_zero_weights_do_not_train():
    cfg = TrainConfig(student="convnet3", image_size=16, epochs=2, batch_size=16, weight_decay=0.0,
                      precision="fp32")
    train = _synthetic(10, 0)
    train["weights"] = np.zeros(30, np.float32)
    states = []
    fit_student(train, _synthetic(2, 1), None, cfg, seed=0, num_classes=3, device="cpu",
                on_epoch=lambda m, make_state, final: states.append(make_state()["model"]))
    torch.manual_seed(0)
    init = build_model("convnet3", 3, 16).state_dict()
    assert len(states) == 2
    for k, v in states[-1].items():  # zero grad + wd 0: unchanged
        torch.testing.assert_close(v, init[k], rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------- Ray


@needs_assets
def test_train_student_ray_distills_from_teacher(ray_session, tmp_path):
    x, y = _load_cifar("train", 10)
    xt, yt = _load_cifar("test", 50)
    cfg = TrainConfig(student="convnet3", epochs=30, batch_size=64, num_workers=1, cpus_per_worker=2,
                      use_gpu=False, checkpoint_every=10)
    spec = {"path": str(TEACHER), "arch": "resnet56_cifar", "class_index": None}
    out = train_student_ray({"images": x, "labels": y, "weights": np.ones(len(y), np.float32)},
                            {"images": xt, "labels": yt}, spec, cfg, seed=0, num_classes=10,
                            storage_path=str(tmp_path), name="student-test")
    assert out["epochs"] == 30 and out["n_train"] == 100
    # Measured 0.224 / 0.230 (seeds 0 / 1) on these 500 test images; chance is 0.10.
    assert out["top1"] > 0.12, out
    ckpts = list((tmp_path / "student-test").glob("checkpoint_*"))
    assert ckpts, list((tmp_path / "student-test").iterdir())



def test_fit_student_resume_matches_uninterrupted_run():
    cfg = TrainConfig(student="convnet3", image_size=16, epochs=4, batch_size=8, lr=3e-3, precision="fp32")
    train, test = _synthetic(4, 0), _synthetic(4, 1)
    states = {}

    def keep(m, make_state, final):
        states[m["epoch"]] = make_state()

    full = fit_student(train, test, None, cfg, seed=5, num_classes=3, device="cpu", on_epoch=keep)
    resumed = fit_student(train, test, None, cfg, seed=5, num_classes=3, device="cpu", start_state=states[2])
    assert resumed["epochs"] == 4
    assert resumed["top1"] == full["top1"]
    assert resumed["train_loss"] == full["train_loss"]


def test_train_teacher_on_synthetic_data():
    from ddoq_ray.students import train_teacher

    train, test = _synthetic(10, 0), _synthetic(10, 1)
    model, top1 = train_teacher(train["images"], train["labels"], 3, "resnet20_cifar", epochs=3,
                                image_size=16, seed=0, test=test, batch_size=10)
    assert not model.training and all(not p.requires_grad for p in model.parameters())
    assert top1 is not None and top1 > 0.6, top1


def test_per_architecture_default_lr():
    from ddoq_ray.students.defaults import default_lr

    assert TrainConfig().lr is None and TrainConfig().resolved_lr() == 1e-3
    assert default_lr("resnet18") == 1e-3 and default_lr("convnet3") == 1e-3
    assert default_lr("efficientnet_b0") == 2e-3 and default_lr("mobilenetv2_100") == 2.5e-3
    assert default_lr("swin_tiny_patch4_window7_224") == 1e-4 and default_lr("vit_tiny_patch16_224") == 1e-4
    assert TrainConfig(student="mobilenetv2_100", lr=0.01).resolved_lr() == 0.01



@pytest.mark.slow  # 43 s; default-suite budget (README "Tests")
@needs_assets
def test_killed_worker_resumes_from_checkpoint(ray_session, tmp_path):
    """The worker exits (os._exit) right after its epoch-4 checkpoint on the first attempt; Ray Train restarts it
    (FailureConfig(max_failures)) and the new attempt resumes at epoch 4 and finishes all 8 epochs."""
    x, y = _load_cifar("train", 5)
    xt, yt = _load_cifar("test", 10)
    cfg = TrainConfig(student="convnet3", epochs=8, batch_size=50, num_workers=1, cpus_per_worker=2,
                      use_gpu=False, checkpoint_every=4, max_failures=1)
    spec = {"path": str(TEACHER), "arch": "resnet56_cifar", "class_index": None}
    flag = tmp_path / "killed.txt"
    out = train_student_ray({"images": x, "labels": y, "weights": np.ones(len(y), np.float32)},
                            {"images": xt, "labels": yt}, spec, cfg, seed=0, num_classes=10,
                            storage_path=str(tmp_path), name="ft", fault={"flag_file": str(flag), "epoch": 4})
    assert flag.read_text().startswith("killed after epoch 4")
    assert out["epochs"] == 8 and out["start_epoch"] == 4, out
    assert 0.0 <= out["top1"] <= 1.0


# ------------------------------------------------------------------------------------ students in parallel


def test_student_concurrency_fits_the_cluster(monkeypatch):
    import ray

    from ddoq_ray.evaluate import student_concurrency

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0, "GPU": 2.0})
    cpu = TrainConfig(use_gpu=False, num_workers=1, cpus_per_worker=2)
    assert student_concurrency(cpu, 9) == 4  # 8 CPUs / 2 per student
    assert student_concurrency(cpu, 3) == 3  # never more than there are students
    assert student_concurrency(cpu.model_copy(update={"num_workers": 2, "cpus_per_worker": 1.5}), 9) == 2
    assert student_concurrency(TrainConfig(use_gpu="auto", num_workers=1, cpus_per_worker=1), 9) == 2  # 2 GPUs
    assert student_concurrency(cpu.model_copy(update={"concurrent_students": 1}), 9) == 1
    assert student_concurrency(cpu.model_copy(update={"num_workers": 0}), 9) == 1  # local mode: in the driver
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 1.0})
    assert student_concurrency(cpu, 9) == 1  # a student bigger than the cluster still runs (one at a time)
    with pytest.raises(ValueError):
        TrainConfig(concurrent_students=0)


@pytest.mark.slow  # 35 s; default-suite budget (README "Tests")
def test_students_in_parallel_match_students_in_sequence(ray_session, tmp_path):
    """Two TorchTrainers at once (1 CPU each on the 2-CPU test cluster) give exactly the accuracies of the same
    students trained one after another in this process on 1 thread: concurrency changes scheduling, not results."""
    from ddoq_ray.artifacts.train_inputs import TrainInputs
    from ddoq_ray.config import load_config
    from ddoq_ray.evaluate import student_concurrency, train_many

    train, test = _synthetic(6, 0), _synthetic(20, 1)
    cfg = load_config("configs/smoke.yaml", ["train.image_size=16", "train.epochs=3", "train.batch_size=8",
                                            "train.cpus_per_worker=1", "train.use_gpu=false",
                                            "train.label_mode=hard", "train.precision=fp32"])
    syn = {"images": train["images"], "labels": train["labels"], "mass": np.linspace(0.5, 1.5, 18) / 18}
    inp = TrainInputs(cfg, str(tmp_path), None, test, 3, None, None, {"source": None}, {"minibatch": syn})
    jobs = [(cfg.train, "d4m", 0), (cfg.train, "ddoq", 1)]
    assert student_concurrency(cfg.train, len(jobs)) == 2
    par = train_many(inp, jobs, tmp_path / "par")
    assert [(r["method"], r["seed"]) for r in par] == [("d4m", 0), ("ddoq", 1)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        seq = [fit_student(inp.method_set(m, s, t), test, None, t, s, 3, device="cpu") for t, m, s in jobs]
    finally:
        torch.set_num_threads(threads)
    assert [r["top1"] for r in par] == [r["top1"] for r in seq]
    assert [r["train_loss"] for r in par] == pytest.approx([r["train_loss"] for r in seq], rel=1e-5)
