"""No tracked text file names a path of one machine (a work tree, a home folder): code and docs find inputs
through the assets root (``$DDOQ_ASSETS``, ``assets:``) and ``--run-dir`` instead."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# /work/..., /home/<user>/..., /Users/<user>/..., /root/...; /home/ray is the Ray image's user (cluster files).
MACHINE_PATH = re.compile(r"(?<![\w.])(/work/|/home/(?!ray\b)[\w.-]+/|/Users/[\w.-]+/|/root/)")
THIS = Path(__file__).name


def tracked_text_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    files = []
    for name in out.splitlines():
        p = ROOT / name
        if p.name == THIS or not p.is_file():
            continue
        try:
            p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary
        files.append(p)
    return files


def test_pattern_catches_machine_paths():
    hits = [s for s in ("/work/main", "x /home/alice/data", "/Users/bob/x", "/root/.cache")
            if MACHINE_PATH.search(s)]
    assert len(hits) == 4
    assert not MACHINE_PATH.search("/home/ray/ddoq-ray") and not MACHINE_PATH.search("s3://b/work/x")


def test_no_tracked_file_names_a_machine_path():
    bad = [f"{p.relative_to(ROOT)}:{i}: {line.strip()[:120]}"
           for p in tracked_text_files() for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
           if MACHINE_PATH.search(line)]
    assert not bad, "paths of one machine (use the assets root / --run-dir):\n" + "\n".join(bad)
