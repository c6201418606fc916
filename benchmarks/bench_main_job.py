"""Per-stage wall time and peak memory of the main job (``configs/cifar10_taesd_ipc10.yaml``).

Reads a finished (or running) run directory — each ``<stage>/_SUCCESS.json`` has ``wall_s`` — and the job's log,
where ``/usr/bin/time -v`` appends total wall time and max RSS (the largest single process the job waited for:
the driver or a Ray process, not the sum). Stage start times come from the log's ``stage X: running`` lines, so a
stage still running is reported with its elapsed time so far. Nothing is re-run unless ``--rerun``.

    .venv/bin/python -m benchmarks.bench_main_job [--run-dir DIR] [--log FILE] [--rerun]
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import subprocess
import sys
from pathlib import Path

from benchmarks._common import ROOT, table, write_result
from ddoq_ray.rundir import committed

STAGES = ["encode", "quantize", "decode", "train"]
GOAL_S = 20 * 60


def parse_time_v(text: str) -> dict:
    out = {}
    m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    if m:
        parts = [float(p) for p in m.group(1).split(":")]
        secs = 0.0
        for p in parts:
            secs = secs * 60 + p
        out["total_wall_s"] = secs
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    if m:
        out["max_rss_mb"] = int(m.group(1)) / 1024
    m = re.search(r"Exit status: (\d+)", text)
    if m:
        out["exit_status"] = int(m.group(1))
    for key, pat in (("user_s", r"User time \(seconds\): ([\d.]+)"), ("sys_s", r"System time \(seconds\): ([\d.]+)")):
        m = re.search(pat, text)
        if m:
            out[key] = float(m.group(1))
    return out


def students(text: str) -> list[dict]:
    """``train: <method> seed <s> top-1 <acc> (<secs> s)`` lines: one per finished student."""
    pat = r"^(\d\d:\d\d:\d\d) ddoq-ray INFO train: (\w+) seed (\d+) top-1 ([\d.]+) \((\d+) s\)"
    return [{"time": m.group(1), "method": m.group(2), "seed": int(m.group(3)), "top1": float(m.group(4)),
             "wall_s": float(m.group(5))} for m in re.finditer(pat, text, re.M)]


def stage_starts(text: str) -> dict[str, str]:
    return {m.group(2): m.group(1) for m in re.finditer(r"^(\d\d:\d\d:\d\d) ddoq-ray INFO stage (\w+): running",
                                                          text, re.M)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", default="runs/cifar10_taesd_ipc10")
    p.add_argument("--log", default="runs/cifar10_taesd_ipc10.time.log",
                   help="output of `/usr/bin/time -v ddoq-ray run ...` (wall time, max RSS)")
    p.add_argument("--rerun", action="store_true", help="run the main job first (~20 min; writes --run-dir's "
                   "parent runs/ under the repo and logs with /usr/bin/time -v to --log)")
    p.add_argument("--quick", action="store_true", help="same as the default (this script only reads files)")
    a = p.parse_args(argv)
    if a.rerun:
        cmd = ["/usr/bin/time", "-v", str(Path(sys.executable).parent / "ddoq-ray"), "run",
               "configs/cifar10_taesd_ipc10.yaml"]
        with open(a.log, "w") as f:
            subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, check=False)
        a.run_dir = str(ROOT / "runs" / "cifar10_taesd_ipc10")
    run = a.run_dir
    log_text = Path(a.log).read_text(errors="replace") if Path(a.log).exists() else ""
    starts = stage_starts(log_text)
    tv = parse_time_v(log_text)
    log_mtime = dt.datetime.fromtimestamp(Path(a.log).stat().st_mtime) if log_text else None
    killed = "SIGTERM received" in log_text and "total_wall_s" not in tv
    rows = []
    for s in STAGES:
        info = committed(a.run_dir, s)  # the stage's commit pointer (local path or s3:// / gs:// run dir)
        row = {"stage": s, "started": starts.get(s)}
        if info is not None:
            row.update({"status": "done", "wall_s": info.get("wall_s")})
            for k in ("encoded", "centroids", "images", "students"):
                if k in info:
                    row["items"] = f"{k}={info[k]}"
        elif s in starts and log_mtime is not None:
            t0 = dt.datetime.combine(log_mtime.date(), dt.time.fromisoformat(starts[s]))
            row.update({"status": "stopped (SIGTERM)" if killed else "running/unfinished",
                        "wall_s": (log_mtime - t0).total_seconds(),
                        "note": "elapsed until the log's last write"})
        else:
            row["status"] = "missing"
        rows.append(row)
    total = tv.get("total_wall_s")
    stage_sum = sum(r["wall_s"] or 0 for r in rows if r.get("status") == "done")
    finished = all(r["status"] == "done" for r in rows) and "total_wall_s" in tv
    studs = students(log_text)
    n_students = 9  # 3 methods x 3 seeds in the config
    est = None
    if studs and not finished:
        per = sum(x["wall_s"] for x in studs) / len(studs)
        est = stage_sum + n_students * per + 30  # + teacher evaluation
    print(table(rows, ["stage", "status", "started", "wall_s", "items", "note"]))
    if studs:
        print(table(studs, ["time", "method", "seed", "top1", "wall_s"]))
    if killed:
        print("the job was stopped by SIGTERM before it finished")
    if est:
        print(f"estimated total if it had run to the end: {est / 60:.0f} min ({len(studs)}/{n_students} students "
              f"done, mean {sum(x['wall_s'] for x in studs) / len(studs):.0f} s each)")
    print(f"\nsum of finished stages {stage_sum:.0f} s; /usr/bin/time: {tv or 'not in the log (running, or killed)'}")
    if finished:
        print(f"main job {total / 60:.1f} min vs goal 20 min: {'met' if total <= GOAL_S else 'NOT met'}")
    write_result("bench_main_job", {"run_dir": str(run), "log": a.log, "finished": finished, "stages": rows,
                                    "time_v": tv, "stage_sum_s": stage_sum, "goal_s": GOAL_S,
                                    "students": studs, "killed_by_sigterm": killed, "estimated_total_s": est,
                                    "goal_met": (total <= GOAL_S) if finished else None})


if __name__ == "__main__":
    main()
