"""JPEG decode + resize cost per CPU core on ImageNet-sized JPEGs, and the CPUs per GPU that keep the encoder fed.

Inputs: ``--images`` CIFAR-10 train images (from the assets root, ``<assets>/data/cifar10/train.parquet``, or
``--train``) **upscaled** with Lanczos to 500 x 375 (ImageNet's typical size) and saved as JPEG quality 90, i.e.
smooth, low-detail photos: real ImageNet JPEGs carry more high-frequency detail and decode a little slower, so
these figures are an upper bound on throughput. Each image goes through :func:`ddoq_ray.images.decode_image`
(the encode stage's decoder: EXIF transpose, RGB, centre crop 375 x 375, Lanczos resize) at 256 and 512 px, on
one thread in this process (= one core); median of ``--repeats`` interleaved passes.

CPUs per GPU = (encoder images/s on that GPU) / (decoded images/s per core), from published SD-VAE encoder
timings (diffusers docs "VAE Encode with Hybrid Inference", SD v1.5 VAE, batch 1:
https://huggingface.co/docs/diffusers/hybrid_inference/vae_encode): RTX 4090 0.004 s at 256 px and 0.015 s at
512 px; RTX 3090 0.010 s / 0.032 s. The 3090 stands in for A10G / L4 class GPUs (the cluster files' workers), the
4090 for A100-class ones. Batched encoding is faster than batch 1, hence ``--headroom`` (default 1.5x).

    .venv/bin/python -m benchmarks.bench_jpeg [--quick]
"""

from __future__ import annotations

import argparse
import io
import math
import os
import time

import numpy as np

from benchmarks._common import median, table, write_result

# SD v1.5 VAE encode, seconds per image at batch 1 (diffusers docs, see module docstring).
PUBLISHED_ENCODE_S = {"RTX 4090 (A100-class)": {256: 0.004, 512: 0.015},
                      "RTX 3090 (A10G/L4-class)": {256: 0.010, 512: 0.032}}
SOURCE = "https://huggingface.co/docs/diffusers/hybrid_inference/vae_encode (SD v1.5 VAE encode, batch 1)"
IMAGENET_SIZE = (500, 375)


def imagenet_sized_jpegs(train: str, n: int, quality: int = 90) -> list[bytes]:
    """``n`` CIFAR-10 images upscaled to 500 x 375 (Lanczos) and JPEG-encoded at ``quality`` (bytes)."""
    import pyarrow.parquet as pq
    from PIL import Image

    col = pq.ParquetFile(train).read_row_group(0, columns=["image"]).column("image").to_pylist()[:n]
    out = []
    for b in col:
        im = Image.open(io.BytesIO(b)).convert("RGB").resize(IMAGENET_SIZE, Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def decode_pass(jpegs: list[bytes], size: int) -> float:
    """Seconds to decode + resize every JPEG to ``size`` px with ``images.decode_image``."""
    from ddoq_ray.images import decode_image

    t = time.perf_counter()
    for b in jpegs:
        decode_image(b, size)
    return time.perf_counter() - t


def cpus_per_gpu(per_core: dict[int, float], headroom: float) -> list[dict]:
    """Cores needed to decode as fast as each published encoder runs (× ``headroom``), per image size."""
    rows = []
    for gpu, secs in PUBLISHED_ENCODE_S.items():
        for size, s in secs.items():
            enc = 1.0 / s
            rows.append({"gpu": gpu, "size": size, "encoder_img_per_s": enc,
                         "decode_img_per_s_per_core": per_core[size],
                         "cores_needed": enc / per_core[size], "cores_with_headroom": math.ceil(
                             headroom * enc / per_core[size])})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="100 images, 1 repeat")
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--headroom", type=float, default=1.5)
    p.add_argument("--train", default=None, help="CIFAR-10 train Parquet (default: <assets root>/data/cifar10)")
    a = p.parse_args(argv)
    from ddoq_ray.assets import assets_root, resolve

    train = a.train or resolve("assets:data/cifar10/train.parquet", assets_root(), kind="data")
    n, repeats = (100, 1) if a.quick else (a.images, a.repeats)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    jpegs = imagenet_sized_jpegs(train, n)
    sizes = (256, 512)
    times: dict[int, list[float]] = {s: [] for s in sizes}
    decode_pass(jpegs[:10], 256)  # warm-up (imports, PIL plugin registry)
    for r in range(repeats):
        for s in (sizes if r % 2 == 0 else sizes[::-1]):
            times[s].append(decode_pass(jpegs, s))
    rows = [{"size": s, "images": n, "wall_s": median(times[s]), "img_per_s_per_core": n / median(times[s]),
             "ms_per_image": 1000 * median(times[s]) / n, "times_s": times[s]} for s in sizes]
    cols = ["size", "images", "wall_s", "img_per_s_per_core", "ms_per_image"]
    print(table(rows, cols))
    need = cpus_per_gpu({r["size"]: r["img_per_s_per_core"] for r in rows}, a.headroom)
    ncols = ["gpu", "size", "encoder_img_per_s", "decode_img_per_s_per_core", "cores_needed", "cores_with_headroom"]
    print(table(need, ncols))
    write_result("bench_jpeg", {"quick": a.quick, "images": n, "repeats": repeats, "jpeg_size": IMAGENET_SIZE,
                                "jpeg_quality": 90, "mean_jpeg_kb": float(np.mean([len(b) for b in jpegs]) / 1024),
                                "source_images": "CIFAR-10 train, upscaled 32 -> 500x375 (Lanczos)",
                                "encoder_source": SOURCE, "headroom": a.headroom, "rows": rows, "columns": cols,
                                "cpus_per_gpu": need, "cpus_per_gpu_columns": ncols})


if __name__ == "__main__":
    main()
