"""Encode stage throughput: Ray Data actor pool (``run_encode``) vs a plain single-process torch loop.

Two parts, same model (TAESD encoder at 64 px), batch 128, 2 torch threads:

1. **Kernel** (``--kernel-images`` already-decoded images in memory): fp32 / bf16 autocast x contiguous /
   channels_last, interleaved in rotating order, median over repeats; GFLOP/s against the encoder's FLOPs per
   image (``torch.utils.flop_counter.FlopCounterMode``) and a timed 2,048^3 ``torch.matmul`` "peak".
2. **End to end** (``--images`` CIFAR-10 train images, default 10,000 so that start-up is amortised as in a real
   run): the plain script a researcher would write (one process: read the Parquet rows, decode the JPEGs, encode
   in bf16 + channels_last, write a Parquet file of latents) vs ``ddoq_ray.encode.run_encode`` on a local 2-CPU
   Ray cluster with the main config (1 actor, 1 CPU, 2 torch threads; JPEG decoding in 0.5-CPU tasks that overlap
   with the actor) and with 2 actors (0.5 CPU, 1 thread each). Ray walls exclude ``ray.init`` and include actor
   start-up and model load; ``marginal`` also removes the fixed cost estimated from a 130-image run.

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

TRAIN_REF = "assets:data/cifar10/train.parquet"  # found under the assets root, as the CLI does
VAE_REF = "assets:models/taesd"
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


def plain_script(index, image_column: str, size: int, model, out_dir: str, batch: int = 128) -> float:
    """Seconds for the one-process baseline: read rows, decode JPEGs, encode (bf16 + channels_last), write Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from ddoq_ray.data import read_bytes
    from ddoq_ray.images import decode_batch

    t = time.perf_counter()
    ids, zs = [], []
    for s in range(0, index.num_rows, 1024):
        part = index.slice(s, 1024)
        b = decode_batch({"id": np.array(part.column("id").to_pylist(), dtype=object),
                          "label": part.column("label").to_numpy(), "bytes": read_bytes(part, image_column)}, size)
        with torch.inference_mode():
            for j in range(0, len(b["image"]), batch):
                x = torch.from_numpy(b["image"][j:j + batch]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
                x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    zs.append(model.encode(x).latents.float().numpy())
        ids += [str(i) for i in b["id"]]
    z = np.concatenate(zs)
    pq.write_table(pa.table({"id": ids, "latent": pa.FixedShapeTensorArray.from_numpy_ndarray(z)}),
                   os.path.join(out_dir, "plain_latents.parquet"))
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
    p.add_argument("--quick", action="store_true", help="1,000 images end to end, 256 kernel images, 1 repeat")
    p.add_argument("--images", type=int, default=10_000, help="end-to-end images (default 10,000)")
    p.add_argument("--kernel-images", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--assets-root", default=None, help="assets folder (default $DDOQ_ASSETS, else ../shared)")
    a = p.parse_args(argv)
    global TRAIN, VAE
    from ddoq_ray.assets import assets_root, resolve

    root = assets_root(a.assets_root)
    TRAIN, VAE = resolve(TRAIN_REF, root, kind="data"), resolve(VAE_REF, root)
    n_img, n_kernel, repeats = (1000, 256, 1) if a.quick else (a.images, a.kernel_images, a.repeats)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from ddoq_ray.config import load_config
    from ddoq_ray.data import list_split, load_arrays
    from ddoq_ray.vae import cpu_supports_bf16, load_vae

    torch.set_num_threads(2)
    cfg = load_config(CONFIG)
    size, col = cfg.data.image_size, cfg.data.image_column
    index, _ = list_split(TRAIN, cfg.data, max_per_class=n_img // 10)
    kindex, _ = list_split(TRAIN, cfg.data, max_per_class=max(1, n_kernel // 10))
    images = load_arrays(kindex, col, size)["images"]
    n, nk = index.num_rows, len(images)

    peak = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    model = load_vae(VAE, "tiny", "cpu", "fp32").model
    flops = encoder_flops(model.to(memory_format=torch.contiguous_format), size)
    gflop = flops / 1e9
    print(f"encoder {gflop:.3f} GFLOP/image; matmul peak fp32 {peak['fp32']:.0f} / bf16 {peak['bf16']:.0f} "
          f"GFLOP/s (2 threads)", flush=True)

    # 1. kernel variants on decoded images
    variants = {"fp32": (torch.float32, False), "fp32 channels_last": (torch.float32, True),
                "bf16": (torch.bfloat16, False), "bf16 channels_last": (torch.bfloat16, True)}
    names = list(variants)
    times: dict[str, list[float]] = {v: [] for v in variants}
    for r in range(repeats):
        for v in names[r % len(names):] + names[:r % len(names)]:
            dt, cl = variants[v]
            model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
            plain_loop(model, images[:128], dt, cl)  # warm-up (oneDNN primitive cache)
            times[v].append(plain_loop(model, images, dt, cl))
    kernel_rows = []
    for v, (dt, _) in variants.items():
        s = median(times[v])
        pk = peak["bf16" if dt == torch.bfloat16 else "fp32"]
        kernel_rows.append({"variant": v, "images": nk, "wall_s": s, "img_per_s": nk / s,
                            "gflop_per_s": nk * gflop / s, "pct_of_peak": 100 * nk * gflop / s / pk,
                            "times_s": times[v]})
    kcols = ["variant", "images", "wall_s", "img_per_s", "gflop_per_s", "pct_of_peak"]
    print(table(kernel_rows, kcols), flush=True)

    # 2. end to end: plain script vs Ray, interleaved (plain, ray, ..., plain) so drift shows
    import ray

    model.to(memory_format=torch.channels_last)
    base = [f"data.train={TRAIN}", f"encode.vae={VAE}", "ray.num_cpus=2"]
    ray_cfgs = {"ray 1 actor (main config)": base,
                "ray 2 actors (0.5 CPU, 1 thread each)": base + ["encode.min_actors=2", "encode.max_actors=2",
                                                                 "encode.num_threads=1",
                                                                 "encode.num_cpus_per_actor=0.5"]}
    walls: dict[str, list[float]] = {"plain script": []}
    tmp = tempfile.mkdtemp(prefix="ddoq_bench_enc_")
    try:
        walls["plain script"].append(plain_script(index, col, size, model, tmp))
        print(f"plain script: {walls['plain script'][-1]:.1f} s", flush=True)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        small, _ = list_split(TRAIN, cfg.data, max_per_class=13)
        walls["ray 1 actor, 130 images"] = [ray_encode(base, small, tmp)]
        for name, ov in ray_cfgs.items():
            walls[name] = [ray_encode(ov, index, tmp)]
            print(f"{name}: {walls[name][-1]:.1f} s", flush=True)
        ray.shutdown()
        walls["plain script"].append(plain_script(index, col, size, model, tmp))
        print(f"plain script (again): {walls['plain script'][-1]:.1f} s", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    plain = median(walls["plain script"])
    fixed = walls["ray 1 actor, 130 images"][0] - 130 * plain / n
    rows = [{"variant": "plain script", "images": n, "wall_s": plain, "img_per_s": n / plain, "vs_plain": 1.0}]
    for name in ray_cfgs:
        w = walls[name][0]
        marginal = n / max(w - fixed, 1e-9)
        rows.append({"variant": name, "images": n, "wall_s": w, "img_per_s": n / w, "vs_plain": plain / w,
                     "marginal_img_per_s": marginal, "marginal_vs_plain": marginal / (n / plain)})
    cols = ["variant", "images", "wall_s", "img_per_s", "vs_plain", "marginal_img_per_s", "marginal_vs_plain"]
    print(table(rows, cols))
    write_result("bench_encode", {"quick": a.quick, "images": n, "kernel_images": nk, "repeats": repeats,
                                  "gflop_per_image": gflop, "matmul_peak_gflops": peak, "torch_threads": 2,
                                  "bf16_supported": cpu_supports_bf16(), "ray_fixed_overhead_s": fixed,
                                  "walls_s": walls, "kernel_rows": kernel_rows, "kernel_columns": kcols,
                                  "rows": rows, "columns": cols})


if __name__ == "__main__":
    main()
