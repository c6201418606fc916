"""The driver's id checks at a few bytes per row (issue 15): the duplicate check of a listed split, the encode
accounting shard by shard against the plan, the read blocks as zero-copy slices of the index, and the Parquet
index's dictionary-encoded ``file`` column."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ddoq_ray import encode, id_checks
from ddoq_ray.config import DataConfig
from ddoq_ray.data import list_split
from ddoq_ray.errors import DataError


def test_duplicate_ids_exact_and_collision_safe(monkeypatch):
    ids = pa.chunked_array([["a", "b", "c"], ["b", "d", "a", "a"]])
    assert id_checks.duplicate_ids(ids) == (2, ["a", "b"])
    assert id_checks.duplicate_ids(pa.array([str(i) for i in range(200_000)])) == (0, [])
    # Every hash equal (the worst collision): the string comparison still finds exactly the real duplicates.
    monkeypatch.setattr(id_checks, "id_hashes", lambda a: np.zeros(len(a), dtype=np.int64))
    assert id_checks.duplicate_ids(ids) == (2, ["a", "b"])
    assert id_checks.duplicate_ids(pa.array(["x", "y", "z"])) == (0, [])


def test_same_ids_reports_missing_and_extra():
    want = pa.array(["a", "b", "c"])
    assert id_checks.same_ids(pa.chunked_array([["c"], ["a", "b"]]), want) == ([], [])
    assert id_checks.same_ids(pa.array(["a", "c"]), want) == (["b"], [])
    assert id_checks.same_ids(pa.array(["a", "b", "c", "c"]), want) == ([], ["c"])
    assert id_checks.same_ids(pa.array(["a", "b", "z"]), want) == (["c"], ["z"])


def _write_shard(out, index, shard, status=None):
    """Latent files of one plan shard as the encode writer writes them (``encode.write_rows``)."""
    rows = index.slice(shard["start"], shard["stop"] - shard["start"])
    n = rows.num_rows
    status = status or ["ok"] * n
    batch = pa.table({"id": rows.column("id"), "label": rows.column("label"), "status": status,
                      "error": ["" if s == "ok" else "undecodable" for s in status],
                      "latent": encode.to_tensor_array(np.zeros((n, 1, 2, 2), np.float32)),
                      "pos": pa.array(np.arange(shard["start"], shard["stop"]))})
    encode.write_rows(batch, out, [shard["start"]], [shard["id"]])


def test_account_shard_by_shard(tmp_path):
    index = pa.table({"id": [f"img{i}" for i in range(10)], "label": [i % 3 for i in range(10)]})
    plan = encode.plan_shards(index, 4)  # 0-3, 4-7, 8-9
    out = str(tmp_path / "attempt")
    _write_shard(out, index, plan[0])
    _write_shard(out, index, plan[1], status=["ok", "skipped", "ok", "ok"])  # img5 undecodable
    _write_shard(out, index, plan[2])
    got = encode.account(out, index, plan)
    assert (got["input"], got["encoded"], got["skipped"]) == (10, 9, 1)
    assert got["encoded_per_class"] == {0: 4, 1: 3, 2: 2}  # img5 (class 2) skipped
    assert got["skipped_rows"] == [{"id": "img5", "label": 2, "error": "undecodable"}]
    assert pq.read_table(tmp_path / "attempt" / "skipped.parquet").column("id").to_pylist() == ["img5"]

    # A row missing from a shard, a row written twice, a shard outside the plan: each refused, naming it.
    short = plan[:2] + [{**plan[2], "stop": 9}]
    with pytest.raises(RuntimeError, match=r"shard 00002 .* holds 2 rows for 1 inputs.*duplicate e.g. \['img9'\]"):
        encode.account(out, index.slice(0, 9), short)
    with pytest.raises(RuntimeError, match=r"not in the plan: \['shard=00002'\]"):
        encode.account(out, index.slice(0, 8), plan[:2])
    _write_shard(str(tmp_path / "other"), index, plan[0])
    with pytest.raises(RuntimeError, match=r"shard 00001 .* holds 0 rows for 4 inputs: missing e.g. \['img4'"):
        encode.account(str(tmp_path / "other"), index.slice(0, 8), plan[:2])


def test_read_tasks_take_their_rows_from_the_index_file(tmp_path):
    """The driver ships row ranges; each read task reads its rows from <attempt>/index.parquet (row groups on
    the block grid), in index order, dictionary-encoded ``file`` included."""
    from ddoq_ray.parquet_rows import read_parquet_table

    files = pa.DictionaryArray.from_arrays(pa.array(np.repeat([0, 1], 5000).astype(np.int32)),
                                           pa.array([b"a.parquet", b"b.parquet"]))
    index = pa.table({"id": [f"i{k}" for k in range(10_000)], "label": np.arange(10_000) % 7, "file": files,
                      "row": np.arange(10_000) % 5000, "orig_label": np.zeros(10_000, np.int64)})
    loc = encode.write_index(str(tmp_path), index)
    meta = pq.ParquetFile(loc).metadata
    assert meta.num_rows == 10_000 and meta.row_group(0).num_rows == encode.ROWS_PER_BLOCK
    plan = encode.plan_shards(index, 3000)  # 0-2999, 3000-5999, 6000-8999, 9000-9999
    blocks = encode.todo_blocks([plan[1], plan[3]])
    assert blocks[0] == [(3000, 4096)] and blocks[-1] == [(9000, 10_000)]
    pos = np.concatenate([np.arange(a, b) for blk in blocks for a, b in blk])
    got = read_parquet_table(loc, ["id", "label", "file", "row"], pos)
    want = index.select(["id", "label", "file", "row"]).take(pa.array(pos))
    assert got.to_pylist() == want.to_pylist() and len(pos) == 4000


def test_parquet_index_file_column_is_one_dictionary_entry_per_file(tmp_path):
    for k in range(2):
        pq.write_table(pa.table({"image": [b"x"] * 3, "label": [0, 1, k]}), tmp_path / f"part-{k}.parquet")
    index, _ = list_split(str(tmp_path), DataConfig(train=str(tmp_path)))
    col = index.column("file")
    assert pa.types.is_dictionary(col.type)
    assert sum(len(c.dictionary) for c in col.chunks) == 2
    assert [f.rsplit(b"/", 1)[1] for f in col.to_pylist()] == [b"part-0.parquet"] * 3 + [b"part-1.parquet"] * 3
    assert index.column("row").to_pylist() == [0, 1, 2, 0, 1, 2]
    pq.write_table(pa.table({"image": [b"x"] * 2, "label": [0, 1], "id": ["a", "a"]}), tmp_path / "part-2.parquet")
    with pytest.raises(DataError, match="1 duplicate ids, e.g. a"):
        list_split(str(tmp_path), DataConfig(train=str(tmp_path)))
