"""ImageNet-shaped stand-in run (issue 15): 1,000 classes x 1,281 rows of real JPEG bytes in HF-layout Parquet
shards through the real ``ddoq-ray quantize`` path (list -> encode -> quantize), with a cheap stand-in encoder so
that what is timed is the pipeline's own cost.

- **Data**: the CIFAR-10 train JPEGs (32 px, q75; the assets root, as the CLI finds it) reused cyclically, labels
  0..999 in a seeded shuffled order (as the public ImageNet-1K Parquet shards are shuffled), written as
  ``train-XXXXX-of-NNNNN.parquet`` with ``image`` struct {bytes, path} and int64 ``label`` (row groups of 1,000).
  The shard count scales with size (300 at full size, as the hub's layout).
- **Encoder**: a random-weight ``AutoencoderTiny`` (TAESD's class, f=8, 8 channels, 4 latent channels) saved with
  ``save_pretrained`` and loaded through the real path: latents 4x4x4 at 32 px. Its own kernel cost is measured
  in-process and reported beside the pipeline's (``encoder_kernel_img_s``).
- **Sizes**: ``--sizes 0.25,0.5,1`` of 1,281 rows per class (all 1,000 classes each time).
- **Memory**: the driver's peak RSS (the ``ddoq-ray`` process, sampled from /proc every 0.5 s),
  and the peak sum and peak single-process RSS of every other process of the run (Ray's raylet, GCS, workers),
  sampled every 0.5 s. Shared-memory pages of the object store count once per process that maps them.
- **Resume** (``--resume``, at ``--resume-size``, default the smallest size): ``ddoq-ray encode`` is SIGKILLed (the
  driver and its Ray processes) once ``--kill-at`` of the shards have done markers, then ``ddoq-ray quantize`` re-
  runs; reported: shards done at the kill, rows on disk in unfinished shards (work lost, redone), shards re-encoded,
  and the final accounting (``input = encoded + skipped``, no duplicate id: checked by the encode stage's commit).

    RAY_AUTH_MODE=disabled .venv/bin/python -m benchmarks.bench_standin [--work DIR] [--sizes 0.25,0.5,1] [--resume]
    .venv/bin/python -m benchmarks.bench_standin --quick      # 1,000 classes x 20 rows, resume included

Writes ``benchmarks/results/bench_standin.json`` and prints the table of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks._common import ROOT, descendants, rss_bytes, rss_shmem_bytes, table, write_result
from benchmarks.report_standin import COLS

N_CLASSES = 1000
PER_CLASS = 1281
FULL_SHARDS = 300
ROW_GROUP = 1000


def cifar_jpegs() -> list[bytes]:
    """The CIFAR-10 train JPEG bytes from the assets root (``DDOQ_ASSETS`` or the default, as the CLI)."""
    import pyarrow.parquet as pq

    from ddoq_ray.assets import assets_root, resolve

    path = resolve("assets:data/cifar10/train.parquet", assets_root(), kind="data")
    col = pq.read_table(path, columns=["image"]).column("image")
    return [v["bytes"] if isinstance(v, dict) else v for v in col.to_pylist()]


def make_dataset(root: Path, per_class: int, jpegs: list[bytes], seed: int = 0) -> dict:
    """Write the stand-in split under ``root`` (see module docstring); returns rows, shards, bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = N_CLASSES * per_class
    shards = max(1, round(FULL_SHARDS * per_class / PER_CLASS))
    labels = np.repeat(np.arange(N_CLASSES, dtype=np.int64), per_class)
    np.random.default_rng(seed).shuffle(labels)
    root.mkdir(parents=True, exist_ok=True)
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    bounds = np.linspace(0, n, shards + 1).astype(int)
    for s in range(shards):
        a, b = bounds[s], bounds[s + 1]
        rows = np.arange(a, b)
        img = pa.StructArray.from_arrays(
            [pa.array([jpegs[i % len(jpegs)] for i in rows], pa.binary()),
             pa.array([f"n{labels[i]:08d}_{i}.JPEG" for i in rows], pa.string())], fields=list(struct))
        pq.write_table(pa.table({"image": img, "label": pa.array(labels[a:b])}),
                       root / f"train-{s:05d}-of-{shards:05d}.parquet", row_group_size=ROW_GROUP)
    size = sum(f.stat().st_size for f in root.glob("*.parquet"))
    return {"rows": n, "shards": shards, "bytes": size}


def make_encoder(path: Path) -> Path:
    """A random-weight f=8 ``AutoencoderTiny`` (the pipeline's stand-in encoder), saved at ``path``."""
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                    num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1),
                    latent_channels=4).save_pretrained(path)
    return path


