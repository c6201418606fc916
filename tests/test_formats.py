"""New input formats (ddoq_ray.formats): WebDataset shards, CIFAR python batches, an HF-cache dataset, string
labels; each listed and read with exact accounting (input = ok + skipped, a corrupt image counted)."""

import io
import json
import pickle
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ddoq_ray.config import DataConfig
from ddoq_ray.data import detect_format, list_split, load_arrays, load_classes
from ddoq_ray.data_ray import read_split
from ddoq_ray.errors import FormatError
from ddoq_ray.images import decode_batch


def _png(value: int, size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def make_webdataset(root, labels=("cat", "dog", "cat", "dog", "cat", "dog")):
    """Two shards of 3 samples; sample 4 is a corrupt PNG; labels as .cls names or .json; one label-less .txt."""
    root.mkdir(parents=True, exist_ok=True)
    for s in range(2):
        with tarfile.open(root / f"shard-{s:05d}.tar", "w") as tf:
            for j in range(3):
                i = 3 * s + j
                key = f"sample{i:03d}"
                _add(tf, f"{key}.png", b"\x89PNG\r\n\x1a\n garbage" if i == 4 else _png(20 * i))
                if i % 2:
                    _add(tf, f"{key}.json", json.dumps({"label": labels[i]}).encode())
                else:
                    _add(tf, f"{key}.cls", labels[i].encode())
            _add(tf, f"readme{s}.txt", b"not a sample")
    return root


def _cifar_pickle(path, doc):
    path.write_bytes(pickle.dumps({k.encode(): v for k, v in doc.items()}, protocol=2))


def make_cifar10(root, rows_per_batch=4):
    """cifar-10-batches-py with 5 tiny train batches, a test batch and batches.meta; batch 2 row 1 is damaged."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        data = list(rng.integers(0, 256, (rows_per_batch, 3072), dtype=np.uint8))
        if i == 2:
            data[1] = np.zeros(100, np.uint8)  # a truncated row: skipped and counted
        _cifar_pickle(root / f"data_batch_{i}", {"batch_label": f"training batch {i} of 5", "data": data,
                                                 "labels": [(i + r) % 3 for r in range(rows_per_batch)]})
    _cifar_pickle(root / "test_batch", {"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8),
                                        "labels": [0, 1, 2]})
    _cifar_pickle(root / "batches.meta", {"label_names": [b"airplane", b"automobile", b"bird"]})
    return root


def test_webdataset_lists_and_reads_with_exact_accounting(tmp_path):
    root = make_webdataset(tmp_path / "wds")
    dcfg = DataConfig(train=str(root))
    assert detect_format(str(root)) == "webdataset"
    index, classes = list_split(str(root), dcfg)
    assert classes == ["cat", "dog"]  # string labels: sorted names
    assert index.column("id").to_pylist() == [f"shard-{i // 3:05d}.tar/sample{i:03d}" for i in range(6)]
    assert index.column("label").to_pylist() == [0, 1, 0, 1, 0, 1]
    assert json.loads(index.schema.metadata[b"ignored_files"]) == ["shard-00000.tar/readme0.txt",
                                                                  "shard-00001.tar/readme1.txt"]
    arr = load_arrays(index, "image", 8)
    assert len(arr["labels"]) + arr["n_skipped"] == 6 and arr["n_skipped"] == 1
    assert list(arr["ids"]) == [i for i in index.column("id").to_pylist() if not i.endswith("sample004")]
    assert [int(im[0, 0, 0]) for im in arr["images"]] == [0, 20, 40, 60, 100]  # the right member per row
    # data.classes fixes the order; a name outside it is an error naming the file
    index2, classes2 = list_split(str(root), DataConfig(train=str(root), classes=["dog", "cat"]))
    assert classes2 == ["dog", "cat"] and index2.column("label").to_pylist() == [1, 0, 1, 0, 1, 0]
    with pytest.raises(FormatError, match="not in the class list"):
        list_split(str(root), DataConfig(train=str(root), classes=["dog", "bird"]))


def test_webdataset_errors_name_the_shard(tmp_path):
    root = tmp_path / "wds"
    root.mkdir()
    with tarfile.open(root / "a.tar", "w") as tf:
        _add(tf, "x.jpg", _png(1))
    with pytest.raises(FormatError, match=r"a\.tar: sample 'x' has no \.cls or \.json"):
        list_split(str(root), DataConfig(train=str(root)))
    (root / "a.tar").write_bytes(b"\0" * 10 + b"not a tar")
    with pytest.raises(FormatError, match="not a readable tar shard"):
        list_split(str(root), DataConfig(train=str(root)))


def test_cifar_python_batches_list_and_read(tmp_path):
    root = make_cifar10(tmp_path / "cifar-10-batches-py")
    dcfg = DataConfig(train=str(root), test=str(root / "test_batch"))
    assert detect_format(str(root)) == "cifar" and detect_format(str(root / "test_batch")) == "cifar"
    index, classes = list_split(str(root), dcfg)
    assert classes == ["airplane", "automobile", "bird"] == load_classes(dcfg, str(root / "test_batch"))
    assert index.num_rows == 20 and index.column("id").to_pylist()[:5] == [
        "data_batch_1:0", "data_batch_1:1", "data_batch_1:2", "data_batch_1:3", "data_batch_2:0"]
    assert index.column("label").to_pylist()[:4] == [1, 2, 0, 1]
    arr = load_arrays(index, "image", 32)
    assert len(arr["labels"]) == 19 and arr["n_skipped"] == 1 and "data_batch_2:1" not in list(arr["ids"])
    with open(root / "data_batch_1", "rb") as f:  # pixels exactly the batch's row (CHW -> HWC), lossless
        want = pickle.load(f, encoding="bytes")[b"data"][0].reshape(3, 32, 32).transpose(1, 2, 0)
    assert np.array_equal(arr["images"][0], want)
    test, _ = list_split(dcfg.test, dcfg)
    assert test.num_rows == 3 and test.column("label").to_pylist() == [0, 1, 2]
    (root / "data_batch_3").write_bytes(b"\x80\x02}q\x00(")  # truncated pickle
    with pytest.raises(FormatError, match="data_batch_3: not a readable CIFAR python batch"):
        list_split(str(root), dcfg)


def test_cifar_unpickler_refuses_code(tmp_path):
    root = make_cifar10(tmp_path / "c")

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (root / "data_batch_1").write_bytes(pickle.dumps({b"data": Evil(), b"labels": [0]}, protocol=2))
    with pytest.raises(FormatError, match=r"global __builtin__\.print is not allowed"):
        list_split(str(root), DataConfig(train=str(root)))


def make_hf_cache(home, repo_id="someone/tiny-pets"):
    """An HF hub cache (datasets--<owner>--<name>/{refs/main, snapshots/<commit>}) with train/test Parquet
    files in the hub's layout: image struct {bytes, path}, string label."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = home / "hub" / ("datasets--" + repo_id.replace("/", "--"))
    snap = repo / "snapshots" / commit / "data"
    snap.mkdir(parents=True)
    for split, n in (("train", 6), ("test", 4)):
        images = [{"bytes": (b"broken" if (split, i) == ("train", 2) else _png(10 * i)), "path": f"{i}.png"}
                  for i in range(n)]
        pq.write_table(pa.table({"image": images, "label": ["dog" if i % 2 else "cat" for i in range(n)]}),
                       snap / f"{split}-00000-of-00001.parquet")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return f"hf://datasets/{repo_id}"


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    from ddoq_ray import formats

    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    formats._hf_snapshot.cache_clear()
    yield tmp_path
    formats._hf_snapshot.cache_clear()


def test_hf_dataset_from_offline_cache(hf_home):
    ref = make_hf_cache(hf_home)
    with pytest.raises(FormatError, match=r"splits \['test', 'train'\]; add \?split="):
        list_split(ref, DataConfig(train=ref))
    dcfg = DataConfig(train=f"{ref}?split=train", test=f"{ref}?split=test")
    assert detect_format(dcfg.train) == "parquet"
    index, classes = list_split(dcfg.train, dcfg)
    assert classes == ["cat", "dog"] and index.column("label").to_pylist() == [0, 1, 0, 1, 0, 1]
    assert index.column("id").to_pylist() == [f"train-00000-of-00001.parquet:{i}" for i in range(6)]
    arr = load_arrays(index, "image", 8)
    assert len(arr["labels"]) + arr["n_skipped"] == 6 and arr["n_skipped"] == 1
    assert [int(im[0, 0, 0]) for im in arr["images"]] == [0, 10, 30, 40, 50]
    test, _ = list_split(dcfg.test, dcfg)
    assert test.num_rows == 4
    with pytest.raises(FormatError, match="cannot get the dataset"):
        list_split("hf://datasets/someone/absent", DataConfig(train="hf://datasets/someone/absent"))


def test_read_split_through_ray(ray_session, tmp_path, hf_home):
    """The encode stage's reader (Ray Data blocks in workers) gives the same accounting for all three."""
    wds = make_webdataset(tmp_path / "wds")
    cifar = make_cifar10(tmp_path / "cifar-10-batches-py")
    hf = make_hf_cache(hf_home) + "?split=train"
    for src, n, skipped in ((str(wds), 6, 1), (str(cifar), 20, 1), (hf, 6, 1)):
        index, _ = list_split(src, DataConfig(train=src))
        rows = read_split(index, "image", rows_per_block=4).take_all()
        batch = decode_batch({"id": [r["id"] for r in rows], "label": np.array([r["label"] for r in rows]),
                              "bytes": [r["bytes"] for r in rows]}, 8)
        assert len(rows) == n and int((~batch["ok"]).sum()) == skipped, src
        assert sorted(r["id"] for r in rows) == sorted(index.column("id").to_pylist())
