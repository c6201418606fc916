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
