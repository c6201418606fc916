"""GPU check: the pure cores on CUDA without Ray, real architectures from their configs, random weights.

What runs (time and memory do not depend on the weights, so nothing is downloaded):

- **SD-VAE encoder** (diffusers ``AutoencoderKL`` with the SD kl-f8 config below) at 256 and 512 px through
  :func:`ddoq_ray.vae.encode_images` (``latent="sample"``, one seed per image, so seed-determinism is tested too).
- **DiT-XL/2-256 partial denoising** (``DiTTransformer2DModel`` with the DiT-XL/2 config: 28 layers, 1152 hidden,
  16 heads, patch 2, 4 -> 8 channels, 1000 classes): strength 0.7 of 50 DDIM steps (35 run) with CFG 4.0 against
  the null class, through :class:`ddoq_ray.diffusion.DiTDecoder` ``.denoise``.
- **SD-1.5 UNet img2img** (``UNet2DConditionModel`` with SD-1.5's config): 35 of 50 PNDM steps with CFG 8.0 on
  random text embeddings ``[77, 768]`` (the CLIP text encoder and tokenizer need files; their cost is one
  forward per prompt), timesteps from :func:`ddoq_ray.diffusion.img2img_timesteps`, CFG from
  :func:`ddoq_ray.diffusion.guide`.
- **ResNet-18 student step** at 224 px with an online ResNet-18 teacher through
  :func:`ddoq_ray.students.train.fit_loop` (CutMix, soft-label KL, AdamW; one epoch of a few batches).
- **faiss k-means on the GPU** when ``faiss`` has ``StandardGpuResources`` (faiss-gpu); else the row says so and
  :func:`ddoq_ray.quantization.kmeans` runs on the CPU for comparison.

Every check runs twice with the same seed: the first run warms up (cuDNN autotuning, allocator), the second is
timed; ``deterministic`` says whether both outputs are identical and ``max_abs_diff`` how far apart they are.
``finite`` checks the fp16/bf16 outputs have no NaN/Inf. ``peak_mem_mb`` is ``torch.cuda.max_memory_allocated``
over both runs (None on CPU). On CPU (or with ``--tiny``) every model is shrunk to a few channels and layers, so
the script runs in seconds (the test suite does this); the figures are then only a smoke test.

Needs torch, numpy, timm, pyarrow, diffusers, pydantic, pyyaml; never imports Ray (docs/benchmarks.md: running it
on a bare CUDA machine).

    python -m benchmarks.gpu_check [--tiny] [--out results.json] [--only vae dit unet student faiss]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from benchmarks._common import RESULTS, machine, table

CHECKS = ("vae", "dit", "unet", "student", "faiss")
COLUMNS = ["check", "size", "batch", "dtype", "img_per_s", "wall_s", "peak_mem_mb", "finite", "deterministic",
           "max_abs_diff", "note"]

# Stable Diffusion kl-f8 VAE (CompVis/stable-diffusion-v1-5 vae/config.json; same as stabilityai/sd-vae-ft-ema).
SD_VAE = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
              up_block_types=["UpDecoderBlock2D"] * 4, block_out_channels=[128, 256, 512, 512], layers_per_block=2,
              act_fn="silu", latent_channels=4, norm_num_groups=32, sample_size=512, scaling_factor=0.18215)
TINY_VAE = {**SD_VAE, "block_out_channels": [32, 32, 32, 32], "layers_per_block": 1}
# DiT-XL/2 (Peebles & Xie 2023, Table 1; facebook/DiT-XL-2-256 transformer/config.json): 16 x 72 = 1152 hidden.
DIT_XL_2 = dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
                sample_size=32, patch_size=2, num_embeds_ada_norm=1000, norm_type="ada_norm_zero")
TINY_DIT = {**DIT_XL_2, "num_attention_heads": 2, "attention_head_dim": 16, "num_layers": 2, "sample_size": 8,
            "num_embeds_ada_norm": 10}
# SD-1.5 UNet (stable-diffusion-v1-5 unet/config.json).
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, cross_attention_dim=768,
                 block_out_channels=[320, 640, 1280, 1280], attention_head_dim=8, norm_num_groups=32,
                 down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
                 up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3)
TINY_UNET = {**SD15_UNET, "block_out_channels": [32, 64], "layers_per_block": 1, "cross_attention_dim": 32,
             "attention_head_dim": 4, "sample_size": 8, "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
             "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"]}
# Scheduler settings of the checkpoints' scheduler_config.json (DiT: linear betas; SD-1.5: PNDM, scaled_linear).
DIT_SCHEDULER = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
                     clip_sample=False)
SD_SCHEDULER = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                    skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)


def _sizes(tiny: bool) -> dict:
    """Image sizes, batches and steps per check (full: the shipped ImageNet configs' batch sizes)."""
    if tiny:
        return {"vae": [(32, 2)], "dit": (8, 2, 4), "unet": (8, 2, 4), "student": (32, 4, 2, 10), "faiss": (200, 64, 4)}
    return {"vae": [(256, 64), (512, 16)], "dit": (32, 32, 50), "unet": (64, 8, 50), "student": (224, 100, 4, 1000),
            "faiss": (1300, 4096, 50)}


def _dtypes(dev) -> list:
    import torch

    return [torch.float16, torch.bfloat16] if dev.type == "cuda" else [torch.float32, torch.bfloat16]


def _name(dtype) -> str:
    return {"torch.float16": "fp16", "torch.bfloat16": "bf16", "torch.float32": "fp32"}[str(dtype)]


class _Probe:
    """Times the second of two runs, tracks peak CUDA memory over both, compares their outputs."""

    def __init__(self, dev):
        self.dev = dev

    def __call__(self, fn) -> dict:
        import torch

        cuda = self.dev.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        a = np.asarray(fn(), dtype=np.float64)
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        b = np.asarray(fn(), dtype=np.float64)
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - t
        both = np.concatenate([a.ravel(), b.ravel()])
        return {"wall_s": wall, "peak_mem_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
                "finite": bool(np.isfinite(both).all()), "deterministic": bool(np.array_equal(a, b)),
                "max_abs_diff": float(np.nanmax(np.abs(a - b))) if a.size else 0.0}


def check_vae(dev, tiny: bool, probe: _Probe) -> list[dict]:
    """SD-VAE encoder through ``vae.encode_images`` (fp16: a ``.half()`` model; bf16: autocast)."""
    import torch
    from diffusers import AutoencoderKL

    from ddoq_ray.vae import LoadedVAE, encode_images

    torch.manual_seed(0)
    with torch.device(dev):
        model = AutoencoderKL(**(TINY_VAE if tiny else SD_VAE)).eval().requires_grad_(False)
    rows = []
    for size, batch in _sizes(tiny)["vae"]:
        images = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
        for dtype in _dtypes(dev):
            m = model.half() if dtype == torch.float16 else model.float()
            if dev.type != "cuda":
                m = m.to(memory_format=torch.channels_last)
            vae = LoadedVAE(m, "kl", "random SD kl-f8", 0.18215, 0.0, dev, dtype)
            r = probe(lambda vae=vae, images=images, batch=batch: encode_images(
                vae, images, "sample", seeds=list(range(batch))))
            rows.append({"check": "sd_vae_encode", "size": size, "batch": batch, "dtype": _name(dtype),
                         "img_per_s": batch / r["wall_s"], **r})
    return rows


def check_dit(dev, tiny: bool, probe: _Probe) -> list[dict]:
    """DiT-XL/2 partial denoising (strength 0.7, CFG 4.0) through ``DiTDecoder.denoise`` (no VAE decode)."""
    import torch
    from diffusers import DDIMScheduler, DiTTransformer2DModel

    from ddoq_ray.diffusion import DiffusionSettings, DiTDecoder, kept_steps

    size, batch, steps = _sizes(tiny)["dit"]
    cfg = TINY_DIT if tiny else DIT_XL_2
    torch.manual_seed(0)
    with torch.device(dev):
        model = DiTTransformer2DModel(**cfg).eval().requires_grad_(False)
    settings = DiffusionSettings(mode="dit", strength=0.7, guidance_scale=4.0, num_inference_steps=steps)
    latent = (4, cfg["sample_size"], cfg["sample_size"])
    z0 = torch.from_numpy(np.random.default_rng(0).standard_normal((batch, *latent), dtype=np.float32))
    labels, seeds = [i % cfg["num_embeds_ada_norm"] for i in range(batch)], list(range(batch))
    rows = []
    for dtype in _dtypes(dev):
        pipe = SimpleNamespace(transformer=model.to(dtype), scheduler=DDIMScheduler(**DIT_SCHEDULER))
        dec = DiTDecoder(settings, pipe, None, dev, None)

        def run(dec=dec):
            with torch.inference_mode():
                return dec.denoise(z0, labels, seeds).float().cpu().numpy()
        r = probe(run)
        rows.append({"check": "dit_xl2_denoise", "size": size * 8, "batch": batch, "dtype": _name(dtype),
                     "img_per_s": batch / r["wall_s"], **r,
                     "note": f"{kept_steps(steps, 0.7)} of {steps} DDIM steps, CFG (2x rows)"})
    return rows


def check_unet(dev, tiny: bool, probe: _Probe) -> list[dict]:
    """SD-1.5 UNet img2img loop (35 of 50 PNDM steps, CFG 8.0) on random text embeddings."""
    import torch
    from diffusers import PNDMScheduler, UNet2DConditionModel

    from ddoq_ray.diffusion import guide, img2img_timesteps, kept_steps

    size, batch, steps = _sizes(tiny)["unet"]
    cfg = TINY_UNET if tiny else SD15_UNET
    torch.manual_seed(0)
    with torch.device(dev):
        model = UNet2DConditionModel(**cfg).eval().requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn((batch, 4, cfg["sample_size"], cfg["sample_size"]), generator=g)
    text = torch.randn((2 * batch, 77, cfg["cross_attention_dim"]), generator=g)  # [cond; uncond] embeddings
    rows = []
    for dtype in _dtypes(dev):
        unet = model.to(dtype)

        def run(unet=unet, dtype=dtype):
            sch = PNDMScheduler(**SD_SCHEDULER)
            sch.set_timesteps(steps)
            ts = img2img_timesteps(sch, steps, 0.7)
            noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(1))
            z = sch.add_noise(z0, noise, ts[:1].repeat(batch)).to(dev, dtype)
            emb = text.to(dev, dtype)
            with torch.inference_mode():
                for t in ts:
                    out = unet(torch.cat([z, z]), t.to(dev), encoder_hidden_states=emb).sample
                    cond, uncond = out.chunk(2)
                    z = sch.step(guide(cond, uncond, 8.0), t, z).prev_sample
            return z.float().cpu().numpy()
        r = probe(run)
        rows.append({"check": "sd15_unet_img2img", "size": size * 8, "batch": batch, "dtype": _name(dtype),
                     "img_per_s": batch / r["wall_s"], **r,
                     "note": f"{kept_steps(steps, 0.7)} of {steps} PNDM steps, CFG (2x rows), no text encoder"})
    return rows


