"""Stage 4, train & evaluate: students trained on each distilled set, top-1 on the real test split.

Methods, all under the identical protocol (same teacher, augmentation, epochs, seeds):
- ``random``: IPC real images per class, drawn per seed from the images the encode stage accepted;
- ``d4m``: the decoded centroids with uniform weights (D4M, Su et al. CVPR 2024);
- ``ddoq``: the same images weighted by their cell masses (``train.weight_scheme``), normalised to mean 1 within
  each class so the loss scale matches the uniform baseline (DDOQ §4).

Artifact ``<run>/train/``: ``students.parquet`` (``method``, ``seed``, ``top1``, ``train_loss``, ``epochs``,
``n_train``, ``wall_s``), ``teacher.json`` (teacher source and its top-1, the full-data reference) and
``ray/`` (Ray Train run folders with checkpoints).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .config import RunConfig
from .quantize import centroid_weights

log = logging.getLogger("ddoq_ray")


def normalised_weights(labels: np.ndarray, mass: np.ndarray, scheme: str, alpha: float) -> np.ndarray:
    """Per-image weights with mean 1 within each class: ``K_c · centroid_weights(mass_c)``.

    Returns:
        float32 ``[n]``; all ones for ``uniform``.
    """
    w = np.ones(len(labels), dtype=np.float64)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        w[idx] = len(idx) * centroid_weights(mass[idx], scheme, alpha)
    return w.astype(np.float32)


def random_subset(ids_by_class: dict[int, list[str]], ipc: int, seed: int) -> list[str]:
    """IPC ids per class drawn without replacement (all of a class when it has fewer), seeded."""
    rng = np.random.default_rng(seed)
    out: list[str] = []
    for c in sorted(ids_by_class):
        ids = sorted(ids_by_class[c])
        pick = rng.choice(len(ids), size=min(ipc, len(ids)), replace=False)
        out.extend(ids[i] for i in sorted(pick))
    return out


def run_train(cfg: RunConfig, run_dir: Path, train_index: pa.Table, test_index: pa.Table, classes: list[str],
              all_classes: list[str], teacher_path: str | None, out: Path, summary: dict) -> None:
    """Train every (method, seed) student with Ray Train and record top-1 on the test split."""
    from .data import load_arrays
    from .decode import load_synthetic
    from .encode import scan
    from .students import evaluate, load_teacher, train_student_ray, train_teacher

    tcfg, size = cfg.train, cfg.train.image_size
    n_classes = len(classes)
    test = load_arrays(test_index, cfg.data.image_column, size)
    log.info("train: %d test images (%d undecodable skipped)", len(test["labels"]), test["n_skipped"])

    class_index = list(cfg.data.class_subset) if cfg.data.class_subset is not None else None
    if teacher_path:
        teacher = load_teacher(teacher_path, tcfg.teacher_arch, len(all_classes), class_index)
        spec = {"path": teacher_path, "arch": tcfg.teacher_arch, "num_classes": len(all_classes),
                "class_index": class_index}
        source = teacher_path
    else:
        log.info("train: no teacher checkpoint given; training %s on the full real train split", tcfg.teacher_arch)
        real = load_arrays(train_index, cfg.data.image_column, size)
        teacher, _ = train_teacher(real["images"], real["labels"], n_classes, tcfg.teacher_arch,
                                   tcfg.teacher_epochs, size, cfg.seed)
        spec = {"state_dict": {k: v.cpu() for k, v in teacher.state_dict().items()}, "arch": tcfg.teacher_arch,
                "num_classes": n_classes}
        source = f"trained by ddoq-ray on {len(real['labels'])} real images, {tcfg.teacher_epochs} epochs"
    teacher_top1 = evaluate(teacher, test["images"], test["labels"], tcfg.eval_batch_size)
    (out / "teacher.json").write_text(json.dumps({"source": source, "arch": tcfg.teacher_arch,
                                                  "top1": teacher_top1}, indent=2))
    log.info("train: teacher top-1 on test = %.4f", teacher_top1)

    syn = load_synthetic(run_dir / "decode", size)
    ok = scan(run_dir / "encode", columns=["id", "label"], status="ok")
    ids_by_class: dict[int, list[str]] = {}
    for i, c in zip(ok.column("id").to_pylist(), ok.column("label").to_pylist(), strict=True):
        ids_by_class.setdefault(c, []).append(i)
    rows = []
    for method in tcfg.methods:
        for seed in tcfg.seeds:
            if method == "random":
                chosen = set(random_subset(ids_by_class, cfg.quantize.ipc, seed))
                sub = load_arrays(train_index.filter(pa.array([i in chosen for i in
                                                               train_index.column("id").to_pylist()])),
                                  cfg.data.image_column, size)
                train = {"images": sub["images"], "labels": sub["labels"],
                         "weights": np.ones(len(sub["labels"]), np.float32)}
            else:
                scheme = "uniform" if method == "d4m" else tcfg.weight_scheme
                train = {"images": syn["images"], "labels": syn["labels"],
                         "weights": normalised_weights(syn["labels"], syn["mass"], scheme, tcfg.weight_alpha)}
            t0 = time.time()
            m = train_student_ray(train, test, spec, tcfg, seed, n_classes, str((out / "ray").resolve()),
                                  f"{method}-seed{seed}")
            rows.append({"method": method, "seed": seed, "top1": float(m["top1"]),
                         "train_loss": float(m.get("train_loss", float("nan"))), "epochs": int(m.get("epochs", 0)),
                         "n_train": len(train["labels"]), "wall_s": round(time.time() - t0, 1)})
            log.info("train: %s seed %d top-1 %.4f (%.0f s)", method, seed, rows[-1]["top1"], rows[-1]["wall_s"])
    pq.write_table(pa.Table.from_pylist(rows), out / "students.parquet")
    summary.update({"teacher_top1": teacher_top1, "students": len(rows)})
