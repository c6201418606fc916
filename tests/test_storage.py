"""Storage by URI: the pipeline with its input and its run directory in an S3 bucket (moto's S3 server, reached
through pyarrow's own S3 client), and encode resuming at its first unfinished shard.

moto (``pip install "moto[server]"``) serves S3 on a free localhost port in this process; every location carries
``?endpoint_override=127.0.0.1:<port>&scheme=http``, so Ray workers (other processes) reach the same bucket.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import _free_port

from ddoq_ray import storage
from ddoq_ray.artifacts.latents import scan
from ddoq_ray.config import load_config
from ddoq_ray.rundir import SUCCESS, stage_path
from ddoq_ray.stages import fingerprint as stage_fingerprint

REPO = Path(__file__).resolve().parents[1]
SMALL = ["data.max_per_class=20", "quantize.ipc=4"]  # 3 classes x 20 images: enough for the checks, fast


class Bucket:
    """A moto S3 bucket; :meth:`uri` gives locations inside it (credentials in the URI or from the env)."""

    def __init__(self, port: int, name: str = "ddoq"):
        self.port, self.name = port, name

    def uri(self, key: str = "", creds: bool = True) -> str:
        auth = "testing:testing@" if creds else ""
        return f"s3://{auth}{self.name}/{key}?endpoint_override=127.0.0.1:{self.port}&scheme=http"


@pytest.fixture(scope="module")
def s3(assets):
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is in the test extra")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per S3 request otherwise
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        b = Bucket(port)
        fs, _ = storage.resolve(b.uri() + "&allow_bucket_creation=true")
        fs.create_dir(b.name)
        for rel in ("data/cifar10/train.parquet", "data/cifar10/test.parquet", "data/cifar10/classes.json",
                    "models/cifar10_resnet_akamaster/resnet56-4bfd9763.th"):
            storage.write_bytes(b.uri(rel), (assets / rel).read_bytes())
        yield b
    finally:
        server.stop()


@pytest.fixture(scope="module")
def local_ref(ray_session, assets, tmp_path_factory) -> str:
    """The same small run on local disk, undisturbed, one encode shard: the reference for both tests below."""
    from ddoq_ray.pipeline import run_all

    out = tmp_path_factory.mktemp("local")
    run_all(load_config("configs/smoke.yaml", [f"output_dir={out}", f"assets_root={assets}", *SMALL]),
            ("encode", "quantize"))
    return str(out)


def _local_files(root: Path) -> set[Path]:
    skip = {".git", "__pycache__", ".pytest_cache", ".ruff_cache"}
    return {p for p in root.rglob("*") if not skip & set(p.parts)}


def _centroids(quantize_dir: str):
    t = storage.read_parquet(storage.join(quantize_dir, "centroids.parquet"))
    t = t.sort_by([("label", "ascending"), ("k", "ascending")])
    return t.column("centroid").combine_chunks().to_numpy_ndarray(), t.select(["label", "k", "count"]).to_pylist()


def test_pipeline_with_input_and_run_dir_in_s3_matches_a_local_run(ray_session, assets, s3, local_ref):
    from ddoq_ray.pipeline import run_all

    before = _local_files(REPO)
    run = s3.uri("runs/smoke")
    cfg = load_config("configs/smoke.yaml", [f"output_dir={run}", f"assets_root={assets}", *SMALL,
                                             f"data.train={s3.uri('data/cifar10/train.parquet')}",
                                             f"data.test={s3.uri('data/cifar10/test.parquet')}"])
    res = run_all(cfg, ("encode", "quantize", "decode"))

    # every stage committed by its pointer, which names the one attempt left in the bucket
    for stage in ("encode", "quantize", "decode"):
        marker = storage.read_json(storage.join(run, stage, SUCCESS))
        assert marker["fingerprint"] == stage_fingerprint(cfg, stage) and marker["attempt"].startswith("attempt-")
        assert storage.listdir(storage.join(run, stage)) == sorted([SUCCESS, marker["attempt"]])
        assert stage_path(run, stage) == storage.join(run, stage, marker["attempt"])
    enc = res["stages"]["encode"]
    assert enc["input"] == 60 == enc["encoded"] + enc["skipped"] and enc["skipped"] == 0
    ids = scan(stage_path(run, "encode"), columns=["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 60
    # the same centroids as on local disk (same seed, same ids): storage changes nothing in the numbers
    c_s3, m_s3 = _centroids(stage_path(run, "quantize"))
    c_local, m_local = _centroids(stage_path(local_ref, "quantize"))
    assert m_s3 == m_local and np.array_equal(c_s3, c_local)
    dec = stage_path(run, "decode")
    man = storage.read_parquet(storage.join(dec, "manifest.parquet")).to_pylist()
    assert len(man) == 12 and all(storage.read_bytes(storage.join(dec, "synthetic", r["path"]))[:4] == b"\x89PNG"
                                  for r in man)
    assert storage.read_json(storage.join(run, "results.json"))["stages"]["encode"]["input"] == 60
    assert storage.is_file(storage.join(run, "report.html")) and storage.is_file(storage.join(run, "config.yaml"))
    assert _local_files(REPO) == before and not Path("/ddoq").exists()  # nothing landed on local disk


def test_unsupported_scheme_and_missing_bucket_name_the_field(s3, assets):
    from ddoq_ray.pipeline import Run

    with pytest.raises(storage.StorageError, match="output_dir='nope://x/y'"):
        Run(load_config("configs/smoke.yaml", ["output_dir=nope://x/y", f"assets_root={assets}"]))
    missing = Bucket(s3.port, "no-such-bucket").uri("x")
    run = Run(load_config("configs/smoke.yaml", [f"output_dir={missing}", f"assets_root={assets}"]))
    with pytest.raises(storage.StorageError, match="output_dir .* is not writable .*NO_SUCH_BUCKET"):
        run.prepare()


def test_encode_resumes_at_the_first_unfinished_shard(ray_session, assets, tmp_path, monkeypatch, local_ref):
    from ddoq_ray import encode
    from ddoq_ray.pipeline import Run, run_stage

    cfg = load_config("configs/smoke.yaml", [f"output_dir={tmp_path / 'run'}", "encode.shard_rows=30",
                                             f"assets_root={assets}", *SMALL])  # 60 rows: two shards of 30
    run = Run(cfg)
    run.prepare()
    real_marker, calls = encode.write_shard_marker, []

    def fail_on_second(out, shard, counts):  # the driver dies after shard 00001's files, before its marker
        calls.append(shard["id"])
        if len(calls) == 2:
            raise RuntimeError("injected: driver lost")
        real_marker(out, shard, counts)

    monkeypatch.setattr(encode, "write_shard_marker", fail_on_second)
    with pytest.raises(RuntimeError, match="injected"):
        run_stage(run, "encode")
    monkeypatch.undo()
    attempts = storage.listdir(storage.join(run.dir, "encode"))
    assert len(attempts) == 1 and SUCCESS not in attempts  # kept for the resume, nothing committed
    shard0 = storage.join(run.dir, "encode", attempts[0], "latents", "shard=00000")
    files0 = storage.walk_files(shard0)

    assert run_stage(Run(cfg), "encode")
    marker = storage.read_json(storage.join(run.dir, "encode", SUCCESS))
    assert marker["shards"] == 2 and marker["resumed_shards"] == 1 and marker["encoded_shards"] == 1
    assert marker["attempt"] == attempts[0] == marker["resumed_attempt"]
    assert storage.walk_files(shard0) == files0  # finished shards were not written again
    assert marker["input"] == 60 == marker["encoded"] + marker["skipped"]
    done_dir = storage.join(stage_path(run.dir, "encode"), "done")
    done = [storage.read_json(storage.join(done_dir, f)) for f in storage.listdir(done_dir)]
    assert [d["rows"] for d in done] == [30, 30] and sum(d["encoded"] + d["skipped"] for d in done) == 60

    a = scan(stage_path(run.dir, "encode"), columns=["id", "label", "latent"]).sort_by("id")
    b = scan(stage_path(local_ref, "encode"), columns=["id", "label", "latent"]).sort_by("id")  # one shard
    assert a.column("id").to_pylist() == b.column("id").to_pylist() and len(set(a.column("id").to_pylist())) == 60
    assert a.column("label").to_pylist() == b.column("label").to_pylist()
    assert np.array_equal(a.column("latent").combine_chunks().to_numpy_ndarray(),
                          b.column("latent").combine_chunks().to_numpy_ndarray())


@pytest.mark.slow  # the whole smoke pipeline (students, metrics, report) from and into the bucket: ~4 min here
def test_cli_run_fully_in_s3_with_credentials_from_the_environment(s3, assets, tmp_path):
    """``ddoq-ray run`` in a fresh process (its own Ray cluster), data, teacher and run directory in the bucket,
    credentials only in ``AWS_*`` variables: nothing is written to local disk, and every stage commits."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_GCS_SERVER_PORT")}
    env.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                "RAY_AUTH_MODE": "disabled", "HF_HUB_OFFLINE": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                "PYTHONPATH": str(REPO)})
    run = s3.uri("runs/cli", creds=False)
    sets = [f"output_dir={run}", f"assets_root={assets}", *SMALL, "train.seeds=[0]", "train.epochs=2",
            "data.max_test_per_class=50", f"data.train={s3.uri('data/cifar10/train.parquet', creds=False)}",
            f"data.test={s3.uri('data/cifar10/test.parquet', creds=False)}",
            f"train.teacher={s3.uri('models/cifar10_resnet_akamaster/resnet56-4bfd9763.th', creds=False)}"]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    cmd = [sys.executable, "-m", "ddoq_ray.cli", "run", str(REPO / "configs" / "smoke.yaml")]
    for s in sets:
        cmd += ["--set", s]
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1500)
    assert p.returncode == 0, p.stderr[-3000:]
    run = s3.uri("runs/cli")  # this process has no AWS_* variables: read the results with the URI's credentials
    res = storage.read_json(storage.join(run, "results.json"))
    assert set(res["stages"]) == {"encode", "quantize", "decode", "train", "metrics"}
    for stage in res["stages"]:
        assert res["stages"][stage]["attempt"] == storage.read_json(storage.join(run, stage, SUCCESS))["attempt"]
    enc = res["stages"]["encode"]
    assert enc["input"] == 60 == enc["encoded"] + enc["skipped"]
    assert set(res["methods"]) == {"random", "d4m", "ddoq"} and res["teacher"]["top1"] > 0.85
    ckpts = [r for r, _ in storage.walk_files(storage.join(stage_path(run, "train"), "ray"))
             if r.endswith(".pt")]
    assert ckpts  # Ray Train wrote its checkpoints into the bucket
    assert storage.is_file(storage.join(run, "report.html"))
    assert list(cwd.iterdir()) == []  # no local run directory, no "s3:" folder
