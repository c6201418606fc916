"""Ingest core: decoding any image mode, split indexes for Parquet and ImageFolder, clear errors."""

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import CIFAR_TRAIN
from PIL import Image

from ddoq_ray.config import DataConfig
from ddoq_ray.data import DataError, list_split, load_arrays
from ddoq_ray.images import ImageDecodeError, decode_batch, decode_image


def png(mode="RGB", size=(40, 30), color=(200, 10, 10)):
    buf = io.BytesIO()
    Image.new(mode, size, color if mode in ("RGB", "RGBA") else 128).save(buf, format="PNG")
    return buf.getvalue()


def test_decode_resizes_and_center_crops():
    x = decode_image(png(size=(40, 30)), 16)
    assert x.shape == (16, 16, 3) and x.dtype == np.uint8
    assert tuple(x[8, 8]) == (200, 10, 10)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16"])
def test_any_mode_becomes_rgb(mode):
    buf = io.BytesIO()
    im = Image.new(mode, (8, 8))
    im.save(buf, format="TIFF" if mode == "CMYK" else "PNG")
    assert decode_image(buf.getvalue(), 8).shape == (8, 8, 3)


@pytest.mark.parametrize("data, reason", [(b"", "empty file"), (b"not an image", "cannot decode"),
                                          (png()[:40], "cannot decode")])
def test_bad_bytes_raise_with_reason(data, reason):
    with pytest.raises(ImageDecodeError, match=reason):
        decode_image(data, 8)


def test_decode_batch_counts_failures_instead_of_dropping():
    out = decode_batch({"id": np.array(["a", "b", "c"], dtype=object), "label": np.array([0, 1, 2]),
                        "bytes": [png(), b"junk", None]}, 8)
    assert out["image"].shape == (3, 8, 8, 3) and out["ok"].tolist() == [True, False, False]
    assert out["error"][1].startswith("cannot decode") and out["error"][2].startswith("missing image")


def test_cifar_index_subset_remaps_labels():
    dcfg = DataConfig(train=str(CIFAR_TRAIN), class_subset=[3, 8], max_per_class=7)
    index, classes = list_split(str(CIFAR_TRAIN), dcfg, dcfg.max_per_class)
    assert classes == ["cat", "ship"] and index.num_rows == 14
    assert sorted(set(index.column("label").to_pylist())) == [0, 1]
    assert set(index.column("orig_label").to_pylist()) == {3, 8}
    assert index.column("id")[0].as_py() == "cat/0000.jpg"
    arr = load_arrays(index, "image", 32)
    assert arr["images"].shape == (14, 32, 32, 3) and arr["n_skipped"] == 0


def test_imagefolder_index(tmp_path):
    for c in ("b_cls", "a cls"):
        (tmp_path / c / "sub").mkdir(parents=True)
        (tmp_path / c / "1.png").write_bytes(png())
        (tmp_path / c / "sub" / "2.PNG").write_bytes(png())
    (tmp_path / "a cls" / "notes.txt").write_text("stray file")
    dcfg = DataConfig(train=str(tmp_path))
    index, classes = list_split(str(tmp_path), dcfg)
    assert classes == ["a cls", "b_cls"] and index.num_rows == 4
    assert index.column("id").to_pylist()[0] == "a cls/1.png"
    assert load_arrays(index, "image", 8)["labels"].tolist() == [0, 0, 1, 1]


def test_parquet_errors_name_file_and_field(tmp_path):
    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"img": [png()], "label": [0]}), p)
    with pytest.raises(DataError, match="no column 'image'"):
        list_split(str(p), DataConfig(train=str(p)))
    pq.write_table(pa.table({"image": [png(), png()], "label": [0, None]}), p)
    with pytest.raises(DataError, match="null 'label'"):
        list_split(str(p), DataConfig(train=str(p)))
    pq.write_table(pa.table({"image": [png(), png()], "label": [0, 5], "id": ["x", "x"]}), p)
    (tmp_path / "classes.json").write_text(json.dumps(["a", "b"]))
    with pytest.raises(DataError, match="labels span"):
        list_split(str(p), DataConfig(train=str(p)))
    pq.write_table(pa.table({"image": [png(), png()], "label": [0, 1], "id": ["x", "x"]}), p)
    with pytest.raises(DataError, match="duplicate ids"):
        list_split(str(p), DataConfig(train=str(p)))
