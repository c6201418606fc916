"""Export (ddoq_ray.export) and loader (ddoq_ray.DistilledDataset): each format reads back with the manifest's
weights through the reader the field uses; the loader trains a student. A small fake run directory (a committed
decode stage, real precomputed soft labels, results.json) stands in for a finished run."""

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from ddoq_ray.config import dump_config, load_config
from ddoq_ray.export import ExportError, export, hf_features, read_export
from ddoq_ray.rundir import stage_path, stage_writer
from ddoq_ray.students.weights import sample_weights

CLASSES = ["airplane", "cat", "ship"]
COUNTS = [40, 25, 15, 12, 8]  # cell sizes of the 5 centroids of every class (100 real images per class)


def _png(rgb, rng) -> bytes:
    px = np.clip(np.asarray(rgb)[None, None, :] + rng.normal(0, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(px).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    from torch import nn

    from ddoq_ray.students.labels import precompute_soft_labels

    out = tmp_path_factory.mktemp("run")
    cfg = load_config("configs/smoke.yaml", [f"output_dir={out}", "train.label_mode=precomputed",
                                             "train.epochs=2", "train.seeds=[0]"])
    (out / "config.yaml").write_text(dump_config(cfg))
    (out / "classes.json").write_text(json.dumps(CLASSES))
    rng = np.random.default_rng(0)
    rows = []
    with stage_writer(str(out), "decode", "fp-decode") as (att, summary):
        for label, name in enumerate(CLASSES):
            for k, count in enumerate(COUNTS):
                path = f"{name}/{label}_{k}.png"
                (out / "decode" / att.rsplit("/", 1)[1] / "synthetic" / name).mkdir(parents=True, exist_ok=True)
                (out / "decode" / att.rsplit("/", 1)[1] / "synthetic" / path).write_bytes(
                    _png([(255, 0, 0), (0, 255, 0), (0, 0, 255)][label], rng))
                rows.append({"path": path, "label": label, "class_name": name, "k": k, "copy": 0, "count": count,
                             "mass": count / 100, "weight_mass": count / 100, "mode": "vae", "model": "taesd",
                             "algorithm": "minibatch"})
        pq.write_table(pa.Table.from_pylist(rows), f"{att}/manifest.parquet")
        summary["images"] = len(rows)
    from ddoq_ray.artifacts.synthetic import load_synthetic

    syn = load_synthetic(stage_path(str(out), "decode"), 32)
    with stage_writer(str(out), "train", "fp-train") as (att, summary):
        torch.manual_seed(0)
        teacher = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 3)).eval()
        precompute_soft_labels(syn["images"], teacher, cfg.train, 0, 3, f"{att}/labels/ddoq-seed0")
    w2 = [{"label": c, "w2_mass": 10.0 + c, "w2_uniform": 10.5 + c} for c in range(3)]
    (out / "results.json").write_text(json.dumps({
        "w2_per_class": w2, "teacher": {"top1": 0.9},
        "methods": {"ddoq": {"top1_mean": 0.5, "top1_std": 0.01, "top1": [0.5]},
                    "d4m": {"top1_mean": 0.45, "top1_std": 0.02, "top1": [0.45]}}}))
    want = sample_weights(np.repeat(np.arange(3), 5), np.tile(np.array(COUNTS) / 100, 3), "mass")
    return cfg, out, rows, want


def test_hf_export_reads_back_with_weights_and_classlabel(fake_run, tmp_path):
    _, run, rows, want = fake_run
    res = export(str(run), str(tmp_path / "hf"), "hf")
    assert res["images"] == 15 and res["soft_label_seeds"] == [0]
    files = sorted((tmp_path / "hf" / "data").glob("*.parquet"))
    t = pq.read_table(files[0])
    assert t.column_names == ["image", "label", "weight", "class_name", "cell_size", "k", "method"]
    assert t.column("weight").to_numpy().tolist() == want.tolist()  # exactly the students' weights
    assert t.column("cell_size").to_pylist() == COUNTS * 3 and set(t.column("method").to_pylist()) == {"ddoq"}
    assert t.column("image")[0]["bytes"].as_py() == (
        run / "decode" / stage_path(str(run), "decode").rsplit("/", 1)[1] / "synthetic" / rows[0]["path"]
    ).read_bytes()
    feats = hf_features(str(files[0]))
    assert feats["label"] == {"names": CLASSES, "_type": "ClassLabel"} and feats["image"] == {"_type": "Image"}
    try:
        import datasets
    except ImportError:  # not installed here: the pyarrow checks above stand in for it
        datasets = None
    if datasets is not None:
        ds = datasets.load_dataset("parquet", data_dir=str(tmp_path / "hf" / "data"), split="train")
        assert ds.features["label"].names == CLASSES and ds["weight"] == pytest.approx(want.tolist())
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "mean latent W2 to the class's real latents: 11.0000" in card  # mean of w2_mass 10, 11, 12
    assert "50.00 ± 1.00 % (n=1 seeds)" in card and "path: data/train-00000-of-00001.parquet" in card
    assert "licence: CIFAR-10/100" in card and "## Soft labels" in card and "weight_scheme mass" in card


