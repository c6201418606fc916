"""Class lists across splits: test labels matched to the train split by class name (ImageFolder, Parquet with and
without its own classes.json), and class names from Hugging Face ``ClassLabel`` Parquet metadata."""

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ddoq_ray.config import DataConfig
from ddoq_ray.data import DataError, list_split, load_classes


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (value, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def _folder(root, classes, per_class=2):
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            (root / c / f"{i}.png").write_bytes(_png(i))
    return str(root)


def _parquet(path, labels, names=None, hf_names=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = pa.table({"image": [_png(i) for i in range(len(labels))], "label": pa.array(labels, pa.int64()),
                  "filename": [f"{i}.png" for i in range(len(labels))]})
    if hf_names is not None:  # what HF datasets' to_parquet writes
        feats = {"image": {"_type": "Image"}, "label": {"names": hf_names, "_type": "ClassLabel"}}
        t = t.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": feats}})})
    pq.write_table(t, path)
    if names is not None:
        (path.parent / "classes.json").write_text(json.dumps(names))
    return str(path)


def _labels_by_class(index, classes):
    """{class name: sorted ids} from an index, via its labels."""
    out = {}
    for i, lab in zip(index.column("id").to_pylist(), index.column("label").to_pylist(), strict=True):
        out.setdefault(classes[lab], []).append(i)
    return out


def test_imagefolder_test_with_a_missing_class_keeps_train_labels(tmp_path):
    train = _folder(tmp_path / "train", ["ant", "bee", "cat"])
    test = _folder(tmp_path / "test", ["ant", "cat"])  # "bee" missing: on main "cat" became label 1
    dcfg = DataConfig(train=train, test=test, class_subset=[0, 2])
    index, classes = list_split(test, dcfg, train=train)
    assert classes == ["ant", "cat"]
    assert index.column("orig_label").to_pylist() == [0, 0, 2, 2]
    assert index.column("label").to_pylist() == [0, 0, 1, 1]
    assert index.column("id").to_pylist() == ["ant/0.png", "ant/1.png", "cat/0.png", "cat/1.png"]
    with pytest.raises(DataError, match=r"train classes missing from this split .*'bee' \(label 1\)") as e:
        list_split(test, DataConfig(train=train, test=test), train=train)
    assert test in str(e.value)


def test_imagefolder_test_with_an_extra_class_is_named(tmp_path):
    train = _folder(tmp_path / "train", ["ant", "cat"])
    test = _folder(tmp_path / "test", ["ant", "bee", "cat"])
    with pytest.raises(DataError, match=r"classes \['bee'\] are not classes of the train split") as e:
        list_split(test, DataConfig(train=train, test=test), train=train)
    assert str(e.value).startswith(test) and train in str(e.value)


def test_imagefolder_test_against_named_parquet_train(tmp_path):
    train = _parquet(tmp_path / "tr" / "train.parquet", [0, 1, 2], names=["ant", "bee", "cat"])
    test = _folder(tmp_path / "test", ["bee", "cat"], per_class=1)
    index, classes = list_split(test, DataConfig(train=train, test=test, class_subset=[1, 2]), train=train)
    assert classes == ["bee", "cat"] and index.column("label").to_pylist() == [0, 1]
    assert index.column("orig_label").to_pylist() == [1, 2]


def test_parquet_test_with_its_own_classes_json_is_matched_by_name(tmp_path):
    train = _parquet(tmp_path / "tr" / "train.parquet", [0, 1, 2], names=["ant", "bee", "cat"])
    test = _parquet(tmp_path / "te" / "test.parquet", [0, 1, 2, 0], names=["cat", "ant", "bee"])
    index, classes = list_split(test, DataConfig(train=train, test=test), train=train)
    assert classes == ["ant", "bee", "cat"]
    assert index.column("orig_label").to_pylist() == [2, 0, 1, 2]  # test's "cat" (0) is train label 2
    assert _labels_by_class(index, classes) == {"cat": ["0.png", "3.png"], "ant": ["1.png"], "bee": ["2.png"]}
    (tmp_path / "te" / "classes.json").write_text(json.dumps(["ant", "bee", "dog"]))
    with pytest.raises(DataError, match=r"classes \['dog'\] are not classes of the train split"):
        list_split(test, DataConfig(train=train, test=test), train=train)


def test_parquet_test_without_names_keeps_its_label_numbers(tmp_path):
    train = _parquet(tmp_path / "tr" / "train.parquet", [0, 1, 2], names=["ant", "bee", "cat"])
    test = _parquet(tmp_path / "te" / "test.parquet", [2, 0, 1])  # no classes.json: labels are train labels
    index, classes = list_split(test, DataConfig(train=train, test=test), train=train)
    assert classes == ["ant", "bee", "cat"] and index.column("label").to_pylist() == [2, 0, 1]
    bad = _parquet(tmp_path / "bad" / "test.parquet", [0, 1, 2, 3])
    with pytest.raises(DataError, match="labels up to 3 but the train split .* has 3 classes"):
        list_split(bad, DataConfig(train=train, test=bad), train=train)
    unnamed = _parquet(tmp_path / "tr2" / "train.parquet", [0, 1, 2, 1])  # neither split named: by number
    index, classes = list_split(test, DataConfig(train=unnamed, test=test), train=unnamed)
    assert classes == ["0", "1", "2"] and index.column("label").to_pylist() == [2, 0, 1]


def test_hf_classlabel_metadata_names_the_classes(tmp_path):
    names = ["airplane", "automobile", "bird"]
    p = _parquet(tmp_path / "hf" / "train.parquet", [2, 0, 1], hf_names=names)
    assert load_classes(DataConfig(train=p), p) == names
    index, classes = list_split(p, DataConfig(train=p, class_subset=[2]))
    assert classes == ["bird"] and index.column("id").to_pylist() == ["0.png"]
    assert load_classes(DataConfig(train=p, label_column="other"), p) is None  # names of another column only
    plain = _parquet(tmp_path / "plain" / "train.parquet", [0, 1])
    assert load_classes(DataConfig(train=plain), plain) is None
    assert list_split(plain, DataConfig(train=plain))[1] == ["0", "1"]
