"""What every student of a run shares, prepared in one place: test split, teacher, decoded set, encoded ids.

Used by the train and matrix stages, the Tune sweep and (for the sets) the metrics stage, so that all of them
train and score on the same inputs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pyarrow as pa

from ..config import RunConfig, TrainConfig

log = logging.getLogger("ddoq_ray")


@dataclass
class TrainInputs:
    """The shared inputs of a run's students.

    Attributes:
        test: ``{"images" uint8 [n,S,S,3], "labels" int64 [n], "n_skipped"}`` at ``train.image_size`` (None when
            not loaded). teacher: the frozen teacher module (None for ``label_mode: hard`` in Tune).
        spec: how Ray workers rebuild the teacher (:func:`ddoq_ray.artifacts.teacher.worker_spec`).
        teacher_info: ``teacher.json`` (source, arch, top1). syn: the decoded sets by clustering,
            ``{algorithm: load_synthetic(...)}`` (:func:`ddoq_ray.artifacts.synthetic.load_synthetic`).
    """

    cfg: RunConfig
    run_dir: str
    train_index: pa.Table
    test: dict | None
    n_classes: int
    teacher: object
    spec: dict | None
    teacher_info: dict
    syn: dict

    def method_set(self, method: str, seed: int, tcfg: TrainConfig | None = None) -> dict:
        """The images, labels and weights ``method`` trains on with ``seed`` (:mod:`ddoq_ray.artifacts.methods`)."""
        from .methods import method_set

        return method_set(method, seed, tcfg or self.cfg.train, run_dir=self.run_dir, train_index=self.train_index,
                          image_column=self.cfg.data.image_column, ipc=self.cfg.quantize.ipc, syn=self.syn)


def load_train_inputs(run, *, test: bool = True, teacher: bool = True) -> TrainInputs:
    """Load the shared inputs of ``run`` (a :class:`ddoq_ray.context.Run` whose upstream stages are committed).

    Args:
        test: load the test split (train / matrix stages; Tune loads its own validation split).
        teacher: load the teacher module and spec from the teacher stage.
    Raises:
        StageNotCommittedError: the decode (or teacher) stage is not complete.
    """
    from ..data import load_arrays
    from ..rundir import stage_path
    from .synthetic import decoded_algorithms, load_synthetic
    from .teacher import read_info, worker_spec

    cfg = run.cfg
    size = cfg.train.image_size
    _ = run.train_index
    test_arrays = None
    if test:
        test_arrays = load_arrays(run.test_index, cfg.data.image_column, size)
        log.info("train: %d test images (%d undecodable skipped)", len(test_arrays["labels"]),
                 test_arrays["n_skipped"])
    module, spec, info = None, None, {"source": None, "top1": None}
    if teacher:
        from ..students.teachers import build_teacher

        tdir = stage_path(run.dir, "teacher")
        info = read_info(tdir)
        spec = worker_spec(tdir)
        module = build_teacher(spec, len(run.classes), size)
        log.info("train: teacher %s, top-1 on test = %s", info["source"], info["top1"])
    decode_dir = stage_path(run.dir, "decode")
    syn = {a: load_synthetic(decode_dir, size, a) for a in decoded_algorithms(decode_dir)}
    return TrainInputs(cfg, run.dir, run.train_index, test_arrays, len(run.classes), module, spec, info, syn)
