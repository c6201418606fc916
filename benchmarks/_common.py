"""Shared helpers: machine/version info, timing, RSS sampling via /proc, tables and JSON results."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
import threading
import time
from importlib import metadata
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
PACKAGES = ["numpy", "torch", "faiss-cpu", "pot", "scikit-learn", "ray", "pyarrow", "diffusers"]


def machine() -> dict:
    """CPU model, cores, RAM, versions and date (recorded with every result)."""
    model = "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = None
    return {"cpu": model, "cores": os.cpu_count(), "ram_gb": round(mem_kb / 2**20, 1),
            "avx512_bf16": "avx512_bf16" in flags, "python": platform.python_version(),
            "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"), "versions": versions,
            "date": _dt.datetime.now().isoformat(timespec="seconds"),
            "loadavg_1_5_15": [round(x, 1) for x in os.getloadavg()]}


def write_result(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "machine": machine(), **payload}
    path.write_text(json.dumps(payload, indent=1, default=_default) + "\n")
    print(f"\nwrote {path.relative_to(ROOT)}")
    return path


def _default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))


def table(rows: list[dict], cols: list[str], floatfmt: str = ".4g") -> str:
    """A GitHub-markdown table of ``rows`` restricted to ``cols`` (printed and reused in docs)."""
    def fmt(v):
        if isinstance(v, float):
            return format(v, floatfmt)
        return "" if v is None else str(v)
    body = [[fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c) for i, c in enumerate(cols)]

    def line(vals):
        return "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths, strict=True)) + " |"

    out = [line(cols), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(b) for b in body]
    return "\n".join(out)


def timed(fn, *args, **kw):
    t = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t, out


# ------------------------------------------------------------------ memory (/proc; psutil is not a dependency)

def _status_bytes(pid: int | str, field: str) -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` in bytes; 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def rss_bytes(pid: int | str = "self") -> int:
    return _status_bytes(pid, "VmRSS")


def rss_shmem_bytes(pid: int | str = "self") -> int:
    """The shared-memory part of a process's RSS (``RssShmem``: for a Ray process, object-store pages it has
    touched); ``VmRSS - RssShmem`` is its own heap, stacks and mapped files."""
    return _status_bytes(pid, "RssShmem")


def reset_peak_rss() -> None:
    """Reset this process's VmHWM (Linux: write 5 to clear_refs), so :func:`peak_rss` measures from now."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d.name))
    return kids


def descendants(pid: int) -> list[int]:
    kids, out, todo = _children_map(), [], [pid]
    while todo:
        p = todo.pop()
        for c in kids.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _io(pid: int) -> dict:
    try:
        return {k: int(v) for k, v in (ln.split(": ") for ln in Path(f"/proc/{pid}/io").read_text().splitlines())}
    except (OSError, ValueError):
        return {}


class ProcSampler:
    """Samples RSS of this process and of its Ray worker descendants (``ray::*`` processes) every ``period`` s.

    Records the peak driver RSS, the peak of the summed worker RSS, the largest single worker RSS, and the worker
    ``rchar``/``read_bytes`` (last value seen per pid, so exited workers still count).
    """

    def __init__(self, period: float = 0.25):
        self.period, self.pid = period, os.getpid()
        self.peak_driver = self.peak_workers_sum = self.peak_worker_max = 0
        self.io: dict[int, dict] = {}
        self.io0: dict[int, dict] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _workers(self) -> list[int]:
        # Ray task/actor workers are named ray::<task> or ray::IDLE; the per-node agents are left out.
        return [p for p in descendants(self.pid)
                if (c := _cmdline(p)).startswith("ray::") and "Agent" not in c.split(" ", 1)[0]]

    def _sample(self):
        self.peak_driver = max(self.peak_driver, rss_bytes())
        rss = []
        for p in self._workers():
            rss.append(rss_bytes(p))
            io = _io(p)
            if io:
                self.io0.setdefault(p, io)
                self.io[p] = io
        if rss:
            self.peak_workers_sum = max(self.peak_workers_sum, sum(rss))
            self.peak_worker_max = max(self.peak_worker_max, max(rss))

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.period)

    def __enter__(self):
        self._sample()
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self._sample()

    def io_delta(self, key: str) -> int:
        return sum(v.get(key, 0) - self.io0[p].get(key, 0) for p, v in self.io.items())


def gaussian_mixture(n: int, d: int, seed: int, components: int = 20, spread: float = 1.0,
                     noise: float = 1.0) -> np.ndarray:
    """Synthetic class latents: float32 ``[n, d]`` from a mixture of ``components`` isotropic Gaussians with
    Dirichlet(1) weights (unequal cells, as in real classes; the scale is roughly that of SD latents)."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((components, d), dtype=np.float32) * spread
    w = rng.dirichlet(np.ones(components))
    comp = rng.choice(components, size=n, p=w)
    x = rng.standard_normal((n, d), dtype=np.float32)
    x *= noise
    x += means[comp]
    return x


def median(xs):
    return float(np.median(np.asarray(xs, dtype=float)))
