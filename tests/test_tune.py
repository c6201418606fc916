"""Ray Tune sweeps: search-space parsing and validation, and a 2-trial ASHA sweep that resumes."""

from __future__ import annotations

import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_students import TEACHER, _load_cifar, needs_assets

from ddoq_ray.config import ConfigError, TrainConfig, TuneConfig, load_config
from ddoq_ray.tune import best_trial, max_epochs, param_space, sweep, table


def test_param_space_maps_yaml_to_tune_samplers():
    from ray.tune.search.sample import Categorical, Float

    space = {"lr": {"loguniform": [1e-4, 1e-2]}, "weight_scheme": {"choice": ["uniform", "mass"]},
             "epochs": {"grid": [10, 20]}, "temperature": 4.0}
    out = param_space(TuneConfig(search_space=space).search_space)
    assert isinstance(out["lr"], Float) and out["lr"].lower == 1e-4
    assert isinstance(out["weight_scheme"], Categorical) and out["weight_scheme"].categories == ["uniform", "mass"]
    assert out["epochs"] == {"grid_search": [10, 20]} and out["temperature"] == 4.0
    assert max_epochs(TrainConfig(epochs=5), space) == 20
    assert max_epochs(TrainConfig(epochs=5), {}) == 5


@pytest.mark.parametrize(("space", "msg"), [
    ({"learning_rate": 0.1}, "not a train field"),
    ({"lr": {"lognormal": [1, 2]}}, "expected one of"),
    ({"weight_scheme": {"choice": ["mass", "heavy"]}}, "invalid"),
    ({"lr": {"uniform": [1e-3]}}, "expected 2 numbers"),
])
def test_bad_search_space_is_a_config_error(tmp_path, space, msg):
    p = tmp_path / "c.yaml"
    p.write_text(json.dumps({"data": {"train": "x"}, "tune": {"search_space": space}}))
    with pytest.raises(ConfigError, match=msg):
        load_config(p)


def test_shipped_tune_config_is_valid():
    cfg = load_config("configs/cifar10_tune.yaml")
    assert cfg.tune is not None and cfg.tune.num_samples >= 8 and cfg.tune.trainer == "function"
    assert {"lr", "weight_scheme", "temperature", "epochs"} <= set(cfg.tune.search_space)


@needs_assets
def test_two_trial_sweep_writes_results_and_resumes(ray_session, tmp_path):
    x, y = _load_cifar("train", 10)
    xv, yv = _load_cifar("train", 10, offset=100)
    rng = np.random.default_rng(0)
    train = {"images": x, "labels": y, "mass": rng.uniform(0.05, 0.2, len(y))}
    tcfg = TrainConfig(student="convnet3", epochs=4, batch_size=50, precision="auto")
    tc = TuneConfig(search_space={"lr": {"grid": [1e-3, 3e-3]}, "weight_scheme": {"choice": ["mass"]}},
                    num_samples=1, grace_period=2, eval_every=2, cpus_per_trial=1, report_test=True)
    spec = {"path": str(TEACHER), "arch": "resnet56_cifar", "class_index": None}
    t0 = time.perf_counter()
    rows = sweep(train, {"images": xv, "labels": yv}, {"images": xv, "labels": yv}, spec, tcfg, tc, 10, tmp_path,
                 "sweep-test")
    first_s = time.perf_counter() - t0
    assert len(rows) == 2 and all(r["error"] is None for r in rows), rows
    assert sorted(r["lr"] for r in rows) == [1e-3, 3e-3]
    for r in rows:
        assert 0.0 <= r["val_top1"] <= 1.0 and r["epoch"] in (2, 4)
    best = best_trial(rows)
    assert best is not None and best["val_top1"] == max(r["val_top1"] for r in rows if not r["stopped_early"])
    assert "val top-1" in table(rows, ["lr", "weight_scheme"])
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "results.parquet")  # plain Arrow types
    # The experiment folder exists: a second call restores it (Tuner.restore) instead of training again.
    t1 = time.perf_counter()
    again = sweep(train, {"images": xv, "labels": yv}, None, spec, tcfg, tc, 10, tmp_path, "sweep-test")
    assert sorted(r["trial_id"] for r in again) == sorted(r["trial_id"] for r in rows)
    assert time.perf_counter() - t1 < first_s
