"""The driver's memory helpers (``ddoq_ray.driver_memory``) and the report's per-class assignment reads (issue 15)."""

import importlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ddoq_ray import driver_memory
from ddoq_ray.artifacts.centroids import read_assignments


def test_mark_writes_one_line_per_call_with_the_documented_fields(tmp_path, monkeypatch):
    trace = tmp_path / "trace.jsonl"
    monkeypatch.setenv("DDOQ_MEMTRACE", str(trace))
    dm = importlib.reload(driver_memory)
    try:
        keep = pc.add(pa.array(np.arange(1 << 20, dtype=np.int64)), 1)  # 8 MiB allocated in Arrow's pool
        dm.mark("first", rows=3)
        dm.mark("second")
    finally:
        monkeypatch.delenv("DDOQ_MEMTRACE")
        importlib.reload(driver_memory)
    rows = [json.loads(line) for line in trace.read_text().splitlines()]
    assert [r["label"] for r in rows] == ["first", "second"] and rows[0]["rows"] == 3
    assert rows[0]["t"] == 0.0 and rows[1]["t"] >= 0.0
    assert rows[0]["VmRSS"] > 10 and rows[0]["RssAnon"] > 0  # MB, from /proc/self/status
    assert rows[0]["arrow_mb"] >= 8.0 and keep.nbytes == 8 << 20


def test_mark_is_a_no_op_without_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("DDOQ_MEMTRACE", raising=False)
    dm = importlib.reload(driver_memory)
    monkeypatch.chdir(tmp_path)
    dm.mark("nothing")
    assert list(tmp_path.iterdir()) == []


def test_release_frees_only_what_is_free():
    live = pa.array([f"id-{i}" for i in range(200_000)])
    before = pa.total_allocated_bytes()
    dropped = pa.array([f"tmp-{i}" for i in range(200_000)])
    del dropped
    driver_memory.release()
    assert pa.total_allocated_bytes() == before  # live buffers untouched, nothing leaked
    assert live[199_999].as_py() == "id-199999" and len(live) == 200_000


def test_read_assignments_of_a_few_classes_equals_filtering_all(tmp_path):
    """Written as the quantize stage writes it (one write per class and clustering, hence one row group each)."""
    rng = np.random.default_rng(0)
    with pq.ParquetWriter(tmp_path / "assignments.parquet", pa.schema(
            [("algorithm", pa.string()), ("id", pa.string()), ("label", pa.int64()), ("k", pa.int32()),
             ("sqdist", pa.float64())])) as w:
        for a in ("lloyd", "minibatch"):
            for c in rng.permutation(30):  # arrival order, as ray.wait returns classes
                n = 5 + int(c)
                w.write_table(pa.table({"algorithm": [a] * n, "id": [f"{c}_{i}" for i in range(n)],
                                        "label": pa.array([int(c)] * n, pa.int64()),
                                        "k": pa.array(rng.integers(0, 3, n), pa.int32()),
                                        "sqdist": rng.random(n)}))
    assert pq.ParquetFile(tmp_path / "assignments.parquet").num_row_groups == 60
    full = read_assignments(str(tmp_path), columns=["id", "label"], algorithm="minibatch")
    some = read_assignments(str(tmp_path), columns=["id", "label"], algorithm="minibatch", labels=[3, 17, 29])
    want = full.filter(pc.is_in(full.column("label"), pa.array([3, 17, 29]))).sort_by("id")
    assert some.column_names == ["id", "label"] and some.num_rows == 8 + 22 + 34
    assert some.sort_by("id").equals(want)
    assert read_assignments(str(tmp_path), columns=["id"], algorithm="lloyd", labels=[99]).num_rows == 0
