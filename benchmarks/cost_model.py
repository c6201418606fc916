"""Cost model: GPU-hours and peak memory per stage for the shipped ImageNet configs at IPC 10 and 50.

Every figure names its source. No GPU has run this project yet, so GPU times come from published figures
(batch-1 timings, i.e. conservative; batched runs are faster) scaled by FLOPs that this script counts on the real
architectures (``torch.utils.flop_counter.FlopCounterMode`` on meta tensors: no weights, no GPU):

- encode: SD v1.5 VAE encode, RTX 4090 (A100-class), batch 1: 0.004 s at 256 px, 0.015 s at 512 px; memory
  1.32 % / 3.52 % of 24 GB (diffusers docs, https://huggingface.co/docs/diffusers/hybrid_inference/vae_encode).
- decode: SD-1.5 UNet with CFG on an A100 80GB SXM, diffusers + SDPA, batch 1: 31.19 it/s
  (https://github.com/fal-ai/stable-diffusion-benchmarks); a DiT-XL/2 step costs (DiT FLOPs / UNet FLOPs) of it
  (counted here; the DiT paper's 118.6 GFLOPs for XL/2 is the same count in multiply-adds). Peak decode memory is
  the GPU check's figure once it has run on a GPU (benchmarks/results/gpu_check.json), else None.
- quantize: measured here (benchmarks/results/bench_quantize_scale.json: 1,000 classes x 1,300 latents of 4,096
  dims on 2 CPU cores); CPU-only, and k-means cost grows linearly with the latent dimension (16,384 for 512 px).
- train: ResNet-50 v1.5 AMP training on 1 x A100 80GB: 2,470 img/s (NVIDIA DeepLearningExamples, PyTorch
  ResNet50v1.5 README, "Training performance: NVIDIA DGX A100"), scaled by FLOPs: ResNet-50 4.1 vs ResNet-18 1.8
  GFLOPs per forward (He et al. 2016, Table 1, multiply-adds); a student step is 3 forwards (forward + backward)
  plus 1 teacher forward (online soft labels), a ResNet-50 step 3.

    .venv/bin/python -m benchmarks.cost_model        # prints the table, writes benchmarks/results/cost_model.json
"""

from __future__ import annotations

import argparse
import json

import yaml

from benchmarks._common import RESULTS, ROOT, table, write_result

CONFIGS = ["imagenet1k_dit_ipc10", "imagenet1k_sd_ipc10", "imagenette_dit_ipc10", "imagewoof_dit_ipc10"]
IMAGES_PER_CLASS = 1_281_167 / 1000  # ImageNet-1K train images per class on average
VAE_ENCODE_S = {256: 0.004, 512: 0.015}  # RTX 4090, batch 1 (diffusers docs)
VAE_ENCODE_MEM_GB = {256: 0.013154 * 24, 512: 0.0351901 * 24}  # batch 1, same table
SD_UNET_CFG_STEPS_PER_S = 31.19  # A100 80GB SXM, diffusers SDPA, batch 1 (fal-ai benchmarks)
RN50_TRAIN_IMG_S = 2470  # 1 x A100 80GB AMP (NVIDIA DeepLearningExamples)
RN50_GFLOP, RN18_GFLOP = 4.1, 1.8  # He et al. 2016 Table 1
SOURCES = {
    "encode": "https://huggingface.co/docs/diffusers/hybrid_inference/vae_encode (SD v1.5 VAE, RTX 4090, batch 1); "
              "CPU side measured: bench_jpeg.json + bench_standin.json",
    "decode": "https://github.com/fal-ai/stable-diffusion-benchmarks (SD-1.5, A100 80GB, 31.19 it/s) x counted FLOPs",
    "quantize": "measured: benchmarks/results/bench_quantize_scale.json (2 CPU cores)",
    "train": "NVIDIA DeepLearningExamples ResNet50v1.5 (A100 80GB AMP 2,470 img/s) x FLOPs (He et al. 2016)",
}


def count_flops() -> dict[str, float]:
    """FLOPs (2 x multiply-adds) of one forward at batch 1: SD-1.5 UNet at 64x64 latents, DiT-XL/2 at 32x32."""
    import torch
    from diffusers import DiTTransformer2DModel, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.gpu_check import DIT_XL_2, SD15_UNET

    out = {}
    with torch.device("meta"):
        unet, dit = UNet2DConditionModel(**SD15_UNET), DiTTransformer2DModel(**DIT_XL_2)
        with FlopCounterMode(display=False) as fc:
            unet(torch.zeros(1, 4, 64, 64), torch.tensor([500]), encoder_hidden_states=torch.zeros(1, 77, 768))
        out["sd15_unet"] = float(fc.get_total_flops())
        with FlopCounterMode(display=False) as fc:
            dit(torch.zeros(1, 4, 32, 32), timestep=torch.tensor([500]), class_labels=torch.tensor([1]))
        out["dit_xl2"] = float(fc.get_total_flops())
    return out


def _gpu_check_peak(check: str) -> float | None:
    f = RESULTS / "gpu_check.json"
    if not f.exists():
        return None
    rows = [r for r in json.loads(f.read_text())["rows"] if r.get("check") == check and r.get("peak_mem_mb")]
    return max(r["peak_mem_mb"] for r in rows) / 1024 if rows else None


