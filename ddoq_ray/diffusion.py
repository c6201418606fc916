"""Diffusion decoding core: centroid latents -> images through a diffusion model (pure torch/diffusers, no Ray).

DDOQ §3 / D4M Alg. 1 (lines 11-15): ``x_k = D(U_t(z_k, emb))``: the centroid ``z_k`` (SD-scaled latent space, see
:mod:`ddoq_ray.vae`) is noised to the first kept timestep of a ``num_inference_steps`` schedule with
``scheduler.add_noise``, the last ``int(steps * strength)`` steps are denoised with classifier-free guidance, and
the pipeline's own VAE decodes the result. Strength 0 runs no step and is exactly the plain VAE decode. The kept
timesteps are those of diffusers' img2img ``get_timesteps`` (:func:`img2img_timesteps`: ``scheduler.order``
entries per step, and ``set_begin_index``), so second-order schedulers (Heun, KDPM2) start at the right place.

- ``sd_img2img``: stock ``StableDiffusionImg2ImgPipeline``; 4-channel tensors passed as ``image`` are taken as
  already-scaled latents (``prepare_latents``), so no patched diffusers (as D4M needed) is required.
- ``dit``: a diffusers DiT pipeline (``DiTPipeline`` has no ``latents``/``strength`` argument), so the partial
  denoising loop is written here: the null class for CFG is ``transformer.config.num_embeds_ada_norm`` (1000 for
  ImageNet DiTs; the stock pipeline hard-codes 1000), and learned-sigma channels are split off before ``step``.
  ``guidance_channels`` chooses which latent channels CFG guides (:func:`guide`).
- ``vae``: the VAE decoder alone (a VAE folder, or a pipeline folder with ``vae/``).

Every image has its own seed (one CPU ``torch.Generator`` per image), so its noise does not depend on batching.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from .vae import LoadedVAE, decode_latents, load_vae

MODES = ("vae", "sd_img2img", "dit")
GUIDANCE_CHANNELS = ("all", "first3")


@dataclass(frozen=True)
class DiffusionSettings:
    """The decode parameters the core needs (a subset of :class:`ddoq_ray.config.DecodeConfig`)."""

    mode: str = "vae"
    strength: float = 0.7
    guidance_scale: float = 8.0
    num_inference_steps: int = 50
    scheduler: str | None = None
    prompt_template: str = "a photo of a {name}"
    negative_prompt: str = "cartoon, anime, painting"
    guidance_channels: str = "all"


def image_seed(seed: int, label: int, k: int, copy: int) -> int:
    """Deterministic 63-bit seed of one output image from (run seed, label, centroid k, copy index)."""
    h = hashlib.sha256(f"ddoq-decode:{seed}:{label}:{k}:{copy}".encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


def kept_steps(num_inference_steps: int, strength: float) -> int:
    """Denoising steps that run: ``min(int(steps * strength), steps)`` (img2img ``get_timesteps``; 50·0.7 → 35)."""
    return min(int(num_inference_steps * strength), num_inference_steps)


def img2img_timesteps(scheduler, num_inference_steps: int, strength: float) -> torch.Tensor:
    """The timesteps that run from ``strength``, after ``scheduler.set_timesteps(num_inference_steps)``.

    Same as diffusers' ``StableDiffusionImg2ImgPipeline.get_timesteps``: ``t_start = steps - kept_steps``;
    ``scheduler.timesteps[t_start * scheduler.order:]`` (a second-order scheduler such as Heun or KDPM2 lists
    ``order`` entries per step), and ``scheduler.set_begin_index(t_start * scheduler.order)`` where the scheduler
    has it (its step index and ``add_noise`` then start there instead of searching the timestep). For first-order
    schedulers (DDIM, DDPM, Euler) this is ``timesteps[steps - kept_steps:]``.

    Returns:
        1-D tensor of timesteps (the scheduler's dtype), ``kept_steps * order`` long (Heun: one fewer per schedule).
    """
    t_start = max(num_inference_steps - kept_steps(num_inference_steps, strength), 0)
    begin = t_start * getattr(scheduler, "order", 1)
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(begin)
    return scheduler.timesteps[begin:]


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float, channels: str = "all") -> torch.Tensor:
    """Classifier-free guidance of a noise prediction ``[n, C, h, w]``: ``uncond + scale * (cond - uncond)``.

    ``channels="all"`` guides every latent channel (the standard CFG of Ho & Salimans 2022, and diffusers'
    ``DiTPipeline``). ``"first3"`` guides only channels 0-2 and keeps the conditional prediction in the others, as
    the original DiT sampler does (facebookresearch/DiT ``models.py`` ``forward_with_cfg``: ``eps, rest =
    model_out[:, :3], model_out[:, 3:]``, "for exact reproducibility", and ``sample.py`` keeps the conditional half),
    which the Minimax baseline uses.

    Raises:
        ValueError: unknown ``channels``.
    """
    guided = uncond + scale * (cond - uncond)
    if channels == "all":
        return guided
    if channels == "first3":
        return torch.cat([guided[:, :3], cond[:, 3:]], dim=1)
    raise ValueError(f"decode.guidance_channels={channels!r}; choose one of {', '.join(GUIDANCE_CHANNELS)}")


def build_scheduler(name: str, config):
    """A diffusers scheduler class by name, built ``from_config`` of the checkpoint's scheduler config.

    Raises:
        ValueError: unknown scheduler name.
    """
    import diffusers

    cls = getattr(diffusers, name, None) if name.endswith("Scheduler") else None
    if cls is None:
        raise ValueError(f"decode.scheduler={name!r} is not a diffusers scheduler class (e.g. DDIMScheduler, "
                         "PNDMScheduler, DPMSolverMultistepScheduler)")
    return cls.from_config(config)


def _noise(shape: tuple[int, ...], seeds: list[int]) -> torch.Tensor:
    """float32 ``[n, *shape]``: one standard-normal draw per image from its own CPU generator."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds])


def _loaded_vae(vae: torch.nn.Module, ref: str, device: torch.device) -> LoadedVAE:
    """Wrap a pipeline's VAE like :func:`vae.load_vae` does (fp32 unless fp16 on CUDA without force_upcast)."""
    fp16 = device.type == "cuda" and not getattr(vae.config, "force_upcast", True)
    dtype = torch.float16 if fp16 else torch.float32
    if vae.dtype != dtype:
        vae = vae.to(dtype=dtype)
    vae = vae.to(device).eval().requires_grad_(False)
    if device.type != "cuda":
        vae = vae.to(memory_format=torch.channels_last)
    return LoadedVAE(vae, "kl", ref, float(vae.config.scaling_factor),
                     float(getattr(vae.config, "shift_factor", None) or 0.0), device, dtype)


class Decoder:
    """``decode(latents float32 [n,C,h,w] SD-scaled, labels list[int], seeds list[int]) -> uint8 [n,H,W,3]``.

    ``labels`` are the run's labels (index into ``class_names`` / ``model_labels``).
    """

    def __init__(self, settings: DiffusionSettings, vae: LoadedVAE, device: torch.device):
        self.settings, self.vae, self.device = settings, vae, device

    def vae_decode(self, latents) -> np.ndarray:
        z = latents.float().cpu().numpy() if isinstance(latents, torch.Tensor) else latents
        return decode_latents(self.vae, z)

    def denoise(self, z0: torch.Tensor, labels: list[int], seeds: list[int]) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, latents: np.ndarray, labels: list[int], seeds: list[int]) -> np.ndarray:
        if not len(latents) == len(labels) == len(seeds):
            raise ValueError(f"decode: {len(latents)} latents, {len(labels)} labels, {len(seeds)} seeds")
        s = self.settings
        if s.mode == "vae" or kept_steps(s.num_inference_steps, s.strength) == 0:
            return self.vae_decode(np.asarray(latents, dtype=np.float32))
        z0 = torch.from_numpy(np.ascontiguousarray(latents, dtype=np.float32))
        with torch.inference_mode():
            return self.vae_decode(self.denoise(z0, list(labels), list(seeds)))


