"""The driver's memory: hand freed memory back to the OS, and an opt-in trace for locating growth with dataset size
(issue 15; docs/benchmarks.md, stand-in run).

:func:`release` returns what the allocators keep after a phase that touched every row or file (listing the split,
the encode accounting, the quantize writers, the report): Arrow's pool (mimalloc) and glibc's heap keep freed
pages mapped: listing the ImageNet-shaped stand-in (1.28 M rows, a 79 MB index) left 133 MB of RSS, 109 after
release.

``DDOQ_MEMTRACE=<file>`` makes :func:`mark` append one JSON line per call: the label, seconds since the first mark,
the process's ``VmRSS`` / ``RssAnon`` / ``RssShmem`` (MB, from ``/proc/self/status``), the bytes held by Arrow's
default memory pool (``pyarrow.total_allocated_bytes``) and, with ``DDOQ_MEMTRACE_PY=1`` (tracemalloc started at
the first mark, 4 frames), the Python heap and the 8 allocation sites that grew most since the previous mark.
Unset, :func:`mark` returns at once. Linux only (elsewhere the RSS fields are 0).
"""

from __future__ import annotations

import json
import os
import time

_PATH = os.environ.get("DDOQ_MEMTRACE")
_PY = os.environ.get("DDOQ_MEMTRACE_PY") == "1"
_state: dict = {}


def _status_mb() -> dict:
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key = line.split(":", 1)[0]
                if key in ("VmRSS", "RssAnon", "RssShmem", "VmHWM"):
                    out[key] = round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return out


def release() -> None:
    """Return freed memory to the OS: ``pyarrow.default_memory_pool().release_unused()`` (Arrow docs, MemoryPool)
    and glibc's ``malloc_trim(0)`` (man 3 malloc_trim; skipped where libc has none, e.g. macOS or musl). Costs a
    few milliseconds; call it between phases, not per row."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _malloc_trim():
    if "trim" not in _state:
        try:
            import ctypes

            _state["trim"] = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _state["trim"] = None
    return _state["trim"]


def mark(label: str, **extra) -> None:
    """Append one trace line for ``label`` (plus ``extra`` JSON-able fields) when ``DDOQ_MEMTRACE`` is set."""
    if not _PATH:
        return
    import pyarrow as pa

    if "t0" not in _state:
        _state["t0"] = time.time()
        if _PY:
            import tracemalloc

            tracemalloc.start(4)
    row = {"label": label, "t": round(time.time() - _state["t0"], 2), **_status_mb(),
           "arrow_mb": round(pa.total_allocated_bytes() / 2**20, 1), **extra}
    if _PY:
        import tracemalloc

        snap = tracemalloc.take_snapshot()
        row["py_mb"] = round(tracemalloc.get_traced_memory()[0] / 2**20, 1)
        prev = _state.get("snap")
        if prev is not None:
            row["py_growth"] = [f"{s.size_diff / 2**20:+.2f} MB {s.count_diff:+d} " +
                                " < ".join(f"{fr.filename.rsplit('/', 2)[-1]}:{fr.lineno}" for fr in s.traceback)
                                for s in snap.compare_to(prev, "traceback")[:8]]
        _state["snap"] = snap
    with open(_PATH, "a") as f:
        f.write(json.dumps(row) + "\n")
