"""The trial trainables: one student per trial, as a Tune function or a TorchTrainer driver."""

from __future__ import annotations

import logging
import os
import tempfile

import numpy as np

from ..config import TrainConfig

log = logging.getLogger("ddoq_ray")


CKPT_FILE = "state.pt"


def trial_cfg(base: dict, config: dict) -> TrainConfig:
    return TrainConfig.model_validate({**base, **{k: v for k, v in config.items() if k in TrainConfig.model_fields}})


def _weights(data: dict, cfg: TrainConfig, method: str) -> np.ndarray:
    """The trial's per-image weights (its own weight_* values may be swept): :mod:`ddoq_ray.artifacts.methods`."""
    from ..artifacts.methods import method_weights

    return method_weights(method, data["labels"], data["mass"], cfg)


def function_trial(config: dict, data: dict) -> None:
    """Tune function trainable: one student, ``ray.tune.report`` (+ checkpoint) at every validation."""
    import torch
    from ray import tune

    from ..students.teachers import build_teacher
    from ..students.train import default_device, fit_loop

    cfg = trial_cfg(data["base"], config)
    torch.set_num_threads(max(1, int(data["threads"])))
    train = {"images": data["train"]["images"], "labels": data["train"]["labels"],
             "weights": _weights(data["train"], cfg, data["method"])}
    teacher = None if cfg.label_mode == "hard" else build_teacher(data["spec"], data["num_classes"],
                                                                    cfg.image_size)
    start_state = None
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            start_state = torch.load(os.path.join(d, CKPT_FILE), map_location="cpu", weights_only=False)

    def on_epoch(metrics: dict, make_state, final: bool) -> None:
        if "val_top1" not in metrics:
            return
        rep = {"epoch": metrics["epoch"], "val_top1": metrics["val_top1"], "train_loss": metrics["train_loss"],
               "epochs": cfg.epochs, "finished": final}
        if final and metrics.get("top1") is not None:
            rep["test_top1"] = metrics["top1"]
        with tempfile.TemporaryDirectory() as d:
            torch.save(make_state(), os.path.join(d, CKPT_FILE))
            tune.report(rep, checkpoint=tune.Checkpoint.from_directory(d))

    fit_loop(train, data["test"], teacher, cfg, data["seed"], data["num_classes"], device=default_device(),
         on_epoch=on_epoch, start_state=start_state, val=data["val"], val_every=data["eval_every"])


def torch_trainer_trial(config: dict, data: dict) -> None:
    """Tune trial driver: a Ray Train ``TorchTrainer`` whose reports reach Tune via ``TuneReportCallback``."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from ..students.ray_train import train_student_ray

    cfg = trial_cfg(data["base"], config)
    train = {"images": data["train"]["images"], "labels": data["train"]["labels"],
             "weights": _weights(data["train"], cfg, data["method"])}
    spec = None if cfg.label_mode == "hard" else data["spec"]
    trial = tune.get_context().get_trial_id()
    test = data["test"] if data["test"] is not None else data["val"]
    # Every report (epoch, val_top1, epochs, finished, test_top1 at the end) comes from the Train workers through
    # TuneReportCallback; a report from this driver after fit() would never arrive when ASHA stops the trial at
    # max_t, which it does as soon as the last epoch's report comes in.
    train_student_ray(train, test, spec, cfg, data["seed"], data["num_classes"], data["storage"], f"trial-{trial}",
                      val=data["val"], val_every=data["eval_every"], callbacks=[TuneReportCallback()],
                      tune_keys=True, tune_test=data["test"] is not None)