class SDImg2ImgDecoder(Decoder):
    """Stock ``StableDiffusionImg2ImgPipeline`` with the centroid as a 4-channel ``image``."""

    def __init__(self, settings: DiffusionSettings, pipe, vae: LoadedVAE, device: torch.device,
                 class_names: list[str]):
        super().__init__(settings, vae, device)
        self.pipe, self.class_names = pipe, class_names
        if pipe.tokenizer is None:
            raise ValueError("sd_img2img: the pipeline has no tokenizer; prompts cannot be encoded")

    def denoise(self, z0, labels, seeds):
        s, n = self.settings, len(labels)
        prompts = [s.prompt_template.format(name=self.class_names[c]) for c in labels]
        out = self.pipe(
            prompt=prompts, negative_prompt=[s.negative_prompt] * n if s.negative_prompt else None,
            image=z0.to(self.device), strength=s.strength, guidance_scale=s.guidance_scale,
            num_inference_steps=s.num_inference_steps,
            generator=[torch.Generator().manual_seed(int(x)) for x in seeds], output_type="latent", return_dict=True)
        return out.images


class DiTDecoder(Decoder):
    """Partial denoising with a class-conditional DiT (stack.md §5.4), CFG against the null class."""

    def __init__(self, settings: DiffusionSettings, pipe, vae: LoadedVAE, device: torch.device,
                 model_labels: list[int] | None):
        super().__init__(settings, vae, device)
        self.transformer, self.scheduler = pipe.transformer, pipe.scheduler
        cfg = self.transformer.config
        self.null_id = int(cfg.num_embeds_ada_norm)  # = num_classes; the CFG null embedding is the extra row
        self.channels = int(cfg.in_channels)
        self.model_labels = list(range(self.null_id)) if model_labels is None else list(model_labels)
        bad = [m for m in self.model_labels if not 0 <= m < self.null_id]
        if bad:
            raise ValueError(f"dit: class ids {bad[:5]} are outside the model's {self.null_id} classes")

    def denoise(self, z0, labels, seeds):
        s, sch, n = self.settings, self.scheduler, len(labels)
        dtype = self.transformer.dtype
        sch.set_timesteps(s.num_inference_steps)  # before every loop: schedulers keep state
        ts = img2img_timesteps(sch, s.num_inference_steps, s.strength)
        z = sch.add_noise(z0, _noise(tuple(z0.shape[1:]), seeds), ts[:1].repeat(n)).to(self.device, dtype)
        y = torch.tensor([self.model_labels[c] for c in labels], device=self.device)
        cfg = s.guidance_scale > 1
        if cfg:
            y = torch.cat([y, torch.full_like(y, self.null_id)])
        for t in ts:
            x = torch.cat([z, z]) if cfg else z
            x = sch.scale_model_input(x, t)
            out = self.transformer(x, timestep=t.expand(len(x)).to(self.device), class_labels=y).sample
            eps = out[:, : self.channels]  # drop learned-sigma channels (out_channels = 2*in_channels)
            if cfg:
                eps = guide(*eps.chunk(2), s.guidance_scale, s.guidance_channels)
            z = sch.step(eps, t, z).prev_sample
        return z


