"""Autoscaling, exercised: Ray's fake multi-node autoscaler with the worker groups of cluster/aws.yaml.

A head with ``CPU: 0`` (as in cluster/aws.yaml) and the GPU worker group at ``min_workers: 0`` with its fake
``{"CPU": 8, "GPU": 1}``; the smoke config at tiny sizes with ``ray.require_gpu: true`` runs encode -> quantize ->
decode. The run waits (``ray.gpu_wait_s``, a ``request_resources`` GPU bundle), the autoscaler adds a GPU node,
the encode and decode actors take its GPU (they compute on the CPU: the GPU is fake), and the node is removed once
idle. Everything runs in a child process (``python tests/test_autoscaling.py child OUT ASSETS``) on its own cluster.

Why not ``ray.cluster_utils.AutoscalingCluster`` itself (Ray 2.60): its ``start()`` runs ``ray stop --force``
(which would stop every Ray cluster on a shared machine) and reads ``fake_multi_node/example.yaml``, which the
2.60 wheel does not ship. The same pieces are used directly: the ``fake_multinode`` provider config
(``RAY_FAKE_CLUSTER=1``, ``AUTOSCALER_UPDATE_INTERVAL_S=1``) given to a ``ray.cluster_utils.Cluster`` head as its
``autoscaling_config``, with ``provider.gcs_address`` set so the fake nodes join this head (the provider's default
is port 6379). Autoscaler v1, Ray's default in 2.60; ``AutoscalingCluster(autoscaler_v2=True)`` exists but needs
a fixed head node id. Deviations from aws.yaml, for a 2-core machine: ``max_workers`` 2 (8 there),
``idle_timeout_minutes`` 0.1 (10 there), a 300 MB object store per fake node.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SIZES = ["data.max_per_class=20", "quantize.ipc=4", "encode.batch_size=16", "data.max_test_per_class=10"]
GPU_GROUP = "ray.worker.gpu"


def fake_cluster_config(aws_yaml: Path, gcs_address: str) -> dict:
    """The fake multi-node autoscaler config: cluster/aws.yaml's worker groups and head resources on the
    ``fake_multinode`` provider (fields as in Ray's fake_multi_node/example.yaml)."""
    aws = yaml.safe_load(aws_yaml.read_text())
    head = aws["head_node_type"]
    types = {name: {"resources": dict(t["resources"]), "node_config": {}, "min_workers": t.get("min_workers", 0),
                    "max_workers": min(2, t.get("max_workers", 2))}
             for name, t in aws["available_node_types"].items() if name != head}
    for t in types.values():
        t["resources"]["object_store_memory"] = 300_000_000
    types["ray.head.default"] = {"resources": dict(aws["available_node_types"][head]["resources"]),
                                 "node_config": {}, "max_workers": 0}
    return {"cluster_name": "ddoq-fake", "max_workers": 2, "upscaling_speed": 1.0, "idle_timeout_minutes": 0.1,
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True, "gcs_address": gcs_address},
            "available_node_types": types, "head_node_type": "ray.head.default", "auth": {}, "docker": {},
            "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
            "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
            "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
            "rsync_exclude": [], "rsync_filter": []}


def test_fake_config_keeps_the_aws_gpu_group():
    cfg = fake_cluster_config(REPO / "cluster" / "aws.yaml", "127.0.0.1:1")
    gpu = cfg["available_node_types"][GPU_GROUP]
    assert gpu["min_workers"] == 0 and gpu["resources"]["GPU"] == 1 and gpu["resources"]["CPU"] == 8
    assert cfg["available_node_types"]["ray.head.default"]["resources"] == {"CPU": 0}
    assert cfg["provider"]["gcs_address"] == "127.0.0.1:1"


def _cpu_compute_on_fake_gpus():
    """Worker setup hook: the fake GPU nodes have no CUDA, so actors scheduled with ``device="cuda"`` (and their
    GPU share) build their models on the CPU."""
    from ddoq_ray import decode, encode

    for cls in (encode.VAEEncoder, decode.CentroidDecoder):
        init = cls.__init__

        def patched(self, *a, _init=init, **kw):
            kw["device"] = "cpu"
            _init(self, *a, **kw)

        cls.__init__ = patched