def check_student(dev, tiny: bool, probe: _Probe) -> list[dict]:
    """ResNet-18 student, online ResNet-18 teacher, through ``students.train.fit_loop`` (1 epoch)."""
    import torch

    from ddoq_ray.config import TrainConfig
    from ddoq_ray.students.models import build_model
    from ddoq_ray.students.teachers import freeze
    from ddoq_ray.students.train import fit_loop

    size, batch, steps, classes = _sizes(tiny)["student"]
    n = batch * steps
    rng = np.random.default_rng(0)
    train = {"images": rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8),
             "labels": rng.integers(0, classes, n), "weights": rng.uniform(0.5, 2.0, n).astype(np.float32)}
    torch.manual_seed(1)
    teacher = freeze(build_model("resnet18", classes, size))
    rows = []
    for dtype in _dtypes(dev):
        cfg = TrainConfig(student="resnet18", image_size=size, epochs=1, batch_size=batch, precision=_name(dtype),
                          label_mode="online", cutmix_prob=0.5)
        r = probe(lambda cfg=cfg: [fit_loop(train, None, teacher, cfg, 0, classes, device=dev)["train_loss"]])
        rows.append({"check": "resnet18_student_step", "size": size, "batch": batch, "dtype": _name(dtype),
                     "img_per_s": n / r["wall_s"], **r,
                     "note": f"{steps} steps incl. model build; online teacher; output compared: train loss"})
    return rows


