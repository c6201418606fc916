"""Students and teachers: architectures, soft-label losses and protocols, augmentation, (Ray Train) training."""

from ddoq_ray.students.augment import apply_crop_flip, random_resized_crop_flip, sample_crop_flip
from ddoq_ray.students.labels import PrecomputedPlan, label_schema, precompute_soft_labels
from ddoq_ray.students.losses import apply_mix, cutmix, soft_label_kl, weighted_cross_entropy
from ddoq_ray.students.models import BUILTIN_MODELS, Normalize, build_model
from ddoq_ray.students.ray_train import train_student_ray
from ddoq_ray.students.teachers import load_teacher, train_teacher
from ddoq_ray.students.tensors import to_float_nchw
from ddoq_ray.students.train import evaluate, fit_student
from ddoq_ray.students.weights import sample_weights, scheme_weights

__all__ = [
    "BUILTIN_MODELS",
    "Normalize",
    "PrecomputedPlan",
    "apply_crop_flip",
    "apply_mix",
    "build_model",
    "cutmix",
    "evaluate",
    "fit_student",
    "label_schema",
    "load_teacher",
    "precompute_soft_labels",
    "random_resized_crop_flip",
    "sample_crop_flip",
    "sample_weights",
    "scheme_weights",
    "soft_label_kl",
    "to_float_nchw",
    "train_student_ray",
    "train_teacher",
    "weighted_cross_entropy",
]
