"""benchmarks/gpu_check.py on CPU at tiny sizes: no Ray import, every requested check reports its figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_cpu_tiny_without_ray(tmp_path):
    out = tmp_path / "gpu_check.json"
    # sys.modules["ray"] = None makes any `import ray` fail: the script must run where Ray is not installed.
    code = ("import sys; sys.modules['ray'] = None\n"
            "from benchmarks.gpu_check import main\n"
            f"main(['--tiny', '--only', 'vae', 'dit', 'unet', 'faiss', '--out', {str(out)!r}])\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["benchmark"] == "gpu_check" and res["tiny"] is True and res["cuda"] is False
    assert res["device"] == "cpu" and res["columns"][0] == "check"
    rows = {(r["check"], r["dtype"]): r for r in res["rows"]}
    # two precisions per model on CPU (fp32, bf16); faiss at IPC 10 and 50
    assert set(rows) == {(c, d) for c in ("sd_vae_encode", "dit_xl2_denoise", "sd15_unet_img2img")
                         for d in ("fp32", "bf16")} | {("faiss_kmeans", "fp32 IPC 10"), ("faiss_kmeans", "fp32 IPC 50")}
    for r in rows.values():
        assert r["finite"] is True and r["deterministic"] is True and r["max_abs_diff"] == 0.0, r
        assert r["img_per_s"] > 0 and r["wall_s"] > 0 and r["peak_mem_mb"] is None
    assert rows[("sd_vae_encode", "fp32")]["batch"] == 2 and rows[("sd_vae_encode", "fp32")]["size"] == 32
    assert rows[("dit_xl2_denoise", "bf16")]["note"].startswith("2 of 4 DDIM steps")
    assert "StandardGpuResources" in rows[("faiss_kmeans", "fp32 IPC 10")]["note"]
