"""Report pieces that the smoke run cannot show: W2 against IPC across runs."""

import json

import pyarrow as pa
import pyarrow.parquet as pq

from ddoq_ray.report import build_report
from ddoq_ray.rundir import stage_writer


def fake_run(d, ipc, w2_mass, w2_uniform):
    d.mkdir(parents=True)
    rows = [{"label": c, "n": 100, "K": ipc, "inertia": 1.0, "w2_mass": w2_mass, "w2_uniform": w2_uniform,
             "w2_random": 2 * w2_uniform, "w2_identity": w2_mass} for c in range(2)]
    (d / "results.json").write_text(json.dumps({"name": d.name, "ipc": ipc, "classes": ["a", "b"], "stages": {},
                                                "w2_per_class": rows}))
    with stage_writer(str(d), "quantize", "fp") as (out, _):
        pq.write_table(pa.table({"label": [0] * ipc + [1] * ipc, "mass": [1 / ipc] * (2 * ipc)}),
                       f"{out}/centroids.parquet")
    return d


def test_w2_vs_ipc_plot_appears_with_runs_at_several_ipcs(tmp_path):
    a = fake_run(tmp_path / "ipc10", 10, 10.0, 10.5)
    b = fake_run(tmp_path / "ipc50", 50, 8.0, 8.6)
    alone = build_report(a)
    assert "w2_vs_ipc" not in alone["figures"] and {"w2_per_class", "cell_mass_histograms"} <= set(alone["figures"])
    both = build_report(a, [b])
    assert "w2_vs_ipc" in both["figures"] and (a / "report_files" / "w2_vs_ipc.png").stat().st_size > 1000
    page = (a / "report.html").read_text()
    assert 'id="w2_vs_ipc"' in page and "4.76 %" in page  # mean W2 reduction 1 - 10.0/10.5


def test_sha256_lists_latents_one_row_per_shard_and_hashes_the_rest(tmp_path):
    import hashlib

    from ddoq_ray.checksums import sha256_files

    att = tmp_path / "encode" / "attempt-1"
    for shard, labels in (("00000", [0, 1, 2]), ("00001", [0])):
        for c in labels:
            f = att / "latents" / f"shard={shard}" / "status=ok" / f"label={c}" / "a.parquet"
            f.parent.mkdir(parents=True)
            f.write_bytes(b"x" * (c + 1))
    (att / "shards.json").write_text("[]")
    (tmp_path / "encode" / "_SUCCESS.json").write_text("{}")
    (tmp_path / "results.json").write_text("{}")
    (tmp_path / "report.html").write_text("skipped")
    rows = {r[0]: r for r in sha256_files(str(tmp_path))}
    shard0 = "encode/attempt-1/latents/shard=00000/ (3 files: names and sizes hashed)"
    assert set(rows) == {"encode/_SUCCESS.json", "encode/attempt-1/shards.json", "results.json", shard0,
                         "encode/attempt-1/latents/shard=00001/ (1 files: names and sizes hashed)"}
    lines = "".join(f"status=ok/label={c}/a.parquet\t{c + 1}\n" for c in range(3))
    assert rows[shard0][1:] == (hashlib.sha256(lines.encode()).hexdigest(), 6)
    assert rows["results.json"][1:] == (hashlib.sha256(b"{}").hexdigest(), 2)
