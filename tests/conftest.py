"""Shared fixtures: one local Ray cluster per test session, and the assets root (../shared)."""

import os
import socket
from pathlib import Path

import pytest

# Before Ray starts: the raylet and every worker inherit these.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # Ray >= 2.59 enables token auth on local clusters
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # an accidental hub download fails fast instead of retrying
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # bind to 127.0.0.1 only

REPO = Path(__file__).resolve().parents[1]
ASSETS = Path(os.environ.get("DDOQ_ASSETS", REPO.parent / "shared"))
CIFAR_TRAIN = ASSETS / "data" / "cifar10" / "train.parquet"
CIFAR_TEST = ASSETS / "data" / "cifar10" / "test.parquet"
TAESD = ASSETS / "models" / "taesd"
RESNET56 = ASSETS / "models" / "cifar10_resnet_akamaster" / "resnet56-4bfd9763.th"


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="session")
def assets() -> Path:
    if not ASSETS.is_dir():
        pytest.skip(f"assets root {ASSETS} missing (set DDOQ_ASSETS)")
    return ASSETS


@pytest.fixture(scope="session")
def ray_session():
    import ray

    # Pin the address of the cluster we start so Ray's State API never finds another/stale cluster.
    port = _free_port()
    os.environ["RAY_GCS_SERVER_PORT"] = str(port)
    os.environ["RAY_ADDRESS"] = f"127.0.0.1:{port}"
    ray.init(address="local", num_cpus=2, object_store_memory=1_000_000_000, include_dashboard=False,
             log_to_driver=False)
    yield ray
    ray.shutdown()
    for k in ("RAY_ADDRESS", "RAY_GCS_SERVER_PORT"):
        os.environ.pop(k, None)
