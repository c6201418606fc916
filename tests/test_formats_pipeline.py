"""Each new input format end to end: the smoke pipeline (ddoq_ray.pipeline.run_all, tiny sizes) on a WebDataset,
a CIFAR python-batch folder and an HF-cache dataset, with exact accounting (input = encoded + skipped, the corrupt
image counted and named). One Ray session for the module (conftest's ray_session); students in Ray Train local mode."""

import json

from test_formats import hf_home, make_cifar10, make_hf_cache, make_webdataset  # noqa: F401 - hf_home: a fixture

from ddoq_ray.config import load_config
from ddoq_ray.pipeline import run_all

TINY = ["data.max_per_class=12", "data.max_test_per_class=12", "quantize.ipc=2", "train.epochs=1",
        "train.seeds=[0]", "metrics.enabled=false", "train.label_mode=hard", "train.teacher=null",
        "train.teacher_arch=resnet20_cifar", "train.teacher_epochs=1", "train.num_workers=0",
        "encode.batch_size=8", "data.class_subset=null"]


def _run(tmp_path, train, test, *sets):
    cfg = load_config("configs/smoke.yaml", [f"output_dir={tmp_path / 'run'}", f"data.train={train}",
                                             f"data.test={test}", *TINY, *sets])
    res = run_all(cfg)
    assert json.loads((tmp_path / "run" / "results.json").read_text())["stages"]["encode"] == res["stages"]["encode"]
    assert set(res["methods"]) == {"random", "d4m", "ddoq"} and (tmp_path / "run" / "report.html").is_file()
    return res


def test_webdataset_end_to_end(ray_session, tmp_path):
    root = make_webdataset(tmp_path / "wds")  # 6 samples, cat/dog, sample004 (a cat) corrupt
    res = _run(tmp_path, root, root)
    enc = res["stages"]["encode"]
    assert (enc["input"], enc["encoded"], enc["skipped"]) == (6, 5, 1)
    assert enc["encoded_per_class"] == {"0": 2, "1": 3} and res["classes"] == ["cat", "dog"]
    assert [r["id"] for r in enc["skipped_rows"]] == ["shard-00001.tar/sample004"]


def test_cifar_python_batches_end_to_end(ray_session, tmp_path):
    root = make_cifar10(tmp_path / "cifar-10-batches-py", rows_per_batch=6)  # 30 rows; data_batch_2 row 1 damaged
    res = _run(tmp_path, root, root / "test_batch", "data.class_subset=[0, 1]")
    enc = res["stages"]["encode"]
    # labels (batch + row) % 3: classes 0 and 1 keep 10 rows each; the damaged row (label 0) is one of them
    assert (enc["input"], enc["encoded"], enc["skipped"]) == (20, 19, 1)
    assert enc["encoded_per_class"] == {"0": 9, "1": 10}
    assert [r["id"] for r in enc["skipped_rows"]] == ["data_batch_2:1"]


def test_hf_cache_dataset_end_to_end(ray_session, tmp_path, hf_home):  # noqa: F811
    ref = make_hf_cache(hf_home)  # train: 6 rows cat/dog, row 2 (a cat) not an image; test: 4 rows
    res = _run(tmp_path, f"{ref}?split=train", f"{ref}?split=test")
    enc = res["stages"]["encode"]
    assert (enc["input"], enc["encoded"], enc["skipped"]) == (6, 5, 1)
    assert enc["encoded_per_class"] == {"0": 2, "1": 3}
    assert [r["id"] for r in enc["skipped_rows"]] == ["train-00000-of-00001.parquet:2"]
