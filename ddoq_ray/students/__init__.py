"""Students and teachers: architectures, soft-label losses, augmentation and (Ray Train) training."""

from ddoq_ray.students.augment import random_resized_crop_flip
from ddoq_ray.students.losses import cutmix, soft_label_kl, weighted_cross_entropy
from ddoq_ray.students.models import BUILTIN_MODELS, Normalize, build_model
from ddoq_ray.students.teachers import load_teacher, train_teacher
from ddoq_ray.students.train import evaluate, fit_student, to_float_nchw, train_student_ray

__all__ = [
    "BUILTIN_MODELS",
    "Normalize",
    "build_model",
    "cutmix",
    "evaluate",
    "fit_student",
    "load_teacher",
    "random_resized_crop_flip",
    "soft_label_kl",
    "to_float_nchw",
    "train_student_ray",
    "train_teacher",
    "weighted_cross_entropy",
]
