"""Ray Train layer: :func:`~ddoq_ray.students.train.fit_student`'s loop inside a Ray Train V2 ``TorchTrainer``
(checkpoints every ``cfg.checkpoint_every`` epochs, resume, ``FailureConfig(cfg.max_failures)`` worker restarts,
optional data-parallel workers, and per-validation reports for Tune's ``TuneReportCallback``)."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch

from ddoq_ray.config import TrainConfig
from ddoq_ray.students.teachers import build_teacher
from ddoq_ray.students.train import fit_loop

CKPT_FILE = "state.pt"



def _cpu_threads() -> int:
    """Threads for torch in this worker: the CPUs Ray assigned it (G15: Ray sets OMP_NUM_THREADS and the
    setting sticks per worker process), or all cores in local mode."""
    try:
        import ray

        if ray.is_initialized():
            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
            if cpus:
                return max(1, int(cpus))
    except Exception:  # noqa: BLE001 - local mode outside a Ray worker
        pass
    return max(1, os.cpu_count() or 1)


def _train_loop_per_worker(config: dict) -> dict:
    import ray
    import ray.train
    import ray.train.torch

    cfg = TrainConfig.model_validate(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    local = config["local_mode"]
    if not local:
        torch.set_num_threads(_cpu_threads())
    device = ray.train.torch.get_device()

    def fetch(x):
        return ray.get(x) if isinstance(x, ray.ObjectRef) else x

    train, test = fetch(config["train"]), fetch(config["test"])
    teacher = build_teacher(config["teacher_spec"], config["num_classes"], cfg.image_size)
    start_state = None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            start_state = torch.load(os.path.join(d, CKPT_FILE), map_location="cpu", weights_only=False)

    last_report = [time.monotonic()]
    fault = config.get("fault") or {}
    val, val_every = fetch(config.get("val")), int(config.get("val_every") or 0)

    tune_keys = bool(config.get("tune_keys"))

    def on_epoch(metrics: dict, make_state: Callable[[], dict], final: bool) -> None:
        if tune_keys:  # what ddoq_ray.tune's result rows read (the reports reach Tune via TuneReportCallback)
            metrics = {**metrics, "epochs": cfg.epochs, "finished": bool(final)}
            if final and config.get("tune_test") and metrics.get("top1") is not None:
                metrics["test_top1"] = metrics["top1"]
        # Train V2's worker result queue holds ONE result and the controller drains it every
        # RAY_TRAIN_HEALTH_CHECK_INTERVAL_S (2 s), so a report per 0.3 s epoch would block ~2 s each. Report
        # only at checkpoint epochs, at validation epochs (Tune), at the end, and (progress) when the last report
        # is >= 30 s old.
        epoch = metrics["epoch"]
        is_val = val is not None and val_every and epoch % val_every == 0
        if not (final or epoch % cfg.checkpoint_every == 0):
            if is_val:
                last_report[0] = time.monotonic()
                ray.train.report(metrics)
            elif time.monotonic() - last_report[0] >= 30.0:
                last_report[0] = time.monotonic()
                ray.train.report(metrics)
            return
        last_report[0] = time.monotonic()
        state = make_state() if rank == 0 else None
        if local:  # local mode keeps only a reference to the checkpoint: it must outlive this function
            d = os.path.join(config["local_ckpt_dir"], f"checkpoint_epoch_{epoch:06d}")
            os.makedirs(d, exist_ok=True)
            torch.save(state, os.path.join(d, CKPT_FILE))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
            return
        with tempfile.TemporaryDirectory() as d:
            checkpoint = None
            if rank == 0:
                torch.save(state, os.path.join(d, CKPT_FILE))
                checkpoint = ray.train.Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=checkpoint)
        _maybe_inject_fault(fault, epoch, rank)

    wrap = ray.train.torch.prepare_model if world > 1 else None
    return fit_loop(train, test, teacher, cfg, config["seed"], config["num_classes"], device=device, rank=rank,
                world_size=world, wrap_model=wrap, on_epoch=on_epoch, start_state=start_state, val=val,
                val_every=val_every)


def _maybe_inject_fault(fault: dict, epoch: int, rank: int) -> None:
    """Test hook: kill this worker process (``os._exit(1)``) right after the checkpoint of ``fault["epoch"]``,
    once: the first attempt creates ``fault["flag_file"]``, the restarted attempt sees it and carries on. Waits
    ``fault["delay_s"]`` (default 5 s) first: the controller drains reports every 2 s
    (RAY_TRAIN_HEALTH_CHECK_INTERVAL_S) and must register the checkpoint before the worker dies."""
    if not fault or epoch != fault.get("epoch") or rank != 0:
        return
    flag = fault["flag_file"]
    if os.path.exists(flag):
        return
    with open(flag, "w") as f:
        f.write(f"killed after epoch {epoch}\n")
    time.sleep(float(fault.get("delay_s", 5.0)))
    os._exit(1)


def resolve_use_gpu(use_gpu: Any) -> bool:
    if use_gpu == "auto":
        import ray

        if ray.is_initialized():
            return ray.cluster_resources().get("GPU", 0) > 0
        return torch.cuda.is_available()
    return bool(use_gpu)


def train_student_ray(
    train: dict,
    test: dict,
    teacher_spec: dict | None,
    cfg: TrainConfig,
    seed: int,
    num_classes: int,
    storage_path: str,
    name: str,
    *,
    val: dict | None = None,
    val_every: int = 0,
    callbacks: list | None = None,
    fault: dict | None = None,
    tune_keys: bool = False,
    tune_test: bool = False,
) -> dict:
    """Run :func:`~ddoq_ray.students.train.fit_student`'s loop in a Ray Train V2 ``TorchTrainer``; return its
    final metrics.

    Args:
        train, test: as for :func:`fit_student`; put in the object store once (``ray.put``) and fetched by the
            workers (``cfg.num_workers == 0``: Ray Train local mode, passed directly and run in the driver).
        teacher_spec: ``{"path": ckpt, "arch": name, "class_index": list | None, "num_classes": int
            (optional, default: inferred from the checkpoint when class_index is set)}`` (loaded inside the
            worker with :func:`~ddoq_ray.students.teachers.load_teacher`), or
            ``{"state_dict": dict | ObjectRef, "arch": name, "num_classes": int (optional)}`` for a teacher
            trained by :func:`train_teacher`, or None (hard labels).
        cfg: ``num_workers`` data-parallel workers (shards the indices by rank, wraps the model in DDP),
            ``cpus_per_worker`` (= torch threads per worker), ``use_gpu`` ("auto" = the cluster has GPUs),
            ``checkpoint_every``, ``precision``.
        storage_path, name: Ray Train run directory ``storage_path/name`` (a local path or a URI such as
            ``s3://bucket/run/train/attempt-x/ray``). A run directory with checkpoints
            from an earlier attempt of the same name is resumed by Ray Train.
        val, val_every: validation set reported as ``val_top1`` every ``val_every`` epochs (Tune).
        callbacks: Ray Train ``UserCallback``s (e.g. Tune's ``TuneReportCallback``); the active tracking's
            :class:`~ddoq_ray.tracking.StudentTracker` is added (:func:`ddoq_ray.tracking.session`).
        fault: test hook ``{"flag_file": path, "epoch": e}``: the first attempt's worker exits after the
            checkpoint at epoch ``e`` (see :func:`_maybe_inject_fault`).
        tune_keys: add ``epochs`` (planned) and ``finished`` to every report, for a Tune trial
            (:mod:`ddoq_ray.tune`); with ``tune_test`` the final report also carries ``test_top1`` (= ``top1``).

    Returns:
        ``{"top1", "train_loss", "epochs", "n_train", "start_epoch", "wall_s"}`` (top1 on the full test set at
        the end; start_epoch > 0 when the final attempt resumed from a checkpoint).

    Raises:
        ray.train.TrainingFailedError: the loop failed more than ``FailureConfig(cfg.max_failures)`` times.
    """
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ddoq_ray.tracking import student_callbacks

    t0 = time.perf_counter()
    trackers = student_callbacks(name)  # tracking: section (ddoq_ray.tracking); [] when off
    local = cfg.num_workers == 0
    spec = teacher_spec
    if local:
        train_ref, test_ref = train, test
    else:
        train_ref, test_ref = ray.put(train), ray.put(test)
        val = ray.put(val) if val is not None else None
        if spec is not None and isinstance(spec.get("state_dict"), dict):
            spec = {**spec, "state_dict": ray.put(spec["state_dict"])}
    from ddoq_ray import storage

    # Ray Train writes run folders and checkpoints through this filesystem (local disk, S3, GCS), so workers on any
    # node reach them without a shared mount.
    fs, fs_path = storage.resolve(storage_path)
    # Local mode runs in the driver and keeps checkpoints in a folder of its own: beside the run on local disks,
    # a scratch folder when the run lives in a bucket (Ray Train still uploads each checkpoint to storage_path).
    local_ckpt_dir = (tempfile.mkdtemp(prefix=f"ddoq-{name}-") if storage.is_uri(storage_path)
                      else os.path.join(fs_path, name, "local_checkpoints"))
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config={
            "cfg": cfg.model_dump(mode="json"),
            "train": train_ref,
            "test": test_ref,
            "teacher_spec": spec,
            "seed": seed,
            "num_classes": num_classes,
            "local_mode": local,
            "local_ckpt_dir": local_ckpt_dir,
            "val": val,
            "val_every": val_every,
            "fault": fault,
            "tune_keys": tune_keys,
            "tune_test": tune_test,
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=resolve_use_gpu(cfg.use_gpu),
            resources_per_worker=None if local else {"CPU": cfg.cpus_per_worker},
        ),
        run_config=RunConfig(
            name=name,
            storage_path=fs_path,
            storage_filesystem=fs,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=[*(callbacks or []), *trackers],
        ),
    )
    result = trainer.fit()
    out = getattr(result, "return_value", None)
    if not isinstance(out, dict):  # fall back to the last report (carries a checkpoint, so it is set: G13)
        m = result.metrics or {}
        out = {"top1": m.get("top1"), "train_loss": m.get("train_loss"), "epochs": m.get("epoch"),
               "n_train": len(train["labels"])}
    out = dict(out)
    if out.get("top1") is None:
        raise RuntimeError(f"student run {name}: no top1 in the final report ({result.metrics})")
    out["wall_s"] = time.perf_counter() - t0
    for t in trackers:
        t.finish(out)
    return out