def check_faiss(dev, tiny: bool, probe: _Probe) -> list[dict]:
    """faiss k-means (IPC 10 and 50) on one class of ImageNet shape: GPU when faiss-gpu is installed."""
    try:
        import faiss
    except ImportError:
        return [{"check": "faiss_kmeans", "note": "faiss is not installed: no k-means check"}]
    from ddoq_ray.quantization import kmeans

    n, d, niter = _sizes(tiny)["faiss"]
    x = np.random.default_rng(0).standard_normal((n, d), dtype=np.float32)
    gpu = hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    rows = []
    for ipc in (10, 50):
        if gpu:
            def run(ipc=ipc):
                km = faiss.Kmeans(d, ipc, niter=niter, seed=0, gpu=True, max_points_per_centroid=max(n, 256),
                                  min_points_per_centroid=1, verbose=False)
                km.train(x)
                return km.centroids
            note = f"faiss GPU k-means ({faiss.get_num_gpus()} GPU), {niter} iterations"
        else:
            def run(ipc=ipc):
                return kmeans(x, ipc, niter=niter, seed=0)
            note = ("faiss has no StandardGpuResources (faiss-cpu wheel): CPU k-means instead" if not gpu else "")
        r = probe(run)
        rows.append({"check": "faiss_kmeans", "size": d, "batch": n, "dtype": f"fp32 IPC {ipc}",
                     "img_per_s": n / r["wall_s"], **{**r, "peak_mem_mb": r["peak_mem_mb"] if gpu else None},
                     "note": note})
    return rows


