"""One precision policy: what the config word ``precision`` (``encode.precision``, ``train.precision``) means.

:func:`autocast_dtype` maps ``(precision, device)`` to the ``torch.autocast`` dtype, or ``None`` for plain fp32
(no autocast). The VAE (:mod:`ddoq_ray.vae`), students and teachers (:mod:`ddoq_ray.students.train`,
soft-label precompute) all resolve the word here, so one word is one dtype everywhere:

============  =====================  =================================================
precision     CUDA                   CPU (and any other device)
============  =====================  =================================================
``fp32``      None (fp32)            None (fp32)
``bf16``      ``torch.bfloat16``     ``torch.bfloat16``
``fp16``      ``torch.float16``      ``torch.float16`` (CPU autocast supports it; slower than bf16 on most CPUs)
``auto``      ``torch.float16``      ``torch.bfloat16`` if :func:`cpu_supports_bf16`, else None (fp32);
                                     non-CPU, non-CUDA devices: None
============  =====================  =================================================

``auto`` on CPU: bf16 autocast measured ~3x faster VAE encodes, ~2x faster student steps and ~2.5x faster teacher
forwards than fp32 on the reference machine (AVX-512 BF16 / AMX; README). Source for the dtypes CPU/CUDA autocast
supports: PyTorch "Automatic Mixed Precision" docs (``torch.autocast``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ddoq_ray.errors import UserValueError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def cpu_supports_bf16() -> bool:
    """True on x86 CPUs with AVX-512 BF16 or AMX-BF16 (``avx512_bf16`` / ``amx_bf16`` in ``/proc/cpuinfo``);
    False when the flags are absent or ``/proc/cpuinfo`` cannot be read (non-Linux)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``, or None for plain fp32 (the module's table).

    Args:
        precision: ``auto``, ``fp32``, ``bf16`` or ``fp16`` (``encode.precision`` / ``train.precision``).
        device: a ``torch.device`` or its name (``cpu``, ``cuda``, ``cuda:1``).

    Raises:
        UserValueError: ``precision`` is not one of :data:`PRECISIONS`.
    """
    if precision not in PRECISIONS:
        raise UserValueError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)} "
                             "(encode.precision / train.precision)")
    dev = torch.device(device)
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if dev.type == "cuda":
        return torch.float16
    return torch.bfloat16 if dev.type == "cpu" and cpu_supports_bf16() else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` for ``dtype`` on ``device``'s type; disabled (plain fp32) when ``dtype`` is None."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
