"""Run directory layout and atomic stage commits.

A stage writes into ``<run>/.<stage>.tmp-<uuid>/``, then renames it to ``<run>/<stage>/`` and writes
``<run>/<stage>/_SUCCESS.json`` (fingerprint, counts, wall time) last. A stage is complete iff that file exists
with the current fingerprint; anything else (a crash mid-write, an older config) is discarded and redone.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

SUCCESS = "_SUCCESS.json"


def stage_done(run_dir: Path, stage: str, fingerprint: str) -> bool:
    """True when ``<run>/<stage>`` was committed with this fingerprint."""
    marker = Path(run_dir) / stage / SUCCESS
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("fingerprint") == fingerprint
    except (OSError, json.JSONDecodeError):
        return False


def read_success(run_dir: Path, stage: str) -> dict:
    return json.loads((Path(run_dir) / stage / SUCCESS).read_text())


@contextmanager
def stage_writer(run_dir: Path, stage: str, fingerprint: str):
    """Yield a temporary folder and a dict for summary fields; commit both atomically on success.

    On an exception the temporary folder is removed and the previous committed output (if any) stays.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in run_dir.glob(f".{stage}.tmp-*"):  # left by a killed driver
        shutil.rmtree(stale, ignore_errors=True)
    tmp = run_dir / f".{stage}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    summary: dict = {}
    t0 = time.time()
    try:
        yield tmp, summary
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    final = run_dir / stage
    if final.exists():
        old = run_dir / f".{stage}.old-{uuid.uuid4().hex[:8]}"
        final.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    tmp.rename(final)
    summary = {"stage": stage, "fingerprint": fingerprint, "wall_s": round(time.time() - t0, 2), **summary}
    marker_tmp = final / (SUCCESS + ".tmp")
    marker_tmp.write_text(json.dumps(summary, indent=2))
    marker_tmp.rename(final / SUCCESS)
