"""Indexing at ImageNet scale: ``data.list_split`` on a 1.28 M-file ImageFolder (local disk and ``s3://``) and on
a folder of HF-layout Parquet shards, timed, with the driver's peak memory against the size of the index.

Inputs are built in a temporary folder (``--tmp``, default ``$TMPDIR``) and removed afterwards:
- ``imagefolder``: 1,000 class folders ``n<8 digits>/`` of ``--per-class`` (1,281) **empty** ``.JPEG`` files
  (listing never opens an image);
- ``parquet``: ``--shards`` (300) Parquet files in the public ImageNet-1K Hugging Face layout: ``image`` struct
  {bytes binary, path string}, ``label`` int64, ``ClassLabel`` names in the ``huggingface`` schema metadata;
  1.28 M rows in all, each image a 1 KiB random payload (so reading the image column would show in time and
  memory: listing must read only ``label``);
- ``imagefolder_s3``: the same tree with ``--s3-files`` empty objects in a moto S3 bucket (moto's server in this
  process; PUTs to moto are slow, so the count is smaller and the time is extrapolated linearly to 1.28 M,
  marked ``extrapolated``; memory is not extrapolated: at that count it is mostly the S3 client's fixed cost).

Each listing runs in a fresh child process: ``time_s`` is the ``list_split`` call, ``peak_mb`` the child's peak
RSS (VmHWM) above its RSS after imports, ``index_mb`` the Arrow index's own size; ``peak/index`` near 1-3 means
the driver holds little besides the index.

    .venv/bin/python -m benchmarks.bench_index [--quick] [--code DIR ...]   # --code: ddoq_ray from each DIR
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
N_CLASSES = 1000
IMAGENET_TRAIN = 1_281_167


def _proc_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return 0


def child(kind: str, loc: str) -> dict:
    """One listing in this (fresh) process; returns the measurements."""
    from ddoq_ray.config import DataConfig
    from ddoq_ray.data import list_split

    base = _proc_kb("VmRSS:")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: the peak from here on
    t = time.perf_counter()
    index, classes = list_split(loc, DataConfig(train=loc))
    dt = time.perf_counter() - t
    return {"kind": kind, "rows": index.num_rows, "classes": len(classes), "time_s": round(dt, 2),
            "peak_mb": round((_proc_kb("VmHWM:") - base) / 1024, 1), "index_mb": round(index.nbytes / 2**20, 1)}


def _measure(kind: str, loc: str, codes: list[Path]) -> list[dict]:
    return [_measure_one(kind, loc, c) for c in codes]


def _measure_one(kind: str, loc: str, code: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code)}
    p = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", kind, loc], env=env,
                       capture_output=True, text=True, check=False)
    if p.returncode:
        raise SystemExit(f"{kind}: listing failed:\n{p.stderr[-3000:]}")
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["peak/index"] = round(r["peak_mb"] / max(r["index_mb"], 0.1), 2)
    return {"code": code.name, **r}


def _class_names(n: int) -> list[str]:
    return [f"n{1440764 + 7 * i:08d}" for i in range(n)]


def build_imagefolder(root: Path, per_class: int) -> float:
    t = time.perf_counter()
    for c in _class_names(N_CLASSES):
        d = root / c
        d.mkdir(parents=True)
        for i in range(per_class):
            os.close(os.open(d / f"{c}_{i}.JPEG", os.O_CREAT | os.O_WRONLY, 0o644))
    return time.perf_counter() - t


def build_parquet(root: Path, shards: int, rows: int) -> float:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = time.perf_counter()
    root.mkdir(parents=True)
    names = _class_names(N_CLASSES)
    hf = {"info": {"features": {"image": {"_type": "Image"},
                                "label": {"_type": "ClassLabel", "names": names}}}}
    rng = np.random.default_rng(0)
    payload = pa.array([rng.bytes(1024) for _ in range(256)], pa.binary())
    per = -(-rows // shards)
    for s in range(shards):
        n = min(per, rows - s * per)
        labels = (np.arange(s * per, s * per + n) * 7919) % N_CLASSES
        img = pa.StructArray.from_arrays(
            [payload.take(pa.array(np.arange(n) % 256)), pa.array([f"{names[v]}_{i}.JPEG" for i, v in
                                                                  enumerate(labels)])], names=["bytes", "path"])
        table = pa.table({"image": img, "label": pa.array(labels, pa.int64())})
        table = table.replace_schema_metadata({"huggingface": json.dumps(hf)})
        pq.write_table(table, root / f"train-{s:05d}-of-{shards:05d}.parquet", row_group_size=1000)
    return time.perf_counter() - t


def build_s3(files: int):
    """A moto server with ``files`` empty objects under ``train/<class>/``; returns (server, uri, build_s)."""
    import logging
    import socket

    from moto.server import ThreadedMotoServer

    from ddoq_ray import storage

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per S3 request otherwise
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    q = f"?endpoint_override=127.0.0.1:{port}&scheme=http"
    fs, _ = storage.resolve(f"s3://testing:testing@bench/{q}&allow_bucket_creation=true")
    fs.create_dir("bench")
    t = time.perf_counter()
    names, per = _class_names(N_CLASSES), max(1, files // N_CLASSES)
    for c in names:
        for i in range(per):
            with fs.open_output_stream(f"bench/train/{c}/{c}_{i}.JPEG"):
                pass
    return server, f"s3://testing:testing@bench/train{q}", time.perf_counter() - t


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1/10 of the sizes (128 files per class, 30 shards)")
    p.add_argument("--per-class", type=int, default=1281)
    p.add_argument("--shards", type=int, default=300)
    p.add_argument("--s3-files", type=int, default=20_000)
    p.add_argument("--only", nargs="+", choices=["imagefolder", "parquet", "imagefolder_s3"],
                   default=["imagefolder", "parquet", "imagefolder_s3"])
    p.add_argument("--code", type=Path, nargs="+", default=[ROOT],
                   help="repositories whose ddoq_ray is measured, each on the same trees (before/after a change)")
    p.add_argument("--tmp", type=Path, default=None)
    p.add_argument("--no-write", action="store_true", help="print only (e.g. for a --code comparison)")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(*a.child)))
        return
    sys.path.insert(0, str(ROOT))
    from benchmarks._common import table, write_result

    scale = 10 if a.quick else 1
    per_class, shards, s3_files = a.per_class // scale, max(1, a.shards // scale), a.s3_files // scale
    rows, builds = [], {}
    tmp = Path(tempfile.mkdtemp(prefix="bench_index_", dir=a.tmp))
    try:
        if "imagefolder" in a.only:
            builds["imagefolder_s"] = round(build_imagefolder(tmp / "if", per_class), 1)
            rows += _measure("imagefolder", str(tmp / "if"), a.code)
            shutil.rmtree(tmp / "if")
        if "parquet" in a.only:
            builds["parquet_s"] = round(build_parquet(tmp / "pq", shards, per_class * N_CLASSES), 1)
            rows += _measure("parquet", str(tmp / "pq"), a.code)
        if "imagefolder_s3" in a.only:
            server, uri, b = build_s3(s3_files)
            builds["imagefolder_s3_s"] = round(b, 1)
            try:
                s3_rows = _measure("imagefolder_s3", uri, a.code)
            finally:
                server.stop()
            for r in s3_rows:
                r["extrapolated_1.28M_time_s"] = round(r["time_s"] * IMAGENET_TRAIN / r["rows"], 1)
            rows += s3_rows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    cols = ["kind", "code", "rows", "classes", "time_s", "peak_mb", "index_mb", "peak/index",
            "extrapolated_1.28M_time_s"]
    print(table(rows, cols))
    print("build times (s):", builds)
    if not a.no_write:
        write_result("bench_index", {"quick": a.quick, "code": [c.name for c in a.code], "per_class": per_class,
                                     "shards": shards, "s3_files": s3_files, "build_s": builds, "rows": rows})


if __name__ == "__main__":
    main()