def encoder_kernel(path: Path, n: int = 4096) -> float:
    """Images/s of the stand-in encoder alone (2 torch threads, batch 128, 32 px, already-decoded uint8)."""
    import torch

    from ddoq_ray.vae import encode_images, load_vae

    torch.set_num_threads(2)
    vae = load_vae(str(path), "auto", "cpu", "fp32", 2)
    x = np.random.default_rng(0).integers(0, 255, (128, 32, 32, 3), dtype=np.uint8)
    encode_images(vae, x, "mean", [0] * 128)
    t = time.perf_counter()
    for _ in range(n // 128):
        encode_images(vae, x, "mean", [0] * 128)
    return n / (time.perf_counter() - t)


def write_config(work: Path, data: Path, encoder: Path, run: Path) -> Path:
    cfg = {
        "name": "imagenet_standin", "output_dir": str(run),
        "data": {"train": str(data), "test": str(data), "image_size": 32},
        "encode": {"vae": str(encoder), "latent": "mean", "batch_size": 128, "num_cpus_per_actor": 1,
                   "num_threads": 1},
        "quantize": {"algorithms": ["lloyd"], "ipc": 10, "niter": 20},
        "ray": {"num_cpus": 2},
    }
    path = work / f"{run.name}.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


class Sampler:
    """Peak RSS of the driver (``pid``) and of every other process it or Ray started, sampled every 0.5 s."""

    def __init__(self, pid: int):
        self.pid, self.driver, self.driver_own, self.others_sum, self.others_max = pid, 0, 0, 0, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _ray_pids(self) -> list[int]:
        return descendants(self.pid)  # ray.init(local) starts GCS and raylet as the driver's children

    def _run(self):
        while not self._stop.is_set():
            rss_driver = rss_bytes(self.pid)
            self.driver = max(self.driver, rss_driver)
            self.driver_own = max(self.driver_own, rss_driver - rss_shmem_bytes(self.pid))
            rss = [rss_bytes(p) for p in self._ray_pids()]
            self.others_sum = max(self.others_sum, sum(rss))
            self.others_max = max(self.others_max, max(rss, default=0))
            self._stop.wait(0.5)

    def stop(self) -> dict:
        self._stop.set()
        self._t.join()
        return {"driver_peak_mb": round(self.driver / 2**20), "driver_own_peak_mb": round(self.driver_own / 2**20),
                "workers_peak_sum_mb": round(self.others_sum / 2**20),
                "worker_peak_max_mb": round(self.others_max / 2**20)}


def _env() -> dict:
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1"}


def _cli(stage: str, cfg: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ddoq_ray.cli", stage, str(cfg)], stdout=log.open("w"),
                            stderr=subprocess.STDOUT, env=_env(), cwd=ROOT, start_new_session=True)


def _success(run: Path, stage: str) -> dict:
    return json.loads((run / stage / "_SUCCESS.json").read_text())


def run_size(work: Path, frac: float, jpegs, encoder: Path) -> dict:
    """One size: build the data, run ``ddoq-ray quantize`` (list + encode + quantize), measure."""
    per_class = max(1, round(PER_CLASS * frac))
    data = work / f"data_{per_class}"
    t = time.perf_counter()
    info = make_dataset(data, per_class, jpegs)
    make_s = time.perf_counter() - t
    run = work / f"run_{per_class}"
    shutil.rmtree(run, ignore_errors=True)
    cfg = write_config(work, data, encoder, run)
    t = time.perf_counter()
    proc = _cli("quantize", cfg, work / f"run_{per_class}.log")
    mem = Sampler(proc.pid)
    rc = proc.wait()
    wall = time.perf_counter() - t
    m = mem.stop()
    if rc:
        raise RuntimeError(f"ddoq-ray quantize failed (rc {rc}); see {work / f'run_{per_class}.log'}")
    enc, qua = _success(run, "encode"), _success(run, "quantize")
    files = sum(1 for _ in (run / "encode").rglob("*.parquet"))
    n = info["rows"]
    index_mb = _index_mb(data)
    return {"index_mb": index_mb, "size": f"{frac:g}", "rows": n,
            "shards_in": info["shards"], "data_mb": round(info["bytes"] / 2**20),
            "make_s": round(make_s, 1), "wall_s": round(wall, 1), "encode_s": enc["wall_s"],
            "quantize_s": qua["wall_s"], "other_s": round(wall - enc["wall_s"] - qua["wall_s"], 1),
            "encode_img_s": round(n / enc["wall_s"]), "overhead_ms_per_img": round(1e3 * enc["wall_s"] / n, 3),
            "latent_files": files, "encode_shards": enc["shards"], "encoded": enc["encoded"],
            "skipped": enc["skipped"], **m}


def _index_mb(data: Path) -> float:
    """Size of the driver's Arrow index of the split (``data.list_split``), for the driver-memory comparison."""
    from ddoq_ray.config import DataConfig
    from ddoq_ray.data import list_split

    index, _ = list_split(str(data), DataConfig(train=str(data)))
    return round(index.nbytes / 2**20, 1)


def resume(work: Path, frac: float, encoder: Path, kill_at: float) -> dict:
    """Kill ``ddoq-ray encode`` once ``kill_at`` of its shards are done, then re-run ``ddoq-ray quantize``."""
    import pyarrow.parquet as pq

    per_class = max(1, round(PER_CLASS * frac))
    data = work / f"data_{per_class}"
    run = work / f"resume_{per_class}"
    shutil.rmtree(run, ignore_errors=True)
    cfg = write_config(work, data, encoder, run)
    proc = _cli("encode", cfg, work / "resume_first.log")
    plan_total, done = None, []
    while proc.poll() is None:
        time.sleep(0.5)
        attempts = sorted((run / "encode").glob("attempt-*"))
        if not attempts:
            continue
        plan = attempts[-1] / "shards.json"
        if plan_total is None and plan.exists():
            plan_total = len(json.loads(plan.read_text()))
        done = list((attempts[-1] / "done").glob("*.json"))
        if plan_total and len(done) >= kill_at * plan_total:
            break
    if proc.poll() is not None:
        raise RuntimeError("encode finished before the kill; raise the size or lower --kill-at")
    ray_procs = descendants(proc.pid)  # its local Ray cluster (GCS, raylet, workers); never `ray stop`, which
    os.killpg(proc.pid, signal.SIGKILL)  # would also kill every other Ray cluster on the machine
    for p in ray_procs:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    attempt = sorted((run / "encode").glob("attempt-*"))[-1]
    done_ids = {p.stem for p in (attempt / "done").glob("*.json")}
    plan = json.loads((attempt / "shards.json").read_text())
    shard_rows = max(s["stop"] - s["start"] for s in plan)
    lost = torn = 0
    for d in (attempt / "latents").glob("shard=*"):
        if d.name.split("=", 1)[1] not in done_ids:
            for f in d.rglob("*.parquet"):
                try:
                    lost += pq.ParquetFile(f).metadata.num_rows
                except (OSError, ValueError):  # half-written when the kill came (no footer): redone too
                    torn += 1
    t = time.perf_counter()
    proc = _cli("quantize", cfg, work / "resume_second.log")
    rc = proc.wait()
    if rc:
        raise RuntimeError(f"resumed run failed (rc {rc}); see {work / 'resume_second.log'}")
    enc = _success(run, "encode")
    return {"rows": enc["input"], "shards": len(plan), "shard_rows": shard_rows, "done_at_kill": len(done_ids),
            "lost_rows_redone": lost, "lost_in_shards": round(lost / shard_rows, 2), "torn_files": torn,
            "resumed_shards": enc["resumed_shards"], "encoded_shards": enc["encoded_shards"],
            "encoded": enc["encoded"], "skipped": enc["skipped"], "resume_wall_s": round(time.perf_counter() - t, 1)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one, removed)")
    ap.add_argument("--sizes", default="0.25,0.5,1", help="fractions of 1,281 rows per class")
    ap.add_argument("--resume", action="store_true", help="also the kill-and-resume run at the largest size")
    ap.add_argument("--resume-size", type=float, default=None, help="size of the resume run (default: the smallest)")
    ap.add_argument("--kill-at", type=float, default=0.4, help="fraction of shards done when the driver is killed")
    ap.add_argument("--quick", action="store_true", help="1,000 classes x 20 rows, with resume")
    ap.add_argument("--resume-only", action="store_true",
                    help="only the kill-and-resume run; keeps the sizes of benchmarks/results/bench_standin.json")
    a = ap.parse_args(argv)
    sizes = [20 / PER_CLASS] if a.quick else [] if a.resume_only else [float(s) for s in a.sizes.split(",")]
    work = a.work or Path(tempfile.mkdtemp(prefix="ddoq_standin_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        jpegs = cifar_jpegs()
        encoder = make_encoder(work / "encoder")
        kernel = encoder_kernel(encoder)
        print(f"stand-in encoder alone: {kernel:.0f} img/s (2 threads, batch 128)", flush=True)
        rows, resume_date = [], None
        for frac in sizes:
            rows.append(run_size(work, frac, jpegs, encoder))
            print(table(rows[-1:], list(rows[-1])), flush=True)
        res = (resume(work, a.resume_size or (min(sizes) if sizes else 0.25), encoder, a.kill_at)
               if (a.resume or a.quick or a.resume_only) else None)
        saved = ROOT / "benchmarks" / "results" / "bench_standin.json"
        prev = json.loads(saved.read_text()) if saved.exists() and not a.quick else {}
        if a.resume_only:  # the sizes measured before
            rows, kernel = prev["sizes"], prev["encoder_kernel_img_s"]
        elif res is None and prev.get("resume"):  # sizes only: the last resume stays, dated
            res = prev["resume"]
            resume_date = prev.get("resume_measured") or prev["machine"]["date"]
    finally:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print("\n" + table(rows, COLS))
    if res:
        print("\nresume:\n" + table([res], list(res)))
    extra = {"resume_measured": resume_date} if resume_date else {}
    write_result("bench_standin_quick" if a.quick else "bench_standin",
                 {"encoder_kernel_img_s": round(kernel), "sizes": rows, "resume": res, **extra})


if __name__ == "__main__":
    main()
