"""Run every benchmark, then rewrite docs/benchmarks.md from benchmarks/results/*.json.

    .venv/bin/python -m benchmarks            # full versions (~25 min on 2 cores)
    .venv/bin/python -m benchmarks --quick    # each script's --quick version (~6 min)
    .venv/bin/python -m benchmarks --report   # only re-render docs/benchmarks.md from the stored JSON
    .venv/bin/python -m benchmarks --only bench_w2 bench_encode
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

SCRIPTS = ["bench_quantize", "bench_w2", "bench_encode", "bench_quantize_scale", "bench_main_job", "bench_jpeg",
           "bench_standin", "cost_model"]


def main(argv=None):
    p = argparse.ArgumentParser(description="run the ddoq-ray benchmarks and regenerate docs/benchmarks.md")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--report", action="store_true", help="only regenerate docs/benchmarks.md")
    p.add_argument("--only", nargs="+", choices=SCRIPTS)
    a = p.parse_args(argv)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not a.report:
        for name in a.only or SCRIPTS:  # one after another: never two benchmarks competing for the 2 cores
            print(f"\n=== {name} ===", flush=True)
            importlib.import_module(f"benchmarks.{name}").main(["--quick"] if a.quick else [])
    from benchmarks.report import main as report

    report()


if __name__ == "__main__":
    sys.exit(main())