def encode_cpu_ms(size: int) -> float | None:
    """CPU core-milliseconds per image of the encode stage besides the encoder: JPEG decode + resize at ``size``
    (bench_jpeg.json, per core) plus the pipeline's own cost (bench_standin.json at full size: 2 cores x wall per
    image, which also holds the stand-in encoder's share, so an upper bound). None until both have run."""
    jp, st = RESULTS / "bench_jpeg.json", RESULTS / "bench_standin.json"
    if not (jp.exists() and st.exists()):
        return None
    dec = {r["size"]: r["ms_per_image"] for r in json.loads(jp.read_text())["rows"] if "ms_per_image" in r}
    full = max(json.loads(st.read_text())["sizes"], key=lambda r: r["rows"])
    cores = json.loads(st.read_text())["machine"]["cores"]
    return dec.get(size, max(dec.values())) + cores * 1e3 * full["encode_s"] / full["rows"]


def config_costs(name: str, ipc: int, flops: dict, quant: dict) -> list[dict]:
    cfg = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
    d, dec, tr = cfg["data"], cfg["decode"], cfg["train"]
    classes = len(d.get("class_subset") or []) or 1000
    size, n_train = int(d["image_size"]), round(classes * IMAGES_PER_CLASS)
    dim = 4 * (size // 8) ** 2
    steps = int(int(dec["num_inference_steps"]) * float(dec["strength"]))
    step_s = 1 / SD_UNET_CFG_STEPS_PER_S
    if dec["mode"] == "dit":
        step_s *= flops["dit_xl2"] / flops["sd15_unet"]
    n_syn = classes * ipc * int(dec.get("images_per_centroid", 1))
    students = len(tr["methods"]) * len(tr["seeds"])
    student_img_s = RN50_TRAIN_IMG_S * (3 * RN50_GFLOP) / (3 * RN18_GFLOP + RN18_GFLOP)
    q = quant[ipc]
    cpu_ms = encode_cpu_ms(size)
    rows = [
        {"stage": "encode", "work": f"{n_train:,} images at {size} px",
         "gpu_hours": n_train * VAE_ENCODE_S[size] / 3600,
         "cpu_core_hours": None if cpu_ms is None else n_train * cpu_ms / 1e3 / 3600,
         "peak_gpu_gb": VAE_ENCODE_MEM_GB[size] * int(cfg["encode"]["batch_size"]),
         "note": f"memory: batch-1 figure x batch {cfg['encode']['batch_size']} (upper bound)"
                 + ("" if cpu_ms is None else f"; CPU: {cpu_ms:.2f} core-ms/image (JPEG decode + pipeline)")},
        {"stage": "quantize", "work": f"{classes} classes, {dim:,}-d latents, IPC {ipc}", "gpu_hours": 0.0,
         "cpu_core_hours": q["s_per_class"] * classes * quant["cores"] * dim / 4096 / 3600,
         "peak_gpu_gb": None, "note": f"CPU; largest worker {q['worker_peak_rss_max_mb'] * dim / 4096:.0f} MB RSS "
                                      "(measured at 4,096-d, scaled by dim)"},
        {"stage": "decode", "work": f"{n_syn:,} images, {steps} {dec['mode']} steps + CFG",
         "gpu_hours": n_syn * steps * step_s / 3600, "cpu_core_hours": None,
         "peak_gpu_gb": _gpu_check_peak("dit_xl2_denoise" if dec["mode"] == "dit" else "sd15_unet_img2img"),
         "note": "batch 1 throughput (conservative)"},
        {"stage": "train", "work": f"{students} students x {tr['epochs']} epochs x {classes * ipc:,} images",
         "gpu_hours": students * int(tr["epochs"]) * classes * ipc / student_img_s / 3600, "cpu_core_hours": None,
         "peak_gpu_gb": _gpu_check_peak("resnet18_student_step"), "note": f"{student_img_s:,.0f} img/s per GPU"},
    ]
    for r in rows:
        r.update(config=name, ipc=ipc, source=SOURCES[r["stage"]])
    return rows


def main(argv=None) -> dict:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    flops = count_flops()
    qs = json.loads((RESULTS / "bench_quantize_scale.json").read_text())
    quant = {r["ipc"]: r for r in qs["rows"] if r["classes"] == 1000} | {"cores": qs["num_cpus"]}
    rows = [r for name in CONFIGS for ipc in (10, 50) for r in config_costs(name, ipc, flops, quant)]
    cols = ["config", "ipc", "stage", "work", "gpu_hours", "cpu_core_hours", "peak_gpu_gb", "note"]
    print(table(rows, cols, floatfmt=".3g"))
    totals = {f"{c} IPC {i}": sum(r["gpu_hours"] for r in rows if r["config"] == c and r["ipc"] == i)
              for c in CONFIGS for i in (10, 50)}
    for k, v in totals.items():
        print(f"{k}: {v:.1f} GPU-hours")
    return write_result("cost_model", {"flops_per_forward": flops, "sources": SOURCES, "rows": rows,
                                       "columns": cols, "gpu_hours_total": totals})


if __name__ == "__main__":
    main()
