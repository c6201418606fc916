"""Encode as one streaming pipeline: the VAE is loaded once per actor for the whole run (not once per shard), each
shard is committed by its marker, the latents equal those of the per-shard pipeline of the previous design, and a
Parquet read touches only the row groups of its rows."""

from __future__ import annotations

import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import CIFAR_TRAIN, TAESD
from ray import cloudpickle  # Ray's own copy: the one that pickles UDFs

from ddoq_ray import data, encode, storage
from ddoq_ray.artifacts.latents import scan
from ddoq_ray.config import load_config
from ddoq_ray.data import list_split
from ddoq_ray.images import decode_batch

# The counting encoder below runs in Ray actors (other processes): ship this module by value, not by name.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


class CountingEncoder(encode.VAEEncoder):
    """:class:`ddoq_ray.encode.VAEEncoder` that appends a line to ``counter`` each time it loads the VAE."""

    counter = ""

    def __init__(self, *args, **kwargs):
        with open(self.counter, "a") as f:
            f.write("load\n")
        super().__init__(*args, **kwargs)


def _old_per_shard_latents(cfg, index, shape) -> pa.Table:
    """The previous design's pipeline for one shard (read_split -> decode_batch -> VAEEncoder), collected."""
    import ray

    from ddoq_ray.data_ray import read_split

    e = cfg.encode
    ds = read_split(index, cfg.data.image_column).map_batches(
        decode_batch, fn_kwargs={"size": cfg.data.image_size}, batch_size=256, batch_format="numpy", num_cpus=0.5)
    ds = ds.map_batches(encode.VAEEncoder, fn_constructor_args=(str(TAESD), e.vae_kind, e.precision, e.latent,
                                                                 e.seed, shape, "cpu", 1),
                        compute=ray.data.ActorPoolStrategy(size=1), batch_size=e.batch_size, batch_format="numpy",
                        num_cpus=1)
    return pa.concat_tables(ds.iter_batches(batch_size=None, batch_format="pyarrow"))


def test_one_model_load_for_three_shards_and_latents_as_before(ray_session, assets, tmp_path, monkeypatch):
    cfg = load_config("configs/smoke.yaml", [f"assets_root={assets}", "data.max_per_class=20",
                                             "encode.shard_rows=20", "encode.num_threads=1"])
    index, _ = list_split(str(CIFAR_TRAIN), cfg.data, cfg.data.max_per_class)  # 3 classes x 20 rows: 3 shards
    counter = tmp_path / "loads.txt"
    monkeypatch.setattr(CountingEncoder, "counter", str(counter))
    monkeypatch.setattr(encode, "VAEEncoder", CountingEncoder)
    out, summary = str(tmp_path / "attempt"), {}
    encode.run_encode(cfg, index, str(TAESD), out, summary)
    monkeypatch.undo()

    assert cfg.encode.min_actors == cfg.encode.max_actors == 1
    assert counter.read_text().count("load") == 1  # the per-shard pipeline loaded it 3 times
    assert summary["shards"] == summary["encoded_shards"] == 3 and summary["input"] == 60 == summary["encoded"]
    done = sorted(storage.listdir(storage.join(out, "done")))
    assert done == ["00000.json", "00001.json", "00002.json"]
    for i, name in enumerate(done):
        m = storage.read_json(storage.join(out, "done", name))
        assert (m["start"], m["stop"], m["rows"], m["encoded"], m["skipped"]) == (20 * i, 20 * i + 20, 20, 20, 0)
    got = scan(out, columns=["id", "shard", "label", "latent"]).sort_by("id")
    pos = {r: i for i, r in enumerate(index.column("id").to_pylist())}
    assert [f"{pos[r] // 20:05d}" for r in got.column("id").to_pylist()] == got.column("shard").to_pylist()

    ref = _old_per_shard_latents(cfg, index, (4, 8, 8)).sort_by("id")
    assert got.column("id").to_pylist() == ref.column("id").to_pylist()
    assert got.column("label").to_pylist() == ref.column("label").to_pylist()
    assert np.array_equal(got.column("latent").combine_chunks().to_numpy_ndarray(),
                          ref.column("latent").combine_chunks().to_numpy_ndarray())  # bit-identical


def test_todo_blocks_are_cut_on_the_whole_index_grid():
    index = pa.table({"id": [str(i) for i in range(10)]})
    plan = encode.plan_shards(index, 3)  # 0-2, 3-5, 6-8, 9
    # As a one-shard run: 0-3, 4-7, 8-9 (adjacent shards in one block are one row range).
    assert encode.todo_blocks(plan, rows_per_block=4) == [[(0, 4)], [(4, 8)], [(8, 10)]]
    # Resumed with shards 00001 and 00003 left.
    assert encode.todo_blocks([plan[1], plan[3]], rows_per_block=4) == [[(3, 4)], [(4, 6)], [(9, 10)]]
    one = encode.plan_shards(index, 1)
    assert encode.todo_blocks([one[0], one[2], one[3]], rows_per_block=4) == [[(0, 1), (2, 4)]]  # a gap


