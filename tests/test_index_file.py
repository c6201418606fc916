"""The on-disk index (ddoq_ray/index_file.py): the file-by-file Parquet listing gives exactly ``list_split``'s index
(rows, values, order, class names, errors), its row groups sit on the 2,048-row grid, its readers return the right
rows, and the Run's copy lives as long as someone holds it."""

from __future__ import annotations

import gc
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ddoq_ray.config import DataConfig
from ddoq_ray.data import list_split
from ddoq_ray.errors import DataError
from ddoq_ray.index_file import ROWS_PER_GROUP, IndexFile, list_split_file, streamed_files


def _shards(root, sizes, n_classes=7, seed=0, ids=False):
    """Parquet shards of the HF layout with shuffled integer labels; ``ids``: an explicit ``id`` column."""
    rng = np.random.default_rng(seed)
    root.mkdir()
    row = 0
    for s, n in enumerate(sizes):
        labels = rng.integers(0, n_classes, n)
        cols = {"image": pa.array([b"x"] * n, pa.binary()), "label": pa.array(labels, pa.int64())}
        if ids:
            cols["id"] = pa.array([f"img{row + i}" for i in range(n)])
        pq.write_table(pa.table(cols), root / f"train-{s:05d}.parquet", row_group_size=1000)
        row += n
    return str(root)


def _decoded(t: pa.Table) -> pa.Table:
    """The index with its dictionary ``file`` column decoded (dictionaries differ per chunk, values do not)."""
    t = t.combine_chunks()
    return t.set_column(t.schema.get_field_index("file"), "file", pc.cast(t.column("file"), pa.binary()))


@pytest.mark.parametrize("kw", [{}, {"class_subset": [5, 0, 3]}, {"max_per_class": 150},
                                {"class_subset": [1, 2], "max_per_class": 40}])
def test_file_listing_equals_list_split(tmp_path, kw):
    src = _shards(tmp_path / "data", [3000, 1, 2500, 0, 4097])
    per_class = kw.pop("max_per_class", None)
    dcfg = DataConfig(train=src, **kw)
    assert streamed_files(src, dcfg, None) is not None  # the file-by-file path, not the in-memory fallback
    want, want_classes = list_split(src, dcfg, per_class)
    got, got_classes = list_split_file(src, dcfg, str(tmp_path / "ix" / "train.parquet"), per_class)
    assert got_classes == want_classes
    assert got.num_rows == want.num_rows
    table = got.table()
    assert table.schema.names == want.schema.names
    assert _decoded(table).equals(_decoded(want))
    assert not os.path.exists(str(tmp_path / "ix" / "train.parquet.raw"))  # the raw pass is gone
    groups = [pq.ParquetFile(got.loc).metadata.row_group(i).num_rows
              for i in range(pq.ParquetFile(got.loc).metadata.num_row_groups)]
    assert all(g == ROWS_PER_GROUP for g in groups[:-1]) and 0 < groups[-1] <= ROWS_PER_GROUP
    assert np.array_equal(got.labels(), want.column("label").to_numpy())
    a = min(2040, want.num_rows - 60)  # across a row-group boundary where there is one
    assert got.ids(a, a + 60).to_pylist() == want.column("id").slice(a, 60).to_pylist()
    at = pa.array([0, 5, want.num_rows - 1])
    pick = want.column("id").take(at).to_pylist()
    rows = got.rows_with_ids(pick + ["not-an-id"])
    assert rows.column("id").to_pylist() == pick  # index order, unknown ids ignored
    assert rows.column("label").to_pylist() == want.column("label").take(at).to_pylist()


def test_file_listing_finds_duplicate_ids_as_list_split(tmp_path):
    src = _shards(tmp_path / "data", [100, 100], ids=True)
    t = pq.read_table(f"{src}/train-00001.parquet")
    ids = t.column("id").to_pylist()
    ids[7], ids[9] = "img3", "img50"  # two ids of shard 0 again in shard 1
    pq.write_table(t.set_column(t.schema.get_field_index("id"), "id", pa.array(ids)), f"{src}/train-00001.parquet")
    dcfg = DataConfig(train=src)
    with pytest.raises(DataError) as want:
        list_split(src, dcfg)
    with pytest.raises(DataError) as got:
        list_split_file(src, dcfg, str(tmp_path / "train.parquet"))
    assert str(got.value) == str(want.value)
    assert "2 duplicate ids, e.g. img3" in str(got.value)
    assert not os.path.exists(str(tmp_path / "train.parquet.raw"))


def test_file_listing_errors_name_the_file(tmp_path):
    src = _shards(tmp_path / "data", [10, 10])
    t = pq.read_table(f"{src}/train-00001.parquet")
    pq.write_table(t.set_column(1, "label", pa.array([None] + [1] * 9, pa.int64())), f"{src}/train-00001.parquet")
    with pytest.raises(DataError, match=r"train-00001.parquet: 1 rows have a null 'label'"):
        list_split_file(src, DataConfig(train=src), str(tmp_path / "train.parquet"))
    with pytest.raises(DataError, match="classes with no images"):
        list_split_file(_shards(tmp_path / "two", [50], n_classes=1), DataConfig(train=src, classes=["a", "b"]),
                        str(tmp_path / "t2.parquet"))


def test_other_formats_are_listed_in_memory_then_written(tmp_path):
    for c in ("cat", "dog"):
        (tmp_path / "tree" / c).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "tree" / c / f"{i}.jpg").write_bytes(b"")
    (tmp_path / "tree" / "notes.txt").write_text("x")
    src = str(tmp_path / "tree")
    want, classes = list_split(src, DataConfig(train=src))
    got, got_classes = list_split_file(src, DataConfig(train=src), str(tmp_path / "train.parquet"))
    assert got_classes == classes == ["cat", "dog"]
    assert got.table().equals(want)
    assert got.metadata[b"ignored_files"] == want.schema.metadata[b"ignored_files"]  # results.json reads it


def test_run_index_file_lives_as_long_as_it_is_held(tmp_path):
    from ddoq_ray.config import RunConfig
    from ddoq_ray.context import Run

    src = _shards(tmp_path / "data", [500, 300])
    run = Run(RunConfig.model_validate({"name": "t", "output_dir": str(tmp_path / "run"), "data": {"train": src}}))
    index = run.train_index_file
    assert run.train_index_file is index  # listed once
    assert run.classes == [str(i) for i in range(7)]
    assert isinstance(index, IndexFile) and index.num_rows == 800
    assert run.train_index.num_rows == 800
    folder = os.path.dirname(index.loc)
    del run
    gc.collect()
    assert os.path.exists(index.loc)  # still held here
    del index
    gc.collect()
    assert not os.path.exists(folder)
