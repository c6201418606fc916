"""Latent W2 solvers (POT): exact ``ot.emd2`` vs ``ot.emd2_lazy`` vs ``ot.sliced_wasserstein_distance``.

For a class of n latents (uniform mass 1/n) against K faiss centroids weighted by their exact cell masses — the
DDOQ evaluation in ``ddoq_ray.quantize.w2`` — for n in 1,300 and 10,000, K in 10 and 50, d in 256 and 4,096.
Reference value: sqrt(inertia / n), which the exact W2 must equal for cell-mass weights.

- ``emd2``: ``ot.emd2(a, b, ot.dist(x, c))`` on float64 (what ``quantize.w2`` does, dense n x K cost);
- ``emd2_lazy``: ``ot.emd2_lazy(x, c, a, b, metric="sqeuclidean", return_matrix=False)`` (costs on the fly; POT
  0.9.7's default ``return_matrix=True`` would return a tuple);
- ``sliced``: ``ot.sliced_wasserstein_distance(x, c, a, b, n_projections=P, seed=0)`` (P = 50 and 500; an
  approximation that *underestimates* W2: reported as the ratio to the exact value).

Time: median over repeats (one run where the first took > 5 s), methods interleaved in rotating order.
Memory: peak RSS increase over the call
(VmHWM reset through /proc/self/clear_refs before each call; includes POT's C++ allocations, which tracemalloc would
miss), in MB, from the first repeat.

    .venv/bin/python -m benchmarks.bench_w2 [--quick]
"""

from __future__ import annotations

import argparse
import gc
import time

import numpy as np

from benchmarks._common import gaussian_mixture, median, peak_rss, reset_peak_rss, rss_bytes, table, write_result


def solve(method: str, x: np.ndarray, c: np.ndarray, b: np.ndarray) -> float:
    import ot

    a = np.full(len(x), 1.0 / len(x))
    if method == "emd2":
        x64, c64 = x.astype(np.float64), c.astype(np.float64)
        return float(np.sqrt(max(ot.emd2(a, b, ot.dist(x64, c64), numItermax=max(100_000, 50 * len(x) * len(c))),
                                 0.0)))
    if method == "emd2_lazy":
        x64, c64 = x.astype(np.float64), c.astype(np.float64)
        return float(np.sqrt(max(ot.emd2_lazy(x64, c64, a, b, metric="sqeuclidean", return_matrix=False,
                                              numItermax=max(100_000, 50 * len(x) * len(c))), 0.0)))
    if method.startswith("sliced"):
        p = int(method.split("_")[1])
        return float(ot.sliced_wasserstein_distance(x.astype(np.float64), c.astype(np.float64), a, b,
                                                    n_projections=p, seed=0))
    raise ValueError(method)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="n=1,300 and 10,000 at d=256 and K=10 only, 1 repeat")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    from threadpoolctl import threadpool_limits

    from ddoq_ray.quantization import assign_exact, kmeans

    methods = ["emd2", "emd2_lazy", "sliced_50", "sliced_500"]
    grid = [(n, k, d) for d in (256, 4096) for n in (1300, 10_000) for k in (10, 50)]
    if a.quick:
        grid = [(n, 10, 256) for n in (1300, 10_000)]
    repeats = 1 if a.quick else a.repeats
    rows = []
    with threadpool_limits(1):
        solve("emd2", gaussian_mixture(100, 8, 0), gaussian_mixture(5, 8, 1), np.full(5, 0.2))  # warm-up
        for n, k, d in grid:
            x = gaussian_mixture(n, d, seed=n + d)
            c = kmeans(x, k, niter=20, seed=0, num_threads=1)
            asg, sq = assign_exact(x, c)
            b = np.bincount(asg, minlength=k) / n
            ref = float(np.sqrt(sq.mean()))
            times = {m: [] for m in methods}
            mem, val = {}, {}
            for r in range(repeats):
                for m in methods[r % len(methods):] + methods[:r % len(methods)]:
                    if r and times[m][0] > 5.0:  # slow cases: one run is enough, keep the total modest
                        continue
                    gc.collect()
                    base = rss_bytes()
                    reset_peak_rss()
                    t = time.perf_counter()
                    val[m] = solve(m, x, c, b)
                    times[m].append(time.perf_counter() - t)
                    if r == 0:
                        mem[m] = max(0, peak_rss() - base) / 2**20
            for m in methods:
                rows.append({"n": n, "K": k, "d": d, "method": m, "time_s": median(times[m]),
                             "times_s": times[m], "peak_mb": mem[m], "w2": val[m], "w2_ref": ref,
                             "w2_over_ref": val[m] / ref})
            print(f"n={n} K={k} d={d} done", flush=True)
    cols = ["n", "K", "d", "method", "time_s", "peak_mb", "w2", "w2_ref", "w2_over_ref"]
    print(table(rows, cols))
    write_result("bench_w2", {"quick": a.quick, "repeats": repeats, "threads": 1, "rows": rows, "columns": cols})


if __name__ == "__main__":
    main()
