"""The teacher stage's artifact: which teacher the run uses, its weights when ddoq-ray trained it, its top-1.

Schema (``<run>/teacher/<attempt>/``; the writer is :mod:`ddoq_ray.teacher`):
- ``teacher.json``: ``source`` (checkpoint location, library ref, or "trained by ddoq-ray ..."), ``arch``,
  ``top1`` (on the real test split; the full-data reference, None without a test split), ``kind``
  (``checkpoint`` | ``named`` | ``trained``), ``spec`` (how workers rebuild it, without weights);
- ``teacher.pt``: the state dict (``kind: trained`` only).
The stage's fingerprint covers the data, the teacher fields of ``train`` and the checkpoint file's size and
mtime, so a teacher of other classes, sizes or epochs is never reused.
"""

from __future__ import annotations

import io

from .. import storage

INFO = "teacher.json"
WEIGHTS = "teacher.pt"


def read_info(teacher_dir: str) -> dict:
    """``teacher.json`` of a teacher folder (location)."""
    return storage.read_json(storage.join(teacher_dir, INFO))


def worker_spec(teacher_dir: str) -> dict:
    """The spec that rebuilds the teacher in any worker (:func:`ddoq_ray.students.ray_train.train_student_ray`):
    ``{"path", "arch", "num_classes", "class_index"}``, ``{"named", "class_index"}`` or, for a teacher trained
    here, ``{"state_dict", "arch", "num_classes"}`` with the weights read from ``teacher.pt``."""
    import torch

    info = read_info(teacher_dir)
    spec = dict(info["spec"])
    if info["kind"] == "trained":
        buf = io.BytesIO(storage.read_bytes(storage.join(teacher_dir, WEIGHTS)))
        spec["state_dict"] = torch.load(buf, map_location="cpu", weights_only=True)
    return spec