def test_commit_refuses_a_stream_that_is_short_or_over():
    todo = [{"id": "00000", "start": 0, "stop": 4, "sha1": ""}]
    block = pa.table({"shard": ["00000"], "rows": [3], "encoded": [3]})
    with pytest.raises(RuntimeError, match="short of rows"):
        encode.commit_shards([block], "unused", todo)
    with pytest.raises(RuntimeError, match="got 6 rows, expected 4"):
        encode.commit_shards([block, block], "unused", todo)


def test_parquet_read_touches_only_the_row_groups_of_its_rows(tmp_path, monkeypatch):
    f = tmp_path / "shard.parquet"
    pq.write_table(pa.table({"image": [{"bytes": b"img%d" % i, "path": ""} for i in range(100)]}), f,
                   row_group_size=10)
    read, real = [], pq.ParquetFile.read_row_groups

    def spy(self, groups, *args, **kwargs):
        read.append(list(groups))
        return real(self, groups, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", spy)
    monkeypatch.setattr(pq, "read_table", lambda *a, **k: pytest.fail("whole-column read"))
    index = pa.table({"id": ["a", "b", "c", "d"], "label": [0] * 4, "file": [str(f).encode()] * 4,
                      "row": [37, 3, 99, 30]})
    assert data.read_bytes(index, "image") == [b"img37", b"img3", b"img99", b"img30"]
    assert read == [[0, 3, 9]]


def test_shuffled_classes_write_few_files_and_class_reads_list_only_their_folders(ray_session, assets, tmp_path,
                                                                                   monkeypatch):
    """A shuffled many-class split (HF ImageNet shards are) once wrote one file per (label, status) of every
    256-2,048-row block: ~9,000 files for 20,000 rows of 1,000 classes, and every class task then discovered all of
    them. Writer batches are now a shard's rows (one shard here: exactly one file per label), and a class read
    lists its own folders only. Read blocks of 256 rows stand in for the 2,048-row blocks of a large split."""
    from ddoq_ray.artifacts import latents

    blocks = encode.todo_blocks
    monkeypatch.setattr(encode, "todo_blocks", lambda todo: blocks(todo, rows_per_block=256))

    cfg = load_config("configs/smoke.yaml", [f"assets_root={assets}", "data.max_per_class=200",
                                             "encode.shard_rows=600", "encode.num_threads=1"])
    index, _ = list_split(str(CIFAR_TRAIN), cfg.data, cfg.data.max_per_class)  # 3 classes x 200 rows
    order = np.random.default_rng(0).permutation(index.num_rows)  # interleave the classes, as a shuffled shard
    index = index.take(pa.array(order))
    out, summary = str(tmp_path / "attempt"), {}
    encode.run_encode(cfg, index, str(TAESD), out, summary)
    assert summary["shards"] == 1 and summary["input"] == 600 == summary["encoded"]
    files = [f for f, _ in storage.walk_files(storage.join(out, "latents"))]
    assert len(files) == 3, files  # the previous writer: 9 (three read blocks x 3 labels)
    full = scan(out, columns=["id", "label", "latent"], status="ok")
    for c in range(3):
        got = latents.class_files(out, c)
        assert len(got) == 1 and f"/label={c}/" in got[0] and "/status=ok/" in got[0]
        ids, z = latents.read_class_latents(out, c)
        ref = full.filter(pa.compute.equal(full.column("label"), c)).sort_by("id")
        assert ids == ref.column("id").to_pylist() and len(ids) == 200
        assert np.array_equal(z, ref.column("latent").combine_chunks().to_numpy_ndarray())
    assert latents.class_files(out, 7) == [] and latents.read_class_latents(out, 7)[0] == []


def test_commit_logs_each_shard_with_the_run_progress(monkeypatch, caplog):
    todo = [{"id": "00000", "start": 0, "stop": 4, "sha1": ""}, {"id": "00001", "start": 4, "stop": 6, "sha1": ""}]
    monkeypatch.setattr(encode, "shard_counts", lambda out, sid, rows: {"encoded": rows, "skipped": 0})
    written = []
    monkeypatch.setattr(encode, "write_shard_marker", lambda out, s, c: written.append((s["id"], c["encoded"])))
    blocks = [pa.table({"shard": ["00000", "00001"], "rows": [4, 1], "encoded": [4, 1]}),
              pa.table({"shard": ["00001"], "rows": [1], "encoded": [1]})]
    with caplog.at_level("INFO", logger="ddoq_ray"):
        encode.commit_shards(blocks, "unused", todo)
    assert written == [("00000", 4), ("00001", 2)]
    lines = [r.getMessage() for r in caplog.records if "shard" in r.getMessage()]
    assert [ln.split(" img/s")[0].rsplit(",", 1)[0] for ln in lines] == [
        "encode: shard 00000 done (4/6 images of this run", "encode: shard 00001 done (6/6 images of this run"]
