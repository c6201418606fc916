"""Stage 4, train & evaluate: students trained on each distilled set, top-1 on the real test split.

Methods, all under the identical protocol (same teacher, augmentation, epochs, seeds, ``train.label_mode``):
- ``random``: IPC real images per class, drawn per seed from the images the encode stage accepted;
- ``d4m``: the decoded centroids with uniform weights (D4M, Su et al. CVPR 2024);
- ``ddoq``: the same images weighted by their cell masses (``train.weight_scheme``), normalised by
  ``train.weight_norm`` (default: mean 1 within each class, so the loss scale matches the uniform baseline).

Artifact ``<run>/train/<attempt>/`` (:func:`ddoq_ray.rundir.stage_path`): ``students.parquet`` (``method``,
``seed``, ``top1``, ``train_loss``, ``epochs``, ``n_train``, ``wall_s``, ``student``, ``lr``, ``label_mode``,
``label_bytes_per_image_epoch``), ``teacher.json`` (teacher source and its top-1, the full-data reference),
``labels/<method>-seed<s>/`` (``precomputed`` mode, see :mod:`ddoq_ray.students.labels`) and ``ray/`` (Ray Train
run folders with checkpoints, written through ``RunConfig(storage_filesystem=...)``).
``ddoq-ray evaluate --archs a,b`` adds ``<run>/train/matrix_runs.parquet`` (one row per arch, method, seed) and
``matrix.parquet`` (``method``, ``arch``, ``lr``, ``top1_mean``, ``top1_std``, ``n``).
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from . import storage
from .config import RunConfig, TrainConfig
from .rundir import stage_path
from .students.weights import sample_weights

log = logging.getLogger("ddoq_ray")


def random_subset(ids_by_class: dict[int, list[str]], ipc: int, seed: int) -> list[str]:
    """IPC ids per class drawn without replacement (all of a class when it has fewer), seeded."""
    rng = np.random.default_rng(seed)
    out: list[str] = []
    for c in sorted(ids_by_class):
        ids = sorted(ids_by_class[c])
        pick = rng.choice(len(ids), size=min(ipc, len(ids)), replace=False)
        out.extend(ids[i] for i in sorted(pick))
    return out


@dataclass
class EvalInputs:
    """Everything the students of one run share: the test split, the teacher, the distilled set."""

    cfg: RunConfig
    run_dir: str
    train_index: pa.Table
    test: dict
    n_classes: int
    teacher: object
    spec: dict | None
    teacher_info: dict
    syn: dict
    ids_by_class: dict[int, list[str]] = field(default_factory=dict)


def make_teacher(cfg: RunConfig, run_dir: str, train_index: pa.Table, test: dict, n_classes: int,
                 all_classes: list[str], teacher_path: str | None,
                 classes: list[str] | None = None) -> tuple[object, dict, dict]:
    """The run's teacher: a checkpoint, a library model (``timm:<name>`` / ``torchvision:<name>``), or one
    trained by ddoq-ray on the full real train split, cached as ``<run>/teacher/<arch>-e<epochs>.pt`` with its
    test top-1 (``.json``), so later train/tune/evaluate calls reuse it.

    ``classes``: the run's class names (run-label order, after ``data.class_subset``); a library teacher's logit
    columns are picked by them (:func:`~ddoq_ray.students.teachers.named_class_index`).

    Returns:
        ``(teacher module, worker spec for train_student_ray, info {"source", "arch", "top1"})``.
    """
    import torch

    from .data import load_arrays
    from .students import evaluate, load_teacher, train_teacher
    from .students.teachers import is_named_teacher, load_named_teacher, named_class_index

    tcfg, size = cfg.train, cfg.train.image_size
    class_index = list(cfg.data.class_subset) if cfg.data.class_subset is not None else None
    ref = cfg.train.teacher or ""
    if is_named_teacher(ref):
        class_index = named_class_index(classes, cfg.data.class_subset)
        teacher = load_named_teacher(ref, class_index, n_classes)
        spec, source, arch = {"named": ref, "class_index": class_index}, ref, ref
    elif teacher_path:
        teacher = load_teacher(teacher_path, tcfg.teacher_arch, len(all_classes), class_index, image_size=size)
        spec = {"path": teacher_path, "arch": tcfg.teacher_arch, "num_classes": len(all_classes),
                "class_index": class_index}
        source, arch = teacher_path, tcfg.teacher_arch
    else:
        from .students.models import build_model
        from .students.teachers import _freeze

        arch = tcfg.teacher_arch
        cache = storage.join(run_dir, "teacher", f"{arch}-e{tcfg.teacher_epochs}-s{cfg.seed}.pt")
        if storage.is_file(cache):
            log.info("train: reusing the teacher trained earlier (%s)", cache)
            state = torch.load(io.BytesIO(storage.read_bytes(cache)), map_location="cpu", weights_only=True)
            teacher = build_model(arch, n_classes, size)
            teacher.load_state_dict(state)
            teacher = _freeze(teacher)
        else:
            log.info("train: no teacher checkpoint given; training %s on the full real train split", arch)
            real = load_arrays(train_index, cfg.data.image_column, size)
            teacher, _ = train_teacher(real["images"], real["labels"], n_classes, arch, tcfg.teacher_epochs, size,
                                       cfg.seed)
            buf = io.BytesIO()
            torch.save({k: v.cpu() for k, v in teacher.state_dict().items()}, buf)
            storage.write_bytes(cache, buf.getvalue())  # one object write: never a half-written cache
        spec = {"state_dict": {k: v.cpu() for k, v in teacher.state_dict().items()}, "arch": arch,
                "num_classes": n_classes}
        source = f"trained by ddoq-ray on the real train split, {tcfg.teacher_epochs} epochs ({cache})"
    top1 = evaluate(teacher, test["images"], test["labels"], tcfg.eval_batch_size)
    return teacher, spec, {"source": source, "arch": arch, "top1": top1}


def load_inputs(cfg: RunConfig, run_dir: str, train_index: pa.Table, test_index: pa.Table, classes: list[str],
                all_classes: list[str], teacher_path: str | None) -> EvalInputs:
    """Load the test split, the teacher, the decoded set and the encoded ids (for ``random``)."""
    from .data import load_arrays
    from .decode import load_synthetic
    from .encode import scan

    size = cfg.train.image_size
    test = load_arrays(test_index, cfg.data.image_column, size)
    log.info("train: %d test images (%d undecodable skipped)", len(test["labels"]), test["n_skipped"])
    teacher, spec, info = make_teacher(cfg, run_dir, train_index, test, len(classes), all_classes, teacher_path,
                                       classes)
    log.info("train: teacher top-1 on test = %.4f", info["top1"])
    syn = load_synthetic(stage_path(run_dir, "decode"), size)
    ok = scan(stage_path(run_dir, "encode"), columns=["id", "label"], status="ok")
    ids_by_class: dict[int, list[str]] = {}
    for i, c in zip(ok.column("id").to_pylist(), ok.column("label").to_pylist(), strict=True):
        ids_by_class.setdefault(c, []).append(i)
    return EvalInputs(cfg, run_dir, train_index, test, len(classes), teacher, spec, info, syn, ids_by_class)


def method_set(inp: EvalInputs, method: str, seed: int, tcfg: TrainConfig) -> dict:
    """The training set of one method: ``{"images" uint8 [n,S,S,3], "labels" int64 [n], "weights" f32 [n]}``."""
    from .data import load_arrays

    cfg = inp.cfg
    if method == "random":
        chosen = set(random_subset(inp.ids_by_class, cfg.quantize.ipc, seed))
        keep = pa.array([i in chosen for i in inp.train_index.column("id").to_pylist()])
        sub = load_arrays(inp.train_index.filter(keep), cfg.data.image_column, tcfg.image_size)
        return {"images": sub["images"], "labels": sub["labels"], "weights": np.ones(len(sub["labels"]), np.float32)}
    scheme = "uniform" if method == "d4m" else tcfg.weight_scheme
    syn = inp.syn
    return {"images": syn["images"], "labels": syn["labels"],
            "weights": sample_weights(syn["labels"], syn["mass"], scheme, tcfg.weight_alpha, tcfg.weight_tau,
                                      tcfg.weight_norm)}


def train_one(inp: EvalInputs, tcfg: TrainConfig, method: str, seed: int, out: str, tag: str = "") -> dict:
    """Train and test one student (Ray Train); precomputes its soft labels first in ``precomputed`` mode."""
    from .students import precompute_soft_labels, train_student_ray

    train = method_set(inp, method, seed, tcfg)
    name = f"{tag}{method}-seed{seed}"
    spec = inp.spec
    label_bytes = None
    if tcfg.label_mode == "precomputed":
        d = storage.join(out, "labels", name)
        meta = precompute_soft_labels(train["images"], inp.teacher, tcfg, seed, inp.n_classes, d,
                                      teacher_name=inp.teacher_info["source"])
        train["soft_labels"] = d
        label_bytes = meta["bytes_per_image_epoch"]
        log.info("train: %s soft labels: %.1f bytes per image per epoch (%d bytes)", name, label_bytes,
                 meta["bytes"])
        spec = None
    elif tcfg.label_mode == "hard":
        spec = None
    t0 = time.time()
    m = train_student_ray(train, inp.test, spec, tcfg, seed, inp.n_classes, storage.join(out, "ray"), name)
    row = {"method": method, "seed": seed, "top1": float(m["top1"]),
           "train_loss": float(m.get("train_loss", float("nan"))), "epochs": int(m.get("epochs", 0)),
           "n_train": len(train["labels"]), "wall_s": round(time.time() - t0, 1), "student": tcfg.student,
           "lr": tcfg.resolved_lr(), "label_mode": tcfg.label_mode, "label_bytes_per_image_epoch": label_bytes}
    log.info("train: %s %s seed %d top-1 %.4f (%.0f s)", tcfg.student, method, seed, row["top1"], row["wall_s"])
    return row


def student_concurrency(tcfg: TrainConfig, n_students: int) -> int:
    """How many students to train at once: ``train.concurrent_students``, or with ``auto`` the number of
    ``num_workers x cpus_per_worker`` (and ``num_workers`` GPUs when students use GPUs) the Ray cluster holds;
    between 1 and ``n_students``. Local mode (``num_workers=0``) trains in the driver: one at a time."""
    import math

    import ray

    from .students.ray_train import _resolve_use_gpu

    if tcfg.concurrent_students != "auto":
        n = int(tcfg.concurrent_students)
    elif tcfg.num_workers == 0 or not ray.is_initialized():
        n = 1
    else:
        res = ray.cluster_resources()
        n = math.floor(res.get("CPU", 1) / (tcfg.num_workers * tcfg.cpus_per_worker) + 1e-9)
        if _resolve_use_gpu(tcfg.use_gpu):
            n = min(n, math.floor(res.get("GPU", 0) / tcfg.num_workers + 1e-9))
    return max(1, min(n, n_students))


def train_many(inp: EvalInputs, jobs: list[tuple[TrainConfig, str, int]], out: str, tag=lambda t: "") -> list[dict]:
    """Train the ``(train config, method, seed)`` students, up to :func:`student_concurrency` at once (threads,
    each driving its own TorchTrainer; Ray schedules their workers). Rows come back in ``jobs`` order."""
    from concurrent.futures import ThreadPoolExecutor

    n = student_concurrency(jobs[0][0], len(jobs)) if jobs else 1
    if n == 1:
        return [train_one(inp, t, m, s, out, tag(t)) for t, m, s in jobs]
    log.info("train: %d students, %d at a time", len(jobs), n)
    with ThreadPoolExecutor(n, thread_name_prefix="student") as ex:
        return list(ex.map(lambda j: train_one(inp, j[0], j[1], j[2], out, tag(j[0])), jobs))


def run_train(cfg: RunConfig, run_dir: str, train_index: pa.Table, test_index: pa.Table, classes: list[str],
              all_classes: list[str], teacher_path: str | None, out: str, summary: dict) -> None:
    """Train every (method, seed) student with Ray Train and record top-1 on the test split."""
    inp = load_inputs(cfg, run_dir, train_index, test_index, classes, all_classes, teacher_path)
    storage.write_json(storage.join(out, "teacher.json"), inp.teacher_info)
    rows = train_many(inp, [(cfg.train, m, s) for m in cfg.train.methods for s in cfg.train.seeds], out)
    storage.write_parquet(pa.Table.from_pylist(rows), storage.join(out, "students.parquet"))
    summary.update({"teacher_top1": inp.teacher_info["top1"], "students": len(rows),
                    "label_mode": cfg.train.label_mode})
    if rows and rows[0]["label_bytes_per_image_epoch"] is not None:
        summary["label_bytes_per_image_epoch"] = float(np.mean([r["label_bytes_per_image_epoch"] for r in rows]))


def run_matrix(cfg: RunConfig, run_dir: str, train_index: pa.Table, test_index: pa.Table, classes: list[str],
               all_classes: list[str], teacher_path: str | None, archs: list[str]) -> pa.Table:
    """Cross-architecture evaluation: every method x seed x student architecture (lr: ``train.lr`` if set, else
    the per-architecture default). Finished (arch, method, seed, epochs) rows in ``matrix_runs.parquet`` are
    reused, so an interrupted matrix resumes.

    Returns:
        ``matrix.parquet``'s table: method, arch, lr, epochs, top1_mean, top1_std (ddof 1), n.
    """
    # Written beside the committed train stage (not in an attempt): the matrix is its own resumable table.
    out = storage.join(run_dir, "train")
    storage.makedirs(out)
    runs_path = storage.join(out, "matrix_runs.parquet")
    rows = storage.read_parquet(runs_path).to_pylist() if storage.is_file(runs_path) else []
    inp = load_inputs(cfg, run_dir, train_index, test_index, classes, all_classes, teacher_path)
    for arch in archs:
        tcfg = cfg.train.model_copy(update={"student": arch})
        todo = [(tcfg, m, s) for m in tcfg.methods for s in tcfg.seeds
                if not any((r["arch"], r["method"], r["seed"], r["epochs"]) == (arch, m, s, tcfg.epochs) for r in rows)]
        # One architecture at a time, its students in parallel; its rows are saved before the next one starts.
        rows += [{"arch": arch, **row}
                 for row in train_many(inp, todo, storage.join(out, "matrix"), tag=lambda t: f"{t.student}-")]
        storage.write_parquet(pa.Table.from_pylist(rows), runs_path)
    agg = []
    for arch in archs:
        for method in cfg.train.methods:
            accs = [r["top1"] for r in rows if r["arch"] == arch and r["method"] == method
                    and r["epochs"] == cfg.train.epochs and r["seed"] in cfg.train.seeds]
            lr = next(r["lr"] for r in rows if r["arch"] == arch)
            a = np.asarray(accs, dtype=np.float64)
            agg.append({"method": method, "arch": arch, "lr": lr, "epochs": cfg.train.epochs,
                        "top1_mean": float(a.mean()), "top1_std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
                        "n": len(a)})
    table = pa.Table.from_pylist(agg)
    storage.write_parquet(table, storage.join(out, "matrix.parquet"))
    storage.write_json(storage.join(out, "matrix_teacher.json"), inp.teacher_info)
    return table


def matrix_markdown(table: pa.Table) -> str:
    """method x architecture, top-1 (%) mean ± std over seeds, as Markdown."""
    rows = table.to_pylist()
    archs = list(dict.fromkeys(r["arch"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = ["| method | " + " | ".join(archs) + " |", "|---|" + "---|" * len(archs)]
    for m in methods:
        cells = []
        for a in archs:
            r = next(r for r in rows if r["arch"] == a and r["method"] == m)
            cells.append(f"{100 * r['top1_mean']:.2f} ± {100 * r['top1_std']:.2f} (n={r['n']})")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
