"""Experiment tracking (ddoq_ray.tracking): a Ray Train student and a run's results written to TensorBoard event
files (and a local MLflow file store when mlflow is installed) and read back; tracking changes no fingerprint."""

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from ddoq_ray import tracking
from ddoq_ray.config import ConfigError, TrainConfig, load_config
from ddoq_ray.stages import REGISTRY, fingerprint


def read_scalars(logdir: Path) -> dict[str, dict[int, float]]:
    """Every scalar in the event files under ``logdir``: ``{tag: {step: value}}`` (TFRecord framing: uint64
    length, uint32 crc, payload, uint32 crc; payload an ``Event`` proto, tensorboardX.proto.event_pb2)."""
    from tensorboardX.proto.event_pb2 import Event

    out: dict[str, dict[int, float]] = {}
    for f in sorted(logdir.rglob("events.out.tfevents.*")):
        data, pos = f.read_bytes(), 0
        while pos < len(data):
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            ev = Event.FromString(data[pos + 12:pos + 12 + n])
            pos += 12 + n + 4
            for v in ev.summary.value:
                if v.HasField("simple_value"):
                    out.setdefault(v.tag, {})[ev.step] = v.simple_value
    return out


def _cfg(tmp_path, *sets):
    return load_config("configs/smoke.yaml", [f"output_dir={tmp_path}", *sets])


def test_tracking_changes_no_fingerprint(tmp_path):
    from ddoq_ray.tune.run import fingerprint as tune_fp

    base = _cfg(tmp_path, "tune.num_samples=2")
    tracked = _cfg(tmp_path, "tune.num_samples=2", "tracking.backends=[tensorboard, mlflow]",
                   "tracking.experiment=x", "tracking.log_artifacts=false")
    assert tracked.tracking.backends == ["tensorboard", "mlflow"]
    assert {s: fingerprint(tracked, s) for s in REGISTRY} == {s: fingerprint(base, s) for s in REGISTRY}
    assert tune_fp(tracked) == tune_fp(base)
    with pytest.raises(ConfigError, match="tracking.backends"):
        _cfg(tmp_path, "tracking.backends=[neptune]")


def test_missing_backend_package_fails_before_any_work(tmp_path):
    pytest.importorskip("tensorboardX")
    if tracking.importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed")
    with pytest.raises(ConfigError, match=r"wandb \(pip install wandb\) not installed"):
        with tracking.session(_cfg(tmp_path, "tracking.backends=[wandb]"), str(tmp_path)):
            pass
    assert tracking.student_callbacks("x") == [] and tracking.tune_callbacks("s") == []


def _tiny_student(tmp_path, name):
    from ddoq_ray.students import train_student_ray

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    y = np.arange(8) % 2
    cfg = TrainConfig(student="convnet3", image_size=16, epochs=4, batch_size=4, lr=1e-3, num_workers=1,
                      cpus_per_worker=1, use_gpu=False, checkpoint_every=2, precision="fp32")
    return train_student_ray({"images": x, "labels": y, "weights": np.ones(8, np.float32)},
                             {"images": x, "labels": y}, None, cfg, seed=0, num_classes=2,
                             storage_path=str(tmp_path / "ray"), name=name)


RES = {"name": "smoke", "ipc": 5, "teacher": {"top1": 0.9},
       "w2_per_class": [{"w2_mass": 1.0, "w2_uniform": 2.0, "w2_random": 3.0},
                        {"w2_mass": 2.0, "w2_uniform": 3.0, "w2_random": 5.0}],
       "methods": {"d4m": {"top1_mean": 0.25, "top1_std": 0.0, "top1": [0.25]},
                   "ddoq": {"top1_mean": 0.5, "top1_std": 0.125, "top1": [0.375, 0.625]}}}


def test_student_and_results_in_tensorboard(ray_session, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "results.json").write_text(json.dumps({**RES, "run_dir": str(run_dir)}))
    cfg = _cfg(run_dir, "tracking.backends=[tensorboard]")
    with tracking.session(cfg, str(run_dir)) as tr:
        out = _tiny_student(tmp_path, "ddoq-seed0")
        tracking.log_results(tr, {**RES, "run_dir": str(run_dir)}, str(run_dir))
    assert tracking.student_callbacks("x") == []  # the session is over
    tb = run_dir / "tracking" / "tensorboard"
    student = read_scalars(tb / "students" / "ddoq-seed0")
    # reports at the checkpoint epochs 2 and 4 (checkpoint_every=2); the final numbers from the driver
    # the controller's after_report: the checkpoint report of epoch 2 (checkpoint_every=2); Ray 2.60 passes the
    # last report (epoch 4) to no user callback, so the driver logs the final numbers (StudentTracker.finish)
    assert list(student["train_loss"]) == [2] and student["epoch_s"][2] > 0
    assert student["final/top1"] == {4: pytest.approx(out["top1"])}
    assert student["final/train_loss"] == {4: pytest.approx(out["train_loss"])}
    assert student["final/wall_s"][4] == pytest.approx(out["wall_s"], rel=1e-6)
    run = read_scalars(tb / "run")
    assert {k: v[0] for k, v in run.items()} == pytest.approx({
        "d4m/top1_mean": 0.25, "d4m/top1_std": 0.0, "ddoq/top1_mean": 0.5, "ddoq/top1_std": 0.125,
        "teacher/top1": 0.9, "random/w2_mean": 4.0, "d4m/w2_mean": 2.5, "ddoq/w2_mean": 1.5})


def test_results_in_mlflow_file_store(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "results.json").write_text(json.dumps(RES))
    cfg = _cfg(run_dir, "tracking.backends=[mlflow]")
    with tracking.session(cfg, str(run_dir)) as tr:
        tracking.log_results(tr, RES, str(run_dir))
    client = MlflowClient(tr.mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("smoke").experiment_id])
    assert run.data.metrics["ddoq_top1_mean"] == 0.5 and run.data.params["quantize.ipc"] == "5"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["results.json"]