def load_decoder(settings: DiffusionSettings, model_path: str, *, class_names: list[str] | None = None,
                 model_labels: list[int] | None = None, device: str = "cpu", precision: str = "fp32",
                 vae_kind: str = "auto", num_threads: int | None = None) -> Decoder:
    """Load the decoder for ``settings.mode`` from a local folder or hub id with diffusers ``from_pretrained``.

    Args:
        model_path: ``vae``: a VAE (or pipeline folder with ``vae/``); ``sd_img2img``/``dit``: a pipeline.
        class_names: prompt names per run label (``sd_img2img``).
        model_labels: model label id per run label (``dit``); None: identity.
        device: ``cpu`` or ``cuda``; on CUDA the denoiser runs in fp16 (the VAE in fp32 when ``force_upcast``).
        precision: ``vae`` mode only (see :func:`vae.pick_dtype`).
    Raises:
        ValueError: unknown mode or scheduler, missing tokenizer, class ids out of range.
    """
    if num_threads:
        torch.set_num_threads(num_threads)
    dev = torch.device(device)
    if settings.mode == "vae":
        return Decoder(settings, load_vae(model_path, vae_kind, dev, precision, num_threads), dev)
    if settings.mode not in MODES:
        raise ValueError(f"unknown decode mode {settings.mode!r}; modes: {', '.join(MODES)}")
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    if settings.mode == "sd_img2img":
        from diffusers import StableDiffusionImg2ImgPipeline

        pipe = StableDiffusionImg2ImgPipeline.from_pretrained(
            model_path, dtype=dtype, safety_checker=None, requires_safety_checker=False)
    else:
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained(model_path, dtype=dtype)
    if settings.scheduler:
        pipe.scheduler = build_scheduler(settings.scheduler, pipe.scheduler.config)
    vae = _loaded_vae(pipe.vae, model_path, dev)
    pipe.to(dev)
    pipe.vae = vae.model  # keep our dtype choice for the VAE (pipe.to may have cast it)
    pipe.set_progress_bar_config(disable=True)
    if settings.mode == "sd_img2img":
        if not class_names:
            raise ValueError("sd_img2img needs class_names for the prompts")
        return SDImg2ImgDecoder(settings, pipe, vae, dev, class_names)
    return DiTDecoder(settings, pipe, vae, dev, model_labels)
