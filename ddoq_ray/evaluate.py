"""Stage 4, train & evaluate: students trained on each distilled set, top-1 on the real test split.

Methods (``train.methods``), all under the identical protocol (same teacher, augmentation, epochs, seeds,
``train.label_mode``): presets of (clustering, weights, images) from :mod:`ddoq_ray.artifacts.method_presets`,
e.g. ``random`` (the seed's random real subset, drawn once by the subsets stage), ``d4m`` / ``ddoq`` (the paper's
MiniBatchKMeans centroids, uniform / cell-mass weights); which images and weights each trains on is defined in
:mod:`ddoq_ray.artifacts.methods`; the shared inputs (test split, teacher, decoded set) in
:mod:`ddoq_ray.artifacts.train_inputs`.

Artifact ``<run>/train/<attempt>/`` (:func:`ddoq_ray.rundir.stage_path`): ``students.parquet`` (``method``,
``seed``, ``top1`` (as ``train.reported``), ``top1_final``, ``top1_epoch``, ``train_loss``, ``epochs``,
``n_train``, ``wall_s``, ``student``, ``lr``, ``label_mode``,
``label_bytes_per_image_epoch``; also ``students/<method>-seed<s>.json``, one per student as it finishes: the
resume points), ``teacher.json`` (teacher source and its top-1, the full-data reference),
``labels/<method>-seed<s>/`` (``precomputed`` mode, see :mod:`ddoq_ray.students.labels`) and ``ray/`` (Ray Train
run folders with checkpoints, written through ``RunConfig(storage_filesystem=...)``).
``ddoq-ray evaluate --archs a,b`` is the ``matrix`` stage: ``<run>/matrix/<attempt>/matrix_runs.parquet`` (one row
per arch, method, seed), ``matrix.parquet`` (``method``, ``arch``, ``lr``, ``top1_mean``, ``top1_std``, ``n``),
committed and keyed like every stage (train config, teacher, decoded set, subsets and the architectures).
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pyarrow as pa

from . import storage
from .artifacts.train_inputs import TrainInputs, load_train_inputs
from .config import TrainConfig

log = logging.getLogger("ddoq_ray")


def train_one(inp: TrainInputs, tcfg: TrainConfig, method: str, seed: int, out: str, tag: str = "") -> dict:
    """Train and test one student (Ray Train); precomputes its soft labels first in ``precomputed`` mode."""
    from .students import precompute_soft_labels, train_student_ray

    train = inp.method_set(method, seed, tcfg)
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
           "top1_final": float(m.get("top1_final", m["top1"])), "top1_epoch": m.get("top1_epoch"),
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

    from .students.ray_train import resolve_use_gpu

    if tcfg.concurrent_students != "auto":
        n = int(tcfg.concurrent_students)
    elif tcfg.num_workers == 0 or not ray.is_initialized():
        n = 1
    else:
        res = ray.cluster_resources()
        n = math.floor(res.get("CPU", 1) / (tcfg.num_workers * tcfg.cpus_per_worker) + 1e-9)
        if resolve_use_gpu(tcfg.use_gpu):
            n = min(n, math.floor(res.get("GPU", 0) / tcfg.num_workers + 1e-9))
    return max(1, min(n, n_students))


def train_many(inp: TrainInputs, jobs: list[tuple[TrainConfig, str, int]], out: str, tag=lambda t: "",
               keep: bool = False) -> list[dict]:
    """Train the ``(train config, method, seed)`` students, up to :func:`student_concurrency` at once (threads,
    each driving its own TorchTrainer; Ray schedules their workers). Rows come back in ``jobs`` order.

    ``keep``: save each student's row as ``students/<tag><method>-seed<s>.json`` in ``out`` as soon as it is
    trained, and take the row from there instead of training again (a resumed attempt of the stage)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(j):
        t, m, s = j
        loc = storage.join(out, "students", f"{tag(t)}{m}-seed{s}.json")
        if keep and storage.is_file(loc):
            return storage.read_json(loc)
        row = train_one(inp, t, m, s, out, tag(t))
        if keep:
            storage.write_json(loc, row)
        return row

    n = student_concurrency(jobs[0][0], len(jobs)) if jobs else 1
    if keep:
        done = sum(storage.is_file(storage.join(out, "students", f"{tag(t)}{m}-seed{s}.json")) for t, m, s in jobs)
        if done:
            log.info("train: %d of %d students were trained by the interrupted attempt; training the rest", done,
                     len(jobs))
    if n == 1:
        return [one(j) for j in jobs]
    log.info("train: %d students, %d at a time", len(jobs), n)
    with ThreadPoolExecutor(n, thread_name_prefix="student") as ex:
        return list(ex.map(one, jobs))


