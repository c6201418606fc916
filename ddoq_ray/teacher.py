"""The teacher stage: resolve the run's soft-label teacher once, train it when none is given, measure its top-1.

Three kinds (``train.teacher``): a checkpoint (path / ``assets:`` ref / URI, architecture ``train.teacher_arch``),
a library model (``timm:<name>`` / ``torchvision:<name>``), or None: ddoq-ray trains ``teacher_arch`` on the full
real train split for ``teacher_epochs`` epochs. The result is a committed stage (schema in
:mod:`ddoq_ray.artifacts.teacher`), keyed by everything that determines it, so changing the data, classes, image
size or epochs trains a new teacher instead of silently reusing an old one.
"""

from __future__ import annotations

import io
import logging

from . import storage
from .artifacts.teacher import INFO, WEIGHTS

log = logging.getLogger("ddoq_ray")


def teacher_spec(run) -> tuple[str, dict, str, str]:
    """``(kind, worker spec without weights, source, arch)`` for a checkpoint or library teacher; kind
    ``trained`` (empty spec) when ddoq-ray must train one."""
    from .students.teachers import is_named_teacher, named_class_index

    cfg = run.cfg
    ref = cfg.train.teacher or ""
    class_index = list(cfg.data.class_subset) if cfg.data.class_subset is not None else None
    if is_named_teacher(ref):
        class_index = named_class_index(run.classes, cfg.data.class_subset)
        return "named", {"named": ref, "class_index": class_index}, ref, ref
    if run.teacher_path:
        spec = {"path": run.teacher_path, "arch": cfg.train.teacher_arch, "num_classes": len(run.all_classes),
                "class_index": class_index}
        return "checkpoint", spec, run.teacher_path, cfg.train.teacher_arch
    return "trained", {}, "", cfg.train.teacher_arch


def teacher_stage(run, out: str, summary: dict) -> None:
    """The registered ``teacher`` stage: write ``teacher.json`` (and ``teacher.pt`` when trained here)."""
    import torch

    from .data import load_arrays
    from .students import evaluate, train_teacher
    from .students.teachers import build_teacher

    cfg, tcfg = run.cfg, run.cfg.train
    _ = run.train_index_file  # lists the split and sets run.classes
    n_classes = len(run.classes)
    kind, spec, source, arch = teacher_spec(run)
    if kind == "trained":
        log.info("teacher: no teacher checkpoint given; training %s on the full real train split", arch)
        real = load_arrays(run.train_index, cfg.data.image_column, tcfg.image_size)
        model, _ = train_teacher(real["images"], real["labels"], n_classes, arch, tcfg.teacher_epochs,
                                 tcfg.image_size, cfg.seed)
        state = {k: v.cpu() for k, v in model.state_dict().items()}
        buf = io.BytesIO()
        torch.save(state, buf)
        storage.write_bytes(storage.join(out, WEIGHTS), buf.getvalue())
        spec = {"arch": arch, "num_classes": n_classes}
        source = f"trained by ddoq-ray on the real train split, {tcfg.teacher_epochs} epochs"
        teacher = build_teacher({**spec, "state_dict": state}, n_classes, tcfg.image_size)
    elif tcfg.teacher_finetune_epochs:
        teacher, spec, source, kind = _finetune(run, kind, spec, source, arch, out)
    else:
        teacher = build_teacher(spec, n_classes, tcfg.image_size)
    top1 = None
    if run.test_src is not None:
        test = load_arrays(run.test_index, cfg.data.image_column, tcfg.image_size)
        top1 = evaluate(teacher, test["images"], test["labels"], tcfg.eval_batch_size)
        log.info("teacher: %s top-1 on the test split = %.4f", arch, top1)
    info = {"source": source, "arch": arch, "top1": top1, "kind": kind, "spec": spec}
    storage.write_json(storage.join(out, INFO), info)
    summary.update({"kind": kind, "top1": top1, "source": source})


def _finetune(run, kind: str, spec: dict, source: str, arch: str, out: str):
    """Fine-tune a checkpoint teacher on the run's real train split (``train.teacher_finetune_epochs``, AdamW
    ``teacher_finetune_lr``, cosine, RandomResizedCrop(0.5-1) + flip: :func:`ddoq_ray.students.train_teacher`)
    and store it like a teacher trained here (``kind: trained``, ``teacher.pt``).

    Raises:
        UserValueError: a library teacher or a checkpoint whose outputs are not the run's classes (a
            ``class_index`` selection): fine-tuning needs one output per run class.
    """
    import torch

    from .data import load_arrays
    from .errors import UserValueError
    from .students import train_teacher
    from .students.teachers import build_teacher

    cfg, tcfg = run.cfg, run.cfg.train
    n_classes = len(run.classes)
    if kind != "checkpoint" or spec.get("class_index") is not None or spec.get("num_classes") != n_classes:
        raise UserValueError("train.teacher_finetune_epochs: only a checkpoint teacher with one output per run "
                             f"class can be fine-tuned (teacher {source!r}, {kind}); set it to 0")
    base = build_teacher(spec, n_classes, tcfg.image_size)
    log.info("teacher: fine-tuning %s on the real train split for %d epochs (AdamW %g)", arch,
             tcfg.teacher_finetune_epochs, tcfg.teacher_finetune_lr)
    real = load_arrays(run.train_index, cfg.data.image_column, tcfg.image_size)
    model, _ = train_teacher(real["images"], real["labels"], n_classes, arch, tcfg.teacher_finetune_epochs,
                             tcfg.image_size, cfg.seed, lr=tcfg.teacher_finetune_lr, init=base)
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    storage.write_bytes(storage.join(out, WEIGHTS), buf.getvalue())
    src = (f"{source}, fine-tuned by ddoq-ray on the real train split for {tcfg.teacher_finetune_epochs} epochs "
           f"(AdamW {tcfg.teacher_finetune_lr:g}, cosine)")
    return model, {"arch": arch, "num_classes": n_classes}, src, "trained"
