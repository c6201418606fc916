"""Per-class k-means: faiss (the quantize stage) vs D4M's MiniBatchKMeans setting vs sklearn KMeans.

Data: real encoded CIFAR-10 latents (5,000 x 4x8x8 = 256-d per class, from an encode-stage directory) and
synthetic ImageNet-shaped latents (1,300 x 4,096 per class, a Gaussian mixture). For IPC (K) in 1, 10, 50:

- ``faiss``: ``ddoq_ray.quantize.kmeans`` (niter 50, nredo 1, all points) — what the stage runs;
- ``faiss_it10``: the same with niter 10 (how much of faiss' time is the 50 Lloyd iterations);
- ``faiss_matched``: the same with the fewest Lloyd iterations (from 1, 2, 3, 5, 10, 20, 50) whose inertia is
  equal to or lower than D4M's on that class: the "equal or lower inertia" comparison of the goal;
- ``d4m_minibatch``: ``MiniBatchKMeans(n_clusters=K, batch_size=km_expand*K, random_state=0, n_init="auto")`` fed
  by ``partial_fit`` in chunks of km_expand*K (km_expand=1, D4M's ImageNet setting; the tail that does not fill a
  chunk is dropped, as D4M's loop does);
- ``sk_kmeans``: ``KMeans(n_clusters=K, random_state=0, n_init="auto")`` (Lloyd, k-means++ init).

Every method's centroids then get the same exact float64 assignment (``assign_exact``): inertia/N is the mean
squared distance to the nearest centroid, W2(mass) is POT's exact W2 with the cell masses (it equals
sqrt(inertia/N), a built-in check). All methods run on 1 thread (as in a 1-CPU Ray task), interleaved in rotating
order per repeat; times are medians over repeats.

    .venv/bin/python -m benchmarks.bench_quantize [--quick]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from benchmarks._common import gaussian_mixture, median, table, write_result

METHODS = ["faiss", "faiss_it10", "faiss_matched", "d4m_minibatch", "sk_kmeans"]
LADDER = [1, 2, 3, 5, 10, 20, 50]


def fit(method: str, x: np.ndarray, k: int, km_expand: int = 1, niter_matched: int = 50) -> np.ndarray:
    from sklearn.cluster import KMeans, MiniBatchKMeans

    from ddoq_ray.quantization import kmeans

    if method == "faiss":
        return kmeans(x, k, niter=50, seed=0, num_threads=1)
    if method == "faiss_it10":
        return kmeans(x, k, niter=10, seed=0, num_threads=1)
    if method == "faiss_matched":
        return kmeans(x, k, niter=niter_matched, seed=0, num_threads=1)
    if method == "d4m_minibatch":
        bs = km_expand * k
        m = MiniBatchKMeans(n_clusters=k, batch_size=bs, random_state=0, n_init="auto")
        for s in range(0, len(x) - bs + 1, bs):
            m.partial_fit(x[s:s + bs])
        return m.cluster_centers_.astype(np.float32)
    if method == "sk_kmeans":
        return KMeans(n_clusters=k, random_state=0, n_init="auto").fit(x).cluster_centers_.astype(np.float32)
    raise ValueError(method)


def bench_class(name: str, x: np.ndarray, ipcs: list[int], repeats: int) -> list[dict]:
    from ddoq_ray.quantization import assign_exact, w2

    rows = []
    for k in ipcs:
        times: dict[str, list[float]] = {m: [] for m in METHODS}
        cents: dict[str, np.ndarray] = {}
        d4m_inertia = assign_exact(x, fit("d4m_minibatch", x, k))[1].mean()
        niter_matched = next((it for it in LADDER if assign_exact(x, fit("faiss_matched", x, k, niter_matched=it))[1]
                              .mean() <= d4m_inertia * (1 + 1e-9)), LADDER[-1])
        for r in range(repeats):
            order = METHODS[r % len(METHODS):] + METHODS[:r % len(METHODS)]  # rotate: no method always first
            for m in order:
                t = time.perf_counter()
                cents[m] = fit(m, x, k, niter_matched=niter_matched)
                times[m].append(time.perf_counter() - t)
        for m in METHODS:
            t = time.perf_counter()
            a, sq = assign_exact(x, cents[m])
            t_assign = time.perf_counter() - t
            mass = np.bincount(a, minlength=k) / len(x)
            rows.append({"data": name, "n": len(x), "d": x.shape[1], "ipc": k, "method": m,
                         "time_s": median(times[m]), "times_s": times[m], "assign_s": t_assign,
                         "inertia_per_n": float(sq.mean()), "w2_mass": w2(x, cents[m], mass),
                         "w2_identity": float(np.sqrt(sq.mean())), "empty_cells": int((mass == 0).sum()),
                         "max_mass": float(mass.max()), "niter_matched": niter_matched})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 class per dataset, 1 repeat (< 1 min)")
    p.add_argument("--run-dir", default="runs/cifar10_taesd_ipc10",
                   help="a run directory whose encode stage holds CIFAR-10 latents (the main job's; skipped if "
                        "it has none)")
    p.add_argument("--classes", type=int, default=3, help="classes per dataset (default 3)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--ipc", type=int, nargs="+", default=[1, 10, 50])
    a = p.parse_args(argv)
    n_cls, repeats = (1, 1) if a.quick else (a.classes, a.repeats)

    from threadpoolctl import threadpool_limits

    from ddoq_ray.artifacts.latents import read_class_latents

    rows = []
    with threadpool_limits(1):
        warm = gaussian_mixture(500, 64, seed=99)
        for m in METHODS:  # imports, OpenMP/BLAS thread pools: keep first-call costs out of the timings
            fit(m, warm, 5)
        from ddoq_ray.rundir import stage_path

        committed = (Path(a.run_dir) / "encode" / "_SUCCESS.json").is_file()
        enc = Path(stage_path(a.run_dir, "encode")) if committed else None
        if enc is not None and (enc / "latents").is_dir():
            for c in range(n_cls):
                _, z = read_class_latents(enc, c)
                rows += bench_class(f"cifar10 class {c}", z.reshape(len(z), -1), a.ipc, repeats)
                print(f"cifar10 class {c} done", flush=True)
        else:
            print(f"no committed encode stage in {a.run_dir}: skipping the CIFAR-10 part")
        for c in range(n_cls):
            x = gaussian_mixture(1300, 4096, seed=c)
            rows += bench_class(f"synthetic {c}", x, a.ipc, repeats)
            print(f"synthetic class {c} done", flush=True)

    # Summary per (dataset kind, ipc, method): median time over classes, mean inertia; ratios vs faiss.
    summary = []
    for kind in ("cifar10", "synthetic"):
        for k in a.ipc:
            base = [r for r in rows if r["data"].startswith(kind) and r["ipc"] == k and r["method"] == "faiss"]
            if not base:
                continue
            bt, bi = median([r["time_s"] for r in base]), float(np.mean([r["inertia_per_n"] for r in base]))
            for m in METHODS:
                rs = [r for r in rows if r["data"].startswith(kind) and r["ipc"] == k and r["method"] == m]
                t, i = median([r["time_s"] for r in rs]), float(np.mean([r["inertia_per_n"] for r in rs]))
                summary.append({"data": kind, "n x d": f"{rs[0]['n']}x{rs[0]['d']}", "ipc": k, "method": m,
                                "time_s": t, "time_vs_faiss": t / bt, "inertia_per_n": i,
                                "inertia_vs_faiss": i / bi,
                                "w2_mass": float(np.mean([r["w2_mass"] for r in rs])),
                                "assign_s": median([r["assign_s"] for r in rs]),
                                "niter": (max(r["niter_matched"] for r in rs) if m == "faiss_matched" else
                                          {"faiss": 50, "faiss_it10": 10}.get(m))})
    cols = ["data", "n x d", "ipc", "method", "niter", "time_s", "time_vs_faiss", "inertia_per_n", "inertia_vs_faiss",
            "w2_mass", "assign_s"]
    print(table(summary, cols))
    write_result("bench_quantize", {"quick": a.quick, "repeats": repeats, "classes": n_cls, "threads": 1,
                                    "summary": summary, "summary_columns": cols, "rows": rows})


if __name__ == "__main__":
    main()