def train_stage(run, out: str, summary: dict) -> None:
    """The registered ``train`` stage: every (method, seed) student with Ray Train, top-1 on the test split.

    Resumable: each student's row is saved as it finishes (``students/*.json``), so a re-run after a crash trains
    only the students the interrupted attempt (same fingerprint) had not finished."""
    cfg = run.cfg
    inp = load_train_inputs(run)
    storage.write_json(storage.join(out, "teacher.json"), {k: inp.teacher_info.get(k) for k in ("source", "arch",
                                                                                              "top1")})
    rows = train_many(inp, [(cfg.train, m, s) for m in cfg.train.methods for s in cfg.train.seeds], out, keep=True)
    storage.write_parquet(pa.Table.from_pylist(rows), storage.join(out, "students.parquet"))
    summary.update({"teacher_top1": inp.teacher_info["top1"], "students": len(rows),
                    "label_mode": cfg.train.label_mode})
    if rows and rows[0]["label_bytes_per_image_epoch"] is not None:
        summary["label_bytes_per_image_epoch"] = float(np.mean([r["label_bytes_per_image_epoch"] for r in rows]))


MATRIX_KEY = ("arch", "method", "seed")


def matrix_stage(run, out: str, summary: dict, archs: list[str]) -> None:
    """The ``matrix`` stage (``ddoq-ray evaluate --archs``): every method x seed x student architecture (lr:
    ``train.lr`` if set, else the per-architecture default).

    The stage is resumable: rows are appended to ``matrix_runs.parquet`` inside the attempt folder as each
    architecture finishes, and an interrupted matrix with the same fingerprint (train config, teacher, decoded
    set, subsets, ``archs``) continues from there. Writes ``matrix.parquet`` (method, arch, lr, epochs,
    top1_mean, top1_std (ddof 1), n) and ``teacher.json``.
    """
    cfg = run.cfg
    runs_path = storage.join(out, "matrix_runs.parquet")
    rows = storage.read_parquet(runs_path).to_pylist() if storage.is_file(runs_path) else []
    inp = load_train_inputs(run)
    for arch in archs:
        tcfg = cfg.train.model_copy(update={"student": arch})
        done = {tuple(r[k] for k in MATRIX_KEY) for r in rows}
        todo = [(tcfg, m, s) for m in tcfg.methods for s in tcfg.seeds if (arch, m, s) not in done]
        # One architecture at a time, its students in parallel; its rows are saved before the next one starts.
        rows += [{"arch": arch, **row} for row in train_many(inp, todo, out, tag=lambda t: f"{t.student}-")]
        storage.write_parquet(pa.Table.from_pylist(rows), runs_path)
    agg = []
    for arch in archs:
        for method in cfg.train.methods:
            accs = [r["top1"] for r in rows if r["arch"] == arch and r["method"] == method]
            lr = next(r["lr"] for r in rows if r["arch"] == arch)
            a = np.asarray(accs, dtype=np.float64)
            agg.append({"method": method, "arch": arch, "lr": lr, "epochs": cfg.train.epochs,
                        "top1_mean": float(a.mean()), "top1_std": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
                        "n": len(a)})
    storage.write_parquet(pa.Table.from_pylist(agg), storage.join(out, "matrix.parquet"))
    storage.write_json(storage.join(out, "teacher.json"), {k: inp.teacher_info.get(k) for k in ("source", "arch",
                                                                                               "top1")})
    summary.update({"archs": list(archs), "students": len(rows)})


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
