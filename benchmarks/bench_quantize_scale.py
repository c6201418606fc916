"""The whole quantize stage at ImageNet shape: ``run_quantize`` on a local 2-CPU Ray cluster.

Latents: C classes x 1,300 x 4x32x32 (4,096-d) float32, a Gaussian mixture per class, written once into a cache
directory in the encode stage's layout (``latents/status=ok/label=<c>/part-0.parquet``, columns ``id``, ``error``,
``latent`` fixed_shape_tensor). Each C gets its own directory holding exactly C classes (hard links to one master
copy), because the stage's reader discovers the whole ``latents/`` tree.

Per (C, IPC): wall time of ``run_quantize`` (Ray already started; one fresh cluster per run), peak RSS of the
driver, peak of the summed RSS of Ray worker processes and of the largest one (sampled from /proc every 0.25 s),
bytes the workers read (``/proc/<pid>/io`` rchar; the files are in the page cache after generation, so this is
not disk traffic), and the median time of one ``read_class_latents`` call in the driver (the per-task read).
Wall time is then fitted as a + b*C and extrapolated to 1,000 classes when 1,000 was not run.

    RAY_AUTH_MODE=disabled .venv/bin/python -m benchmarks.bench_quantize_scale [--quick] [--classes 100 300 1000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._common import ProcSampler, gaussian_mixture, median, table, write_result

N_PER_CLASS, SHAPE = 1300, (4, 32, 32)
CLASS_BYTES = N_PER_CLASS * int(np.prod(SHAPE)) * 4


def class_file(root: Path, c: int) -> Path:
    return root / "latents" / "status=ok" / f"label={c}" / "part-0.parquet"


def ensure_master(cache: Path, n_classes: int) -> float:
    """Generate classes missing from ``cache/master``; returns the seconds spent."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ddoq_ray.artifacts.latents import to_tensor_array

    t0 = time.perf_counter()
    master = cache / "master"
    for c in range(n_classes):
        f = class_file(master, c)
        if f.exists():
            continue
        f.parent.mkdir(parents=True, exist_ok=True)
        x = gaussian_mixture(N_PER_CLASS, int(np.prod(SHAPE)), seed=1000 + c).reshape(N_PER_CLASS, *SHAPE)
        t = pa.table({"id": pa.array([f"c{c:04d}/{i:05d}" for i in range(N_PER_CLASS)], pa.string()),
                      "error": pa.array([""] * N_PER_CLASS, pa.string()), "latent": to_tensor_array(x)})
        tmp = f.with_suffix(".tmp")
        pq.write_table(t, tmp)
        tmp.rename(f)
    return time.perf_counter() - t0


def view(cache: Path, n_classes: int) -> Path:
    """``cache/c<N>``: exactly N classes, hard-linked from the master copy."""
    root = cache / f"c{n_classes}"
    for c in range(n_classes):
        f = class_file(root, c)
        if not f.exists():
            f.parent.mkdir(parents=True, exist_ok=True)
            os.link(class_file(cache / "master", c), f)
    return root