RUNNERS = {"vae": check_vae, "dit": check_dit, "unet": check_unet, "student": check_student, "faiss": check_faiss}


def run_checks(tiny: bool, only: list[str], budget_s: float) -> dict:
    """Run the checks in order until ``budget_s`` is spent; a check that fails becomes a row with its error."""
    import torch

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tiny = tiny or dev.type != "cuda"
    probe, rows, t0 = _Probe(dev), [], time.perf_counter()
    for name in only:
        if time.perf_counter() - t0 > budget_s:
            rows.append({"check": name, "note": f"skipped: the {budget_s:.0f} s budget was spent"})
            continue
        t = time.perf_counter()
        try:
            new = RUNNERS[name](dev, tiny, probe)
        except Exception as e:  # report and go on: one broken check must not hide the others' figures
            new = [{"check": name, "note": f"failed: {type(e).__name__}: {e}"[:300]}]
        for r in new:
            r.setdefault("check_total_s", time.perf_counter() - t)
        rows += new
        print(table(new, COLUMNS), flush=True)
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return {"device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu", "cuda": dev.type == "cuda",
            "torch": torch.__version__, "cuda_version": torch.version.cuda, "tiny": tiny,
            "total_s": time.perf_counter() - t0, "rows": rows, "columns": COLUMNS}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true", help="tiny models and sizes (automatic without CUDA)")
    p.add_argument("--only", nargs="+", choices=CHECKS, default=list(CHECKS))
    p.add_argument("--budget-s", type=float, default=420.0, help="skip the remaining checks after this (8 min cap)")
    p.add_argument("--out", type=Path, default=None,
                   help="JSON path (default benchmarks/results/gpu_check.json, or gpu_check_cpu_tiny.json on CPU)")
    a = p.parse_args(argv)
    res = run_checks(a.tiny, a.only, a.budget_s)
    out = a.out or RESULTS / ("gpu_check.json" if res["cuda"] and not res["tiny"] else "gpu_check_cpu_tiny.json")
    payload = {"benchmark": "gpu_check", "machine": machine(), **res}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"\n{table(res['rows'], COLUMNS)}\n\nwrote {out} ({res['total_s']:.0f} s)")
    return payload


if __name__ == "__main__":
    main()
