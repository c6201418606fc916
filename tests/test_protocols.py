"""Protocol presets (ddoq_ray/students/protocols.py) resolve to their documented hyperparameters."""

from pathlib import Path

import pytest

from ddoq_ray.config import TrainConfig, load_config
from ddoq_ray.errors import DdoqError
from ddoq_ray.students.protocols import PRESETS, get, train_overrides, unsupported

REPO = Path(__file__).resolve().parents[1]


def resolved(name, ipc=10, n_classes=10):
    return TrainConfig(**train_overrides(name, ipc, n_classes))


def test_rded_online_t20_half_cosine_best_of_last_20pct():
    t = resolved("rded")
    assert (t.label_mode, t.temperature, t.mix, t.cutmix_prob, t.cutmix_beta) == ("online", 20.0, "cutmix", 1.0, 1.0)
    assert (t.epochs, t.batch_size, t.weight_decay, t.min_crop_scale) == (300, 50, 0.01, 0.5)
    assert t.lr is None and t.resolved_lr() == 1e-3  # RDED's per-student lr: 1e-3 for ConvNets
    assert resolved("rded", ipc=50).batch_size == 100
    assert resolved("rded", ipc=10, n_classes=1000).batch_size == 100  # ImageNet-1K: doubled
    assert resolved("rded", ipc=1).batch_size == 10  # capped at the set's size
    p = get("rded")
    assert (p.reported, p.eval_every, p.schedule) == ("best_last_20pct", 10, "half_cosine")
    assert (t.optimizer, t.schedule, t.reported, t.eval_every) == ("adamw", "half_cosine", "best_last_20pct", 10)
    assert unsupported("rded") == {}


def test_sre2l_precomputed_fkd():
    t = resolved("sre2l", ipc=10, n_classes=1000)
    assert (t.label_mode, t.temperature, t.lr, t.weight_decay, t.epochs) == ("precomputed", 20.0, 1e-3, 0.01, 300)
    assert (t.batch_size, t.min_crop_scale, t.cutmix_prob) == (1024, 0.08, 1.0)
    assert resolved("sre2l").batch_size == 100  # CIFAR-10 IPC 10: the whole set per step
    assert get("sre2l").reported == "final" and unsupported("sre2l") == {}


def test_dd_ranking_cifar10_setting():
    t = resolved("dd_ranking")
    assert (t.label_mode, t.temperature, t.epochs, t.batch_size, t.min_crop_scale) == ("online", 20.0, 500, 100, 0.08)
    assert t.seeds == [0, 1, 42, 1234, 3407] and t.weight_decay == 0.01  # SoftLabelEvaluator's seed_list
    assert (t.lr, t.reported, t.eval_every, t.optimizer, t.schedule) == (0.01, "best", 20, "adamw", "half_cosine")
    assert set(get("dd_ranking").deviations) == {"lr", "loss_scale", "teacher", "score"}  # no lr search


def test_hard_is_minimax_sgd_with_step_decay():
    o = train_overrides("hard", 10, 10)
    assert o == {"label_mode": "hard", "epochs": 2000, "mix": "cutmix", "cutmix_beta": 1.0, "seeds": [0, 1, 2],
                 "optimizer": "sgd", "lr": 0.01, "schedule": "step", "reported": "final"}
    assert train_overrides("hard", 50, 10)["epochs"] == 1500
    assert unsupported("hard") == {}
    t = resolved("hard")
    assert (t.optimizer, t.resolved_lr(), t.momentum, t.schedule) == ("sgd", 0.01, 0.9, "step")


def test_ddoq_hard_is_exactly_the_main_jobs_train_section():
    main = load_config(REPO / "configs" / "cifar10_taesd_ipc10.yaml").train
    for key, value in train_overrides("ddoq_hard", 10, 10).items():
        assert getattr(main, key) == value, key
    assert unsupported("ddoq_hard") == {}


def test_a_preset_config_loads_with_every_field_applied(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {train: train.parquet}\ntrain: {protocol: hard, epochs: 7}\n")
    t = load_config(cfg).train
    assert (t.optimizer, t.schedule, t.lr, t.epochs, t.label_mode) == ("sgd", "step", 0.01, 7, "hard")  # --set wins


def test_every_preset_names_sources_and_resolves():
    for name, p in PRESETS.items():
        assert p.sources.get("all"), name
        assert p.reported in ("final", "best_last_20pct", "best")
        TrainConfig(**train_overrides(name, 50, 100))  # every override is a valid train: field
    with pytest.raises(DdoqError, match="train.protocol"):
        get("dc")
