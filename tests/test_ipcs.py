"""Several IPCs in one run (``quantize.ipc: [2, 3]``): one run per IPC, the encode stage computed once and shared
by reference, a stale reference never read, the W2-vs-IPC summary and plot."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from ddoq_ray import storage
from ddoq_ray.config import load_config
from ddoq_ray.errors import ConfigError
from ddoq_ray.ipcs import load_configs, run_ipcs
from ddoq_ray.rundir import SUCCESS, StageNotCommittedError, stage_done, stage_path
from ddoq_ray.stages import fingerprint

TINY = ["data.class_subset=[0,3]", "data.max_per_class=24", "data.max_test_per_class=8", "train.seeds=[0]",
        "metrics.enabled=false"]


def test_ipc_list_is_one_run_per_ipc_sharing_one_encode(ray_session, assets, tmp_path):
    out = tmp_path / "multi"
    over = [f"output_dir={out}", f"assets_root={assets}", *TINY, "quantize.ipc=[2,3]"]
    cfgs = load_configs("configs/smoke.yaml", over)
    assert [(c.quantize.ipc, c.output_dir) for c in cfgs] == [(2, str(out / "ipc2")), (3, str(out / "ipc3"))]
    res = run_ipcs(cfgs, ("subsets",))
    a, b = (str(out / f"ipc{k}") for k in (2, 3))
    # Encoded once: the IPC-3 run's encode commit points at the IPC-2 run's attempt, and holds no attempt itself.
    marker = json.loads((out / "ipc3" / "encode" / SUCCESS).read_text())
    assert marker["shared_from"] == a and marker["encoded"] == 48
    assert sorted(p.name for p in (out / "ipc3" / "encode").iterdir()) == [SUCCESS]
    assert stage_path(b, "encode") == stage_path(a, "encode")
    for k, d in ((2, a), (3, b)):
        labels = pq.read_table(storage.join(stage_path(d, "quantize"), "centroids.parquet")).column("label")
        assert sorted(labels.to_pylist()) == [0] * k + [1] * k  # K = IPC centroids per class
    w2 = [sum(r["w2_mass"] for r in x["w2_per_class"]) / 2 for x in res]
    assert w2[1] < w2[0]  # more centroids per class: lower latent W2
    summary = json.loads((out / "ipcs.json").read_text())
    assert summary["ipcs"] == [2, 3] and summary["runs"][1]["run_dir"] == b
    assert (out / "w2_vs_ipc.png").stat().st_size > 1000
    assert 'id="w2_vs_ipc"' in (out / "ipc3" / "report.html").read_text()

    # --force on a shared stage recomputes it in its owner only; the other IPC refers to the new attempt.
    run_ipcs(cfgs, ("encode",), force=True)
    again = json.loads((out / "ipc3" / "encode" / SUCCESS).read_text())
    assert again["shared_attempt"] != marker["shared_attempt"]
    assert stage_path(b, "encode") == stage_path(a, "encode")
    assert sorted(p.name for p in (out / "ipc3" / "encode").iterdir()) == [SUCCESS]

    # The owner recomputes its encode: the reference is stale, so it is neither done nor readable.
    fp = fingerprint(cfgs[1], "encode")
    assert stage_done(b, "encode", fp)
    own = out / "ipc2" / "encode" / SUCCESS
    own.write_text(json.dumps({**json.loads(own.read_text()), "attempt": "attempt-newer"}))
    assert not stage_done(b, "encode", fp)
    with pytest.raises(StageNotCommittedError, match="recomputed or removed"):
        stage_path(b, "encode")


def test_ipc_list_errors_are_clear(tmp_path, assets):
    base = [f"output_dir={tmp_path}", f"assets_root={assets}"]
    with pytest.raises(ConfigError, match=r"must be distinct positive integers"):
        load_configs("configs/smoke.yaml", [*base, "quantize.ipc=[10,10]"])
    with pytest.raises(ConfigError, match=r"quantize.ipc is a list"):
        load_config("configs/smoke.yaml", [*base, "quantize.ipc=[1,10]"])
    assert [c.quantize.ipc for c in load_configs("configs/smoke.yaml", base)] == [load_config(
        "configs/smoke.yaml", base).quantize.ipc]
