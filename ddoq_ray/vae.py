"""The latent space: load a diffusers VAE and map images <-> SD-scaled latents (pure torch, no Ray).

Latents are always in the *diffusion model's* space: ``(E(x) - shift_factor) * scaling_factor`` for
``AutoencoderKL`` (e.g. SD-1.x VAE: 0.18215), and TAESD's output as is (``AutoencoderTiny`` is trained to emit
that space directly; its ``scaling_factor`` is 1.0). Source: diffusers ``AutoencoderKL``/``AutoencoderTiny`` docs
and ``pipeline_stable_diffusion_img2img.prepare_latents``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ddoq_ray.errors import UserValueError
from ddoq_ray.precision import autocast_dtype
from ddoq_ray.precision import cpu_supports_bf16 as cpu_supports_bf16  # re-export (benchmarks)


@dataclass
class LoadedVAE:
    model: torch.nn.Module
    kind: str  # "tiny" | "kl"
    ref: str  # the id/path it was loaded from
    scaling_factor: float
    shift_factor: float
    device: torch.device
    dtype: torch.dtype  # autocast dtype (or fp32 = none)


def pick_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The VAE's compute dtype: :func:`ddoq_ray.precision.autocast_dtype`, with fp32 standing for "no autocast".

    Raises:
        UserValueError: unknown ``precision``.
    """
    return autocast_dtype(precision, device) or torch.float32


def vae_kind(path: str, configured: str = "auto") -> str:
    """``tiny`` (AutoencoderTiny/TAESD) or ``kl`` (AutoencoderKL), from the config's ``_class_name`` or the id."""
    if configured != "auto":
        return configured
    cfg = Path(path) / "config.json"
    if cfg.is_file():
        name = json.loads(cfg.read_text()).get("_class_name", "")
        return "tiny" if name == "AutoencoderTiny" else "kl"
    return "tiny" if "taesd" in path.lower() else "kl"


def load_vae(path: str, kind: str = "auto", device: str | torch.device = "cpu", precision: str = "auto",
             num_threads: int | None = None) -> LoadedVAE:
    """Load a VAE with ``from_pretrained`` (local folder or hub id), eval mode, channels_last on CPU.

    Raises:
        OSError: from diffusers when the id/path cannot be found (offline: see ``assets.resolve``).
    """
    from diffusers import AutoencoderKL, AutoencoderTiny

    if num_threads:
        torch.set_num_threads(num_threads)  # Ray pins OMP threads to the actor's num_cpus (G15)
    device = torch.device(device)
    kind = vae_kind(path, kind)
    cls = AutoencoderTiny if kind == "tiny" else AutoencoderKL
    subfolder = "vae" if (Path(path) / "vae" / "config.json").is_file() else None
    model = cls.from_pretrained(path, subfolder=subfolder) if subfolder else cls.from_pretrained(path)
    dtype = pick_dtype(precision, device)
    model = model.to(device).eval().requires_grad_(False)
    if device.type == "cuda" and dtype == torch.float16:
        model = model.half()
    else:
        model = model.to(memory_format=torch.channels_last)
    return LoadedVAE(model, kind, path, float(model.config.scaling_factor),
                     float(getattr(model.config, "shift_factor", None) or 0.0), device, dtype)


def autocast(vae: LoadedVAE):
    # fp16 on CUDA runs a .half() model (no autocast); every other non-fp32 dtype autocasts.
    enabled = vae.dtype != torch.float32 and not (vae.device.type == "cuda" and vae.dtype == torch.float16)
    return torch.autocast(vae.device.type, dtype=vae.dtype, enabled=enabled)


def _sample_noise(shape: tuple[int, ...], seeds: list[int]) -> torch.Tensor:
    """One independent standard-normal draw per row from its own seed (order- and batch-independent)."""
    return torch.stack([torch.randn(shape[1:], generator=torch.Generator().manual_seed(s)) for s in seeds])


@torch.inference_mode()
def encode_images(vae: LoadedVAE, images: np.ndarray, latent: str = "mean",
                  seeds: list[int] | None = None) -> np.ndarray:
    """Encode uint8 images to SD-scaled latents.

    Args:
        images: uint8 ``[n, H, W, 3]``.
        latent: ``mean`` (posterior mean, deterministic) or ``sample`` (AutoencoderKL only; one draw per row
            from ``seeds``; TAESD is deterministic so both are the same).
    Returns:
        float32 ``[n, C, H/f, W/f]`` (f = 8 for SD VAEs and TAESD).
    """
    x = torch.from_numpy(np.ascontiguousarray(images)).to(vae.device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if vae.device.type == "cuda" and vae.dtype == torch.float16:
        x = x.half()
    else:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(vae):
        out = vae.model.encode(x)
    if vae.kind == "tiny":
        z = out.latents.float()
    else:
        dist = out.latent_dist
        z = dist.mean.float()
        if latent == "sample":
            if seeds is None:
                raise ValueError("latent='sample' needs one seed per image")
            z = z + dist.std.float() * _sample_noise(tuple(z.shape), seeds).to(z.device)
        z = (z - vae.shift_factor) * vae.scaling_factor
    return z.cpu().numpy().astype(np.float32)


@torch.inference_mode()
def decode_latents(vae: LoadedVAE, latents: np.ndarray) -> np.ndarray:
    """Decode SD-scaled latents ``float32 [n, C, h, w]`` to uint8 images ``[n, h*f, w*f, 3]``."""
    z = torch.from_numpy(np.ascontiguousarray(latents, dtype=np.float32)).to(vae.device)
    if vae.kind == "kl":
        z = z / vae.scaling_factor + vae.shift_factor
    if vae.device.type == "cuda" and vae.dtype == torch.float16:
        z = z.half()
    with autocast(vae):
        x = vae.model.decode(z).sample.float()
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def default_threads() -> int:
    return max(1, os.cpu_count() or 1)


def latent_shape(vae_path: str, kind: str, image_size: int) -> tuple[int, int, int]:
    """``(C, h, w)`` of the latents for square images of ``image_size`` px, from the VAE config alone."""
    from diffusers import AutoencoderKL, AutoencoderTiny

    kind = vae_kind(vae_path, kind)
    cls = AutoencoderTiny if kind == "tiny" else AutoencoderKL
    sub = {"subfolder": "vae"} if (Path(vae_path) / "vae" / "config.json").is_file() else {}
    cfg = cls.load_config(vae_path, **sub)
    blocks = cfg.get("encoder_block_out_channels" if kind == "tiny" else "block_out_channels", [64] * 4)
    f = 2 ** (len(blocks) - 1)
    if image_size % f:
        raise UserValueError(f"data.image_size={image_size} is not a multiple of the VAE's downsampling factor {f}")
    return (int(cfg.get("latent_channels", 4)), image_size // f, image_size // f)
