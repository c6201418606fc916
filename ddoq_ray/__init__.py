"""ddoq-ray: Ray-distributed dataset distillation by pushforward optimal quantization (DDOQ).

Public helpers for training code (imported lazily, so ``import ddoq_ray`` stays light for Ray workers):
:class:`DistilledDataset` and :func:`weighted_sampler` (:mod:`ddoq_ray.loader`); exports are written by
:func:`ddoq_ray.export.export`.
"""

_LAZY = {"DistilledDataset": "loader", "weighted_sampler": "loader"}
__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module 'ddoq_ray' has no attribute {name!r}")
