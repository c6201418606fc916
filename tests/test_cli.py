"""The command line: `ddoq-ray export`, and the quiet default output of `ddoq-ray run` (a subprocess on a tiny
config, its output written to a file as in CI): few lines, no Ray Data progress, ending with the table and the
report path; `--json` prints the main numbers for scripts."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_export import fake_run  # noqa: F401 - a fixture: a finished run with a decode stage

from ddoq_ray.cli import main
from ddoq_ray.export import read_export

REPO = Path(__file__).resolve().parents[1]


def test_export_command_writes_and_reads_back(fake_run, tmp_path, capsys):  # noqa: F811
    _, run, rows, want = fake_run
    assert main(["export", str(run), str(tmp_path / "wds"), "--format", "webdataset", "--method", "ddoq"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["images"] == len(rows) == 15 and printed["format"] == "webdataset"
    table, meta = read_export(str(tmp_path / "wds"))
    assert meta["method"] == "ddoq" and table.column("label").to_pylist() == [r["label"] for r in rows]
    assert np.array_equal(table.column("weight").to_numpy(), want.astype(np.float32))
    # default OUT: <run>/export/<method>-<format>
    assert main(["export", str(run), "--format", "imagefolder", "--method", "d4m"]) == 0
    assert json.loads(capsys.readouterr().out)["out"] == str(run / "export" / "d4m-imagefolder")
    assert main(["export", str(tmp_path / "no-run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ddoq-ray: error:") and "decode" in err[0]


TINY = ["data.class_subset=[0, 3]", "data.max_per_class=6", "data.max_test_per_class=6", "quantize.ipc=2",
        "train.epochs=1", "train.seeds=[0]", "metrics.enabled=false", "train.label_mode=hard",
        "train.num_workers=0"]


def _cli(*args, log=None):
    """``python -m ddoq_ray.cli ARGS``; with ``log``: stdout and stderr into that file (``> log 2>&1``)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if log is None:
        return subprocess.run([sys.executable, "-m", "ddoq_ray.cli", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=900)
    with open(log, "w") as f:
        return subprocess.run([sys.executable, "-m", "ddoq_ray.cli", *args], cwd=REPO, env=env, stdout=f,
                              stderr=subprocess.STDOUT, timeout=900)


@pytest.mark.slow  # 59 s; default-suite budget (README "Tests")
def test_run_output_is_short_and_ends_with_table_and_report(assets, tmp_path):
    out, log = tmp_path / "run", tmp_path / "log"
    sets = [a for s in [f"output_dir={out}", *TINY] for a in ("--set", s)]
    p = _cli("run", "configs/smoke.yaml", *sets, log=log)
    text = log.read_text()
    assert p.returncode == 0, text[-3000:]
    lines = text.rstrip("\n").split("\n")  # as `wc -l` counts them (a tqdm bar redraws with \r: one line)
    # measured: 39 here, 41 with configs/smoke.yaml; before the quiet default a run this size printed 72 (46 of
    # them Ray Data progress blocks and plans), the main job ~570
    assert len(lines) < 45, text
    assert not [s for s in lines if "logging_progress" in s or "streaming_executor" in s or "Execution plan" in s]
    assert lines[0].endswith(f"run directory: {out} (config.yaml, one folder per stage; results.json and "
                             "report.html at the end)")
    tail = lines[-9:]
    assert tail[0] == ("| method | clustering | weights | images | IPC | mean latent W2 | top-1 (%) | "
                       "vs random (points) |")
    assert [s.split(" |")[0] for s in tail[2:6]] == ["| random", "| d4m", "| ddoq", "| teacher (full data)"]
    assert tail[-2:] == [f"results: {out}/results.json", f"report: {out}/report.html"]
    # --json on the finished run (every stage complete: nothing recomputed): one JSON object on stdout
    p = _cli("run", str(out), "--json")
    assert p.returncode == 0, p.stderr[-3000:]
    doc = json.loads(p.stdout)
    res = json.loads((out / "results.json").read_text())
    assert doc["report"] == f"{out}/report.html" and doc["classes"] == 2 and doc["ipc"] == 2
    assert {m: v["top1_mean"] for m, v in doc["methods"].items()} == {
        m: v["top1_mean"] for m, v in res["methods"].items()}
    assert doc["teacher_top1"] == res["teacher"]["top1"]