def run_one(root: Path, n_classes: int, ipc: int, num_cpus: int) -> dict:
    import ray

    from ddoq_ray.artifacts.latents import read_class_latents
    from ddoq_ray.config import QuantizeConfig
    from ddoq_ray.quantize import run_quantize

    read_times = []
    for _ in range(3):
        t = time.perf_counter()
        read_class_latents(root, n_classes // 2)
        read_times.append(time.perf_counter() - t)
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    out = Path(tempfile.mkdtemp(prefix="ddoq_bench_q_"))
    try:
        qcfg = QuantizeConfig(ipc=ipc, niter=50, nredo=1, num_cpus=1)
        summary: dict = {}
        with ProcSampler() as s:
            t = time.perf_counter()
            run_quantize(qcfg, root, list(range(n_classes)), out, summary)
            wall = time.perf_counter() - t
        out_bytes = sum(f.stat().st_size for f in out.iterdir())
    finally:
        ray.shutdown()
        shutil.rmtree(out, ignore_errors=True)
    return {"classes": n_classes, "ipc": ipc, "wall_s": wall, "s_per_class": wall / n_classes,
            "loadavg_1min_after": round(os.getloadavg()[0], 1),
            "driver_peak_rss_mb": s.peak_driver / 2**20, "workers_peak_rss_sum_mb": s.peak_workers_sum / 2**20,
            "worker_peak_rss_max_mb": s.peak_worker_max / 2**20, "workers_rchar_gb": s.io_delta("rchar") / 1e9,
            "latent_bytes_gb": n_classes * CLASS_BYTES / 1e9, "read_class_s": median(read_times),
            "output_mb": out_bytes / 2**20, "mean_w2_mass": summary.get("mean_w2_mass")}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="20 and 60 classes, IPC 10 and 50 (~2 min)")
    p.add_argument("--classes", type=int, nargs="+", default=[100, 300])
    p.add_argument("--ipc", type=int, nargs="+", default=[10, 50])
    p.add_argument("--cache", default="/tmp/ddoq_bench_scale", help="latent cache (reused between runs)")
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--min-free-gb", type=float, default=8.0, help="keep this much disk free after generating")
    a = p.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    classes = [20, 60] if a.quick else sorted(a.classes)
    cache = Path(a.cache)
    cache.mkdir(parents=True, exist_ok=True)

    have = sum(class_file(cache / "master", c).exists() for c in range(max(classes)))
    free = shutil.disk_usage(cache).free
    fits = [c for c in classes if (c - min(c, have)) * CLASS_BYTES * 1.02 < free - a.min_free_gb * 1e9]
    skipped = [c for c in classes if c not in fits]
    if skipped:
        print(f"not enough free disk for {skipped} classes ({free / 1e9:.0f} GB free): skipping them")
    gen_s = ensure_master(cache, max(fits))
    print(f"latents for {max(fits)} classes ready in {cache} ({gen_s:.0f} s generating)", flush=True)

    rows = []
    for n in fits:
        root = view(cache, n)
        for ipc in a.ipc:  # IPC values interleaved within each class count
            r = run_one(root, n, ipc, a.num_cpus)
            print({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}, flush=True)
            rows.append(r)
            write_result("bench_quantize_scale", {"quick": a.quick, "partial": True, "rows": rows})

    fits_out = {}
    for ipc in a.ipc:
        rs = [r for r in rows if r["ipc"] == ipc]
        if len(rs) >= 2:
            b, a0 = np.polyfit([r["classes"] for r in rs], [r["wall_s"] for r in rs], 1)
            fits_out[ipc] = {"intercept_s": float(a0), "s_per_class": float(b),
                             "predicted_1000_classes_s": float(a0 + 1000 * b),
                             "measured_1000": any(r["classes"] == 1000 for r in rs)}
    cols = ["classes", "ipc", "wall_s", "s_per_class", "loadavg_1min_after", "driver_peak_rss_mb",
            "workers_peak_rss_sum_mb", "worker_peak_rss_max_mb", "workers_rchar_gb", "latent_bytes_gb", "read_class_s",
            "output_mb"]
    print(table(rows, cols))
    for ipc, f in fits_out.items():
        print(f"IPC {ipc}: wall ~ {f['intercept_s']:.1f} s + {f['s_per_class']:.3f} s/class -> "
              f"1,000 classes ~ {f['predicted_1000_classes_s'] / 60:.1f} min")
    write_result("bench_quantize_scale", {"quick": a.quick, "num_cpus": a.num_cpus, "generate_s": gen_s,
                                          "skipped_for_disk": skipped, "rows": rows, "columns": cols,
                                          "linear_fit": fits_out, "n_per_class": N_PER_CLASS,
                                          "latent_shape": SHAPE})


if __name__ == "__main__":
    main()