def _child(out: Path, assets: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from ddoq_ray.config import load_config
    from ddoq_ray.pipeline import run_all
    from ddoq_ray.runtime import cluster_gpus

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ip = ray._private.services.get_node_ip_address()
    cfg_path = Path(tempfile.mkdtemp()) / "fake_autoscaler.json"
    cfg_path.write_text(json.dumps(fake_cluster_config(REPO / "cluster" / "aws.yaml", f"{ip}:{port}")))
    os.environ.update({"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"})  # read by the monitor
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "num_gpus": 0, "gcs_server_port": port, "autoscaling_config": str(cfg_path),
        "include_dashboard": False, "object_store_memory": 300_000_000})
    samples: list[tuple[float, int, int]] = []  # (t, alive worker nodes, GPUs in the cluster)
    stop = threading.Event()
    t0 = time.monotonic()
    try:
        ray.init(address=cluster.address, log_to_driver=False,
                 runtime_env={"worker_process_setup_hook": _cpu_compute_on_fake_gpus})

        def watch():
            while not stop.is_set():
                alive = [n for n in ray.nodes() if n["Alive"]]
                samples.append((round(time.monotonic() - t0, 1), len(alive) - 1, cluster_gpus()))
                stop.wait(1.0)

        threading.Thread(target=watch, daemon=True).start()
        cfg = load_config("configs/smoke.yaml", [f"output_dir={out / 'run'}", f"assets_root={assets}", *SIZES,
                                                 "ray.require_gpu=true", "ray.gpu_wait_s=240"])
        res = {"gpus_at_start": cluster_gpus()}
        run_all(cfg, ("encode", "quantize", "decode"))
        res["run_done_s"] = round(time.monotonic() - t0, 1)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and (not samples or samples[-1][1] > 0):
            time.sleep(2)
        stop.set()
        res["samples"] = samples
        (out / "result.json").write_text(json.dumps(res))
    finally:
        stop.set()
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.slow
def test_gpu_group_scales_up_for_encode_and_decode_and_back_down(assets, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_GCS_SERVER_PORT")}
    env.update({"PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
                "HF_HUB_OFFLINE": "1"})
    p = subprocess.run([sys.executable, __file__, "child", str(tmp_path), str(assets)], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    res = json.loads((tmp_path / "result.json").read_text())
    samples = res["samples"]
    assert res["gpus_at_start"] == 0  # the GPU group starts at min_workers 0
    assert "ray.require_gpu is set and the cluster has no GPU yet; waiting" in p.stderr
    up = [s for s in samples if s[2] >= 1]
    assert up and max(s[1] for s in samples) >= 1, samples  # a GPU node was added
    assert samples[-1][1] == 0 and samples[-1][2] == 0, samples  # and removed once idle
    assert up[-1][0] < samples[-1][0]
    # The head has CPU 0: every encode/decode actor and quantize task ran on the GPU group's node, with a GPU.
    assert re.search(r"encode: \d+ images in \d+ shards .* on cuda \(", p.stderr)
    assert re.search(r"decode: \d+ centroids x 1 -> images, mode vae with .* on cuda", p.stderr)
    first_gpu, down = up[0][0], next(s[0] for s in samples if s[0] > up[-1][0])
    print(f"GPU node up at {first_gpu} s, run done at {res['run_done_s']} s, scaled down at {down} s")
    from ddoq_ray.rundir import stage_path

    run = tmp_path / "run"
    for stage in ("encode", "quantize", "decode"):
        assert (run / stage / "_SUCCESS.json").exists()
    summary = json.loads((run / "quantize" / "_SUCCESS.json").read_text())
    assert summary.get("kmeans_device", summary.get("summary", {}).get("kmeans_device")) == "cpu"  # faiss-cpu
    pngs = list(Path(stage_path(str(run), "decode")).glob("synthetic/*/*.png"))
    assert len(pngs) == 3 * 4  # 3 classes x IPC 4


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    import logging

    logging.basicConfig(level=logging.INFO)
    _child(Path(sys.argv[2]), sys.argv[3])