def test_soft_labels_are_copied_unchanged(fake_run, tmp_path):
    _, run, _, _ = fake_run
    export(str(run), str(tmp_path / "e"), "hf")
    src = run / "train" / stage_path(str(run), "train").rsplit("/", 1)[1] / "labels" / "ddoq-seed0"
    dst = tmp_path / "e" / "soft_labels" / "seed0"
    assert sorted(p.name for p in dst.iterdir()) == sorted(p.name for p in src.iterdir()) == [
        "epoch_00000.parquet", "epoch_00001.parquet", "meta.json"]
    assert pq.read_table(dst / "epoch_00001.parquet").equals(pq.read_table(src / "epoch_00001.parquet"))
    assert json.loads((dst / "meta.json").read_text())["n_train"] == 15


def test_imagefolder_export_reads_through_torchvision(fake_run, tmp_path):
    from torchvision.datasets import ImageFolder

    _, run, rows, want = fake_run
    export(str(run), str(tmp_path / "if"), "imagefolder", "d4m")
    tv = ImageFolder(str(tmp_path / "if"))
    assert tv.classes == CLASSES and len(tv) == 15
    meta = {json.loads(s)["file_name"]: json.loads(s) for s in (tmp_path / "if" / "metadata.jsonl").read_text()
            .splitlines()}
    for path, target in tv.samples:
        rel = path.split(str(tmp_path / "if") + "/")[1]
        assert meta[rel]["label"] == target and meta[rel]["weight"] == 1.0  # d4m: uniform
    assert [meta[r["path"]]["cell_size"] for r in rows] == [r["count"] for r in rows]


def test_webdataset_export_reads_through_ray_data(ray_session, fake_run, tmp_path):
    import ray

    _, run, _, want = fake_run
    export(str(run), str(tmp_path / "wds"), "webdataset")
    got = sorted(ray.data.read_webdataset(str(tmp_path / "wds"), decoder=None,
                                                file_extensions=["tar"]).take_all(), key=lambda r: r["__key__"])
    assert len(got) == 15 and got[0]["__key__"] == "00000_00000"
    weights = [json.loads(r["json"])["weight"] for r in got]
    assert np.array_equal(np.array(weights, np.float32), want)
    assert [int(r["cls"]) for r in got] == [c for c in range(3) for _ in range(5)]
    table, meta = read_export(str(tmp_path / "wds"))
    assert meta["method"] == "ddoq" and table.column("weight").to_numpy().tolist() == want.tolist()


def test_export_errors_say_what_to_do(fake_run, tmp_path):
    _, run, _, _ = fake_run
    with pytest.raises(ExportError, match="--format 'zip'"):
        export(str(run), str(tmp_path / "x"), "zip")
    with pytest.raises(ExportError, match="random baseline"):
        export(str(run), str(tmp_path / "x"), "hf", "random")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.yaml").write_text((run / "config.yaml").read_text())
    with pytest.raises(ExportError, match="decode stage is not complete"):
        export(str(tmp_path / "empty"), str(tmp_path / "x"))


def test_distilled_dataset_and_sampler_train_a_student(fake_run, tmp_path):
    from ddoq_ray import DistilledDataset, weighted_sampler
    from ddoq_ray.export import main_export
    from ddoq_ray.students.models import build_model

    _, run, _, want = fake_run
    assert main_export([str(run), str(tmp_path / "hf"), "--format", "hf"]) == 0
    ds = DistilledDataset(str(run))
    from_export = DistilledDataset(str(tmp_path / "hf"))
    assert len(ds) == 15 and ds.classes == CLASSES and ds.image_size == 32
    assert torch.equal(ds.weights, torch.from_numpy(want)) and torch.equal(ds.weights, from_export.weights)
    assert np.array_equal(ds.images, from_export.images) and torch.equal(ds.labels, from_export.labels)
    x, y, w = ds[3]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert (y, w) == (0, pytest.approx(float(want[3])))
    plain = DistilledDataset(str(run), train=False)[3][0]
    assert torch.equal(plain, torch.from_numpy(ds.images[3]).permute(2, 0, 1).float() / 255)

    sampler = weighted_sampler(ds, num_samples=30000, generator=torch.Generator().manual_seed(0))
    freq = np.bincount(list(sampler), minlength=15) / 30000
    assert np.allclose(freq, want / want.sum(), atol=0.01)

    torch.manual_seed(0)
    model = build_model("convnet3", 3, 32)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    loader = torch.utils.data.DataLoader(ds, batch_size=15, shuffle=True, generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(8):
        for xb, yb, wb in loader:
            loss = (wb * torch.nn.functional.cross_entropy(model(xb), yb, reduction="none")).sum() / wb.sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    assert np.mean(losses[-2:]) < 0.5 * np.mean(losses[:2]), losses
