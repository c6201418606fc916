"""Encode stage throughput: Ray Data actor pool (``run_encode``) vs a plain single-process torch loop.

Same images (CIFAR-10 train, decoded to 64 px), same model (TAESD encoder), batch 128, 2 torch threads unless
stated. Variants of the plain loop: fp32 / bf16 autocast x contiguous / channels_last (interleaved in rotating
order, median over repeats). Ray: ``ddoq_ray.encode.run_encode`` on a local 2-CPU cluster (reads the Parquet,
decodes JPEGs in Ray tasks, encodes in the actor pool, writes Parquet), with 1 actor (1 CPU, 2 torch threads:
the main config) in bf16 and fp32, and 2 actors (1 thread each; 0.5 CPU each, because the read/repartition
tasks need a whole free CPU: with 2 x 1 or 2 x 0.75 CPU actors on a 2-CPU cluster the pipeline stalled, no
progress after a minute, when tried).
Ray times exclude ``ray.init`` but include actor start-up and model load; a run on 130 images estimates that
fixed cost, and ``marginal img/s`` removes it.

FLOPs per image come from ``torch.utils.flop_counter.FlopCounterMode`` on the encoder; the machine's peak is a
timed 2,048^3 ``torch.matmul`` on 2 threads in fp32 and bf16.

    RAY_AUTH_MODE=disabled .venv/bin/python -m benchmarks.bench_encode [--quick]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

import numpy as np

from benchmarks._common import median, table, write_result

TRAIN = "/work/shared/data/cifar10/train.parquet"
VAE = "/work/shared/models/taesd"
CONFIG = "configs/cifar10_taesd_ipc10.yaml"


def matmul_peak(dtype, n: int = 2048, reps: int = 5) -> float:
    import torch

    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    torch.matmul(a, b)
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        torch.matmul(a, b)
        ts.append(time.perf_counter() - t)
    return 2 * n**3 / median(ts) / 1e9


def encoder_flops(model, size: int) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, size, size)
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        model.encode(x)
    return int(fc.get_total_flops())


def plain_loop(model, images: np.ndarray, dtype, channels_last: bool, batch: int = 128) -> float:
    """Seconds to encode ``images`` (uint8 NHWC) with the same preprocessing as ``vae.encode_images``."""
    import torch

    t = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(images), batch):
            x = torch.from_numpy(images[s:s + batch]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                z = model.encode(x).latents.float()
            z.numpy().astype(np.float32)
    return time.perf_counter() - t


def ray_encode(cfg_overrides: list[str], index, out_root: str) -> float:
    from pathlib import Path

    from ddoq_ray.config import load_config
    from ddoq_ray.encode import run_encode

    cfg = load_config(CONFIG, cfg_overrides)
    out = Path(tempfile.mkdtemp(prefix="enc_", dir=out_root))
    t = time.perf_counter()
    run_encode(cfg, index, VAE, out, {})
    wall = time.perf_counter() - t
    shutil.rmtree(out, ignore_errors=True)
    return wall


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="512 images, 1 repeat (~2 min)")
    p.add_argument("--images", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    n_img, repeats = (512, 1) if a.quick else (a.images, a.repeats)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from ddoq_ray.config import load_config
    from ddoq_ray.data import list_split, load_arrays
    from ddoq_ray.vae import cpu_supports_bf16, load_vae

    torch.set_num_threads(2)
    cfg = load_config(CONFIG)
    index, _ = list_split(TRAIN, cfg.data, max_per_class=n_img // 10)
    t = time.perf_counter()
    images = load_arrays(index, cfg.data.image_column, cfg.data.image_size)["images"]
    decode_s = time.perf_counter() - t
    n = len(images)

    peak = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    model = load_vae(VAE, "tiny", "cpu", "fp32").model
    flops = encoder_flops(model.to(memory_format=torch.contiguous_format), cfg.data.image_size)
    print(f"{n} images decoded in {decode_s:.1f} s; encoder {flops / 1e9:.3f} GFLOP/image; matmul peak "
          f"fp32 {peak['fp32']:.0f} / bf16 {peak['bf16']:.0f} GFLOP/s (2 threads)", flush=True)

    variants = {"plain fp32": (torch.float32, False), "plain fp32 channels_last": (torch.float32, True),
                "plain bf16": (torch.bfloat16, False), "plain bf16 channels_last": (torch.bfloat16, True)}
    times: dict[str, list[float]] = {v: [] for v in variants}
    names = list(variants)

    def run_plain(r):
        for v in names[r % len(names):] + names[:r % len(names)]:
            dt, cl = variants[v]
            model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
            plain_loop(model, images[:128], dt, cl)  # warm-up (oneDNN primitive cache)
            times[v].append(plain_loop(model, images, dt, cl))

    import ray

    base = [f"data.train={TRAIN}", f"encode.vae={VAE}", "ray.num_cpus=2"]
    ray_cfgs = {"ray 1 actor bf16 (config)": base,
                "ray 1 actor fp32": base + ["encode.precision=fp32"],
                "ray 2 actors bf16 (0.5 CPU each)": base + ["encode.min_actors=2", "encode.max_actors=2",
                                                        "encode.num_threads=1", "encode.num_cpus_per_actor=0.5"]}
    ray_wall: dict[str, float] = {}
    tmp = tempfile.mkdtemp(prefix="ddoq_bench_enc_")
    try:
        run_plain(0)
        print("plain loops (pass 1) done", flush=True)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        small, _ = list_split(TRAIN, cfg.data, max_per_class=13)
        ray_wall["ray 1 actor bf16, 130 images"] = ray_encode(base, small, tmp)
        for name, ov in ray_cfgs.items():
            ray_wall[name] = ray_encode(ov, index, tmp)
            print(f"{name}: {ray_wall[name]:.1f} s", flush=True)
        ray.shutdown()
        for r in range(1, repeats):
            run_plain(r)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    gflop = flops / 1e9
    rows = []
    for v, (dt, _) in variants.items():
        s = median(times[v])
        pk = peak["bf16" if dt == torch.bfloat16 else "fp32"]
        rows.append({"variant": v, "wall_s": s, "img_per_s": n / s, "gflop_per_s": n * gflop / s,
                     "pct_of_peak": 100 * n * gflop / s / pk, "times_s": times[v]})
    ref = next(r for r in rows if r["variant"] == "plain bf16 channels_last")
    rows.append({"variant": "plain bf16 channels_last + JPEG decode", "wall_s": ref["wall_s"] + decode_s,
                 "img_per_s": n / (ref["wall_s"] + decode_s)})
    fixed = ray_wall["ray 1 actor bf16, 130 images"] - 130 / ref["img_per_s"]
    for name in ray_cfgs:
        w = ray_wall[name]
        pk = peak["fp32" if "fp32" in name else "bf16"]
        marginal = n / max(w - fixed, 1e-9)
        rows.append({"variant": name, "wall_s": w, "img_per_s": n / w, "marginal_img_per_s": marginal,
                     "gflop_per_s": marginal * gflop, "pct_of_peak": 100 * marginal * gflop / pk,
                     "vs_plain_bf16_cl": (n / w) / ref["img_per_s"],
                     "marginal_vs_plain_bf16_cl": marginal / ref["img_per_s"]})
    cols = ["variant", "wall_s", "img_per_s", "marginal_img_per_s", "gflop_per_s", "pct_of_peak", "vs_plain_bf16_cl",
            "marginal_vs_plain_bf16_cl"]
    print(table(rows, cols))
    write_result("bench_encode", {"quick": a.quick, "images": n, "repeats": repeats, "decode_s": decode_s,
                                  "gflop_per_image": gflop, "matmul_peak_gflops": peak, "torch_threads": 2,
                                  "bf16_supported": cpu_supports_bf16(), "ray_fixed_overhead_s": fixed,
                                  "ray_wall_s": ray_wall, "rows": rows, "columns": cols})


if __name__ == "__main__":
    main()
