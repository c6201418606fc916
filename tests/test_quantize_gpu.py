"""Quantize on GPUs: the device decision, the class tasks' Ray options on a cluster with a (fake) ``GPU``
resource, and that the CPU path is the faiss call of before (identical centroids).

The Ray part runs in a child process (``python tests/test_quantize_gpu.py CHILD OUT``) with its own local
cluster started with ``num_gpus=1``: the ``ray_session`` fixture's cluster has no GPU, and a second cluster in
the pytest process would clash with it (env notes G9).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ddoq_ray.config import QuantizeConfig, RunConfig
from ddoq_ray.quantization import kmeans, quantize_class
from ddoq_ray.quantize import kmeans_device, task_options

REPO = Path(__file__).resolve().parents[1]
LABELS = (0, 1)


def test_kmeans_device_all_cases():
    assert kmeans_device(0.25, 2, True)[0] == "gpu"
    assert kmeans_device(0.0, 2, True) == ("cpu", "quantize.num_gpus is 0")
    assert kmeans_device(0.25, 0, True) == ("cpu", "the Ray cluster has no GPU")
    dev, why = kmeans_device(0.25, 2, False)
    assert dev == "cpu" and "faiss-gpu" in why
    assert kmeans_device(0.0, 0, False)[0] == "cpu"
    assert "0.25 GPU per class task, 2 GPU(s)" in kmeans_device(0.25, 2, True)[1]


def test_task_options_ask_for_a_gpu_only_on_the_gpu_path():
    q = QuantizeConfig(num_cpus=2, num_gpus=0.5)
    assert task_options(q, "cpu") == {"num_cpus": 2, "scheduling_strategy": "SPREAD", "max_retries": 3}
    assert task_options(q, "gpu") == {"num_cpus": 2, "scheduling_strategy": "SPREAD", "max_retries": 3,
                                      "num_gpus": 0.5}
    assert QuantizeConfig().num_gpus == 0.25


def test_num_gpus_is_not_in_the_quantize_fingerprint():
    """Existing run folders keep their quantize fingerprint (no re-run) and a resource change is not new data."""
    from ddoq_ray.stages import fingerprint, stage

    base = {"data": {"train": "x.parquet"}}
    a, b = RunConfig(**base), RunConfig(**base, quantize={"num_gpus": 0.5})
    assert "num_gpus" not in stage("quantize").inputs(a)["quantize"]
    assert fingerprint(a, "quantize") == fingerprint(b, "quantize")
    assert fingerprint(a, "quantize") != fingerprint(RunConfig(**base, quantize={"ipc": 3}), "quantize")


def test_cpu_kmeans_is_the_faiss_call_of_before():
    """gpu=False (the default) is bit-identical to faiss Kmeans with the arguments used before this change."""
    import faiss

    x = np.random.default_rng(0).normal(size=(700, 32)).astype(np.float32)
    ref = faiss.Kmeans(32, 6, niter=20, nredo=2, seed=7, verbose=False, max_points_per_centroid=700,
                       min_points_per_centroid=1)
    ref.train(x)
    np.testing.assert_array_equal(kmeans(x, 6, 20, 2, 7), ref.centroids)
    np.testing.assert_array_equal(kmeans(x, 6, 20, 2, 7, gpu=False), ref.centroids)


def _latents(seed: int = 0) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {c: (rng.normal(size=(60, 4, 2, 2)) + 3 * c).astype(np.float32) for c in LABELS}


def _write_encode_dir(enc: Path) -> None:
    from ddoq_ray.artifacts.latents import to_tensor_array

    for c, z in _latents().items():
        d = enc / "latents" / "shard=0" / "status=ok" / f"label={c}"
        d.mkdir(parents=True)
        pq.write_table(pa.table({"id": [f"{c}-{i:03d}" for i in range(len(z))], "error": [None] * len(z),
                                 "latent": to_tensor_array(z)}), d / "part-0.parquet")


def _child(out: Path) -> None:
    """On a local cluster with a fake GPU: the probe, the granted resources, run_quantize on both paths."""
    import ray

    from ddoq_ray import quantize
    from ddoq_ray.runtime import cluster_gpus

    ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False)
    qcfg = QuantizeConfig(ipc=3, niter=10)
    res = {"cluster_gpus": cluster_gpus(), "faiss_gpu_probe": quantize.probe_faiss_gpu(qcfg.num_gpus, 60)}

    def granted():
        return ray.get_runtime_context().get_assigned_resources()

    res["gpu_task"] = ray.get(ray.remote(granted).options(**task_options(qcfg, "gpu")).remote())
    res["cpu_task"] = ray.get(ray.remote(granted).options(**task_options(qcfg, "cpu")).remote())
    enc = out / "encode"
    _write_encode_dir(enc)
    for name, probe in (("cpu", quantize.probe_faiss_gpu), ("gpu", lambda g, t=60.0: True)):
        quantize.probe_faiss_gpu = probe  # "gpu": as if the workers had faiss-gpu (faiss-cpu ignores gpu=True)
        summary: dict = {}
        (out / name).mkdir()
        quantize.run_quantize(qcfg, str(enc), list(LABELS), str(out / name), summary)
        res[f"{name}_device"] = summary["kmeans_device"]
    ray.shutdown()
    (out / "result.json").write_text(json.dumps(res))


def _centroids(d: Path) -> np.ndarray:
    t = pq.read_table(d / "centroids.parquet").sort_by([("label", "ascending"), ("k", "ascending")])
    return t.column("centroid").combine_chunks().to_numpy_ndarray()


def test_fake_gpu_cluster_task_options_and_identical_cpu_centroids(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_GCS_SERVER_PORT")}
    env.update({"PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"})
    p = subprocess.run([sys.executable, __file__, "child", str(tmp_path)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    res = json.loads((tmp_path / "result.json").read_text())
    assert res["cluster_gpus"] == 1
    assert res["faiss_gpu_probe"] is False  # faiss-cpu here: the probe runs on the GPU share and says no
    assert res["gpu_task"] == {"CPU": 1.0, "GPU": 0.25}
    assert res["cpu_task"] == {"CPU": 1.0}
    assert res["cpu_device"] == "cpu" and res["gpu_device"] == "gpu"
    assert "k-means on CPU (faiss on the GPU workers has no GPU support" in p.stderr
    assert "k-means on GPU (faiss-gpu, 0.25 GPU per class task, 1 GPU(s) in the cluster)" in p.stderr
    # The CPU path equals the pure core on the same latents (read sorted by id, seed + label per class).
    want = np.concatenate([quantize_class(z, 3, 10, 1, c, 1).centroids for c, z in _latents().items()])
    np.testing.assert_array_equal(_centroids(tmp_path / "cpu"), want)
    np.testing.assert_array_equal(_centroids(tmp_path / "gpu"), want)  # faiss-cpu ignores gpu=True


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    import logging

    logging.basicConfig(level=logging.INFO)
    _child(Path(sys.argv[2]))
