"""Export a finished run's distilled set for other training code: HF Parquet, ImageFolder or WebDataset.

:func:`export` reads the decode stage's manifest and PNGs (through :func:`ddoq_ray.rundir.stage_path`) and the
per-image weights exactly as the students got them (:func:`ddoq_ray.students.weights.sample_weights` with the run's
``train.weight_*`` settings for the ``mass`` methods, uniform for the ``uniform`` ones; the same call as
``evaluate.method_set``) of one decoded method (:data:`METHODS`: its clustering's images), and writes one row per
synthetic image, in manifest order, with the columns

    image (PNG bytes) | label int64 (the run's class index, classes.json) | weight float32 | class_name string
    cell_size int64 (real images in the centroid's Voronoi cell) | k int32 (centroid index in its class)
    method string (a decoded method preset: ddoq, d4m, lloyd_mass, ...)

Layouts (``out`` is a local folder or URI):

- ``hf``: ``data/train-00000-of-00001.parquet`` with ``image`` as the HF ``Image`` struct ``{bytes, path}`` and the
  ``huggingface`` schema metadata (``label`` a ``ClassLabel`` with the class names), and a README.md whose YAML
  header declares the config, so ``datasets.load_dataset("parquet", data_dir=out)`` and
  ``load_dataset(out)`` read it; ``huggingface_hub.upload_folder(repo_id=..., folder_path=out,
  repo_type="dataset")`` publishes it (https://huggingface.co/docs/datasets/image_dataset#parquet).
- ``imagefolder``: ``<class name>/<label>_<k>.png`` plus ``metadata.jsonl`` (``file_name`` and the other columns:
  the HF ImageFolder metadata convention). ``torchvision.datasets.ImageFolder`` indexes classes by sorted folder
  name; ``metadata.jsonl`` keeps the run's labels and the weights.
- ``webdataset``: ``distilled-000000.tar`` with ``<key>.png``, ``<key>.cls`` (label) and ``<key>.json`` (all other
  columns), key ``<label>_<k>``; ``ray.data.read_webdataset(out, file_extensions=["tar"])`` (the folder also holds
  the card) or ``webdataset.WebDataset`` read it.

Every layout also gets ``README.md`` (the dataset card: what it is, config, latent W2, student accuracy and
protocol from ``results.json``, source dataset and licence), ``ddoq_export.json`` (method, classes, protocol
settings read by :class:`ddoq_ray.loader.DistilledDataset`) and, when the run precomputed soft labels
(``train.label_mode: precomputed``), ``soft_labels/seed<s>/``: the train stage's label directories copied
unchanged (format: :mod:`ddoq_ray.students.labels`; their ``index`` column is the row of this export).
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from . import storage
from .artifacts.method_presets import METHODS as PRESETS
from .config import dump_config, load_config
from .errors import DdoqError
from .rundir import committed, stage_path

FORMATS = ("hf", "imagefolder", "webdataset")
METHODS = tuple(m.name for m in PRESETS.values() if m.images == "decoded")
EXPORT_META = "ddoq_export.json"
HF_FILE = "data/train-00000-of-00001.parquet"
WDS_FILE = "distilled-000000.tar"


class ExportError(DdoqError, ValueError):
    """The run cannot be exported as asked (stage missing, unknown format/method); the message says what to do."""


def default_method(cfg) -> str:
    """The method exported when none is named: the run's first decoded ``mass`` method, else its first decoded
    method, else ``ddoq``."""
    decoded = [m for m in cfg.train.methods if m in METHODS]
    mass = [m for m in decoded if PRESETS[m].weights == "mass"]
    return (mass or decoded or ["ddoq"])[0]


def require_decoded(run_dir: str) -> None:
    """Raises ExportError unless ``run_dir`` has a committed decode stage (checked before reading its config)."""
    if committed(run_dir, "decode") is None:
        raise ExportError(f"{run_dir}: the decode stage is not complete; run `ddoq-ray run` (or `ddoq-ray decode`) "
                          "first")


def distilled_table(run_dir: str, method: str | None = "ddoq") -> tuple[pa.Table, dict]:
    """The distilled set of a finished run as one table (columns in the module docstring) and its metadata.

    Args:
        run_dir: the run directory (local path or URI) with committed decode (and, for accuracy, train) stages.
        method: a decoded method (:data:`METHODS`; e.g. ``ddoq``: cell-mass weights per ``train.weight_scheme``,
            ``d4m``: uniform) whose clustering the run decoded; None: :func:`default_method`.
    Returns:
        ``(table, meta)``; ``meta`` holds ``method``, ``classes``, ``config`` (dict), ``protocol`` and
        ``results`` (``results.json`` or ``{}``).
    Raises:
        ExportError: unknown method, its clustering not decoded by this run, or no committed decode stage.
    """
    from .artifacts.methods import method_weights, weight_scheme
    from .artifacts.synthetic import read_manifest

    run_dir = storage.normalize(run_dir)
    require_decoded(run_dir)
    cfg = load_config(storage.join(run_dir, "config.yaml"))
    if method is None:
        method = default_method(cfg)
    if method not in METHODS:
        raise ExportError(f"--method {method!r}: export one of {', '.join(METHODS)} (the random baseline is a "
                          "subset of the real data)")
    decode = stage_path(run_dir, "decode")
    algorithm = PRESETS[method].algorithm
    rows = read_manifest(decode, algorithm).to_pylist()
    if not rows:
        raise ExportError(f"--method {method}: this run decoded no {algorithm} centroids; export one of its "
                          f"methods ({', '.join(m for m in cfg.train.methods if m in METHODS)}) or add {method} "
                          "to train.methods and re-run")
    labels = np.array([r["label"] for r in rows], dtype=np.int64)
    mass = np.array([r.get("weight_mass", r["mass"]) for r in rows], dtype=np.float64)
    t = cfg.train
    scheme = weight_scheme(method, t)
    weights = method_weights(method, labels, mass, t)  # the weights the students trained with
    root = storage.join(decode, "synthetic")
    table = pa.table({
        "image": pa.array([storage.read_bytes(storage.join(root, r["path"])) for r in rows], pa.binary()),
        "label": pa.array(labels, pa.int64()), "weight": pa.array(weights, pa.float32()),
        "class_name": pa.array([r["class_name"] for r in rows], pa.string()),
        "cell_size": pa.array([r["count"] for r in rows], pa.int64()),
        "k": pa.array([r["k"] for r in rows], pa.int32()),
        "method": pa.array([method] * len(rows), pa.string()),
    })
    results_loc = storage.join(run_dir, "results.json")
    results = storage.read_json(results_loc) if storage.is_file(results_loc) else {}
    classes = storage.read_json(storage.join(run_dir, "classes.json"))
    protocol = {"student": t.student, "epochs": t.epochs, "batch_size": t.batch_size, "image_size": t.image_size,
                "label_mode": t.label_mode, "weight_scheme": scheme, "weight_norm": t.weight_norm,
                "min_crop_scale": t.min_crop_scale, "mix": t.mix, "cutmix_prob": t.cutmix_prob,
                "teacher": t.teacher, "temperature": t.temperature}
    meta = {"method": method, "classes": classes, "ipc": cfg.quantize.ipc, "config": yaml.safe_load(dump_config(cfg)),
            "protocol": protocol, "results": results, "run_dir": run_dir, "source": cfg.data.train,
            "decode_mode": cfg.decode.mode, "paths": [r["path"] for r in rows]}
    return table, meta


def _hf_features(classes: list[str]) -> dict:
    """The ``huggingface`` schema metadata that `datasets` reads back as typed features."""
    def value(dtype):
        return {"dtype": dtype, "_type": "Value"}

    return {"info": {"features": {
        "image": {"_type": "Image"}, "label": {"names": classes, "_type": "ClassLabel"},
        "weight": value("float32"), "class_name": value("string"), "cell_size": value("int64"),
        "k": value("int32"), "method": value("string")}}}


def _write_hf(table: pa.Table, meta: dict, out: str) -> None:
    image = pa.StructArray.from_arrays(
        [table.column("image").combine_chunks(), pa.array([p.rsplit("/", 1)[-1] for p in meta["paths"]])],
        names=["bytes", "path"])
    t = table.set_column(0, "image", image)
    t = t.replace_schema_metadata({"huggingface": json.dumps(_hf_features(meta["classes"]))})
    storage.write_parquet(t, storage.join(out, HF_FILE))


def _write_imagefolder(table: pa.Table, meta: dict, out: str) -> None:
    lines = []
    for row, path, img in zip(table.drop_columns(["image"]).to_pylist(), meta["paths"],
                              table.column("image").to_pylist(), strict=True):
        storage.write_bytes(storage.join(out, path), img)
        lines.append(json.dumps({"file_name": path, **row}))
    storage.write_text(storage.join(out, "metadata.jsonl"), "\n".join(lines) + "\n")


def _write_webdataset(table: pa.Table, meta: dict, out: str) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for row, img in zip(table.drop_columns(["image"]).to_pylist(), table.column("image").to_pylist(),
                            strict=True):
            key = f"{row['label']:05d}_{row['k']:05d}"
            for ext, data in (("png", img), ("cls", str(row["label"]).encode()),
                              ("json", json.dumps(row).encode())):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    storage.write_bytes(storage.join(out, WDS_FILE), buf.getvalue())


def source_licence(source: str) -> str:
    """The source dataset's licence: the ``license:`` of an HF dataset's card, else a note to check it."""
    from . import formats

    if formats.is_hf(source):
        try:
            first = Path(formats.hf_files(source)[0])
            snapshot = next(p for p in first.parents if p.parent.name == "snapshots")
            text = (snapshot / "README.md").read_text(encoding="utf-8")
            head = yaml.safe_load(text.split("---", 2)[1]) if text.startswith("---") else None
            if isinstance(head, dict) and head.get("license"):
                return str(head["license"])
        except (DdoqError, OSError, StopIteration, yaml.YAMLError, IndexError):
            pass
    if "cifar" in source.lower():
        return "CIFAR-10/100 (Krizhevsky 2009): no explicit licence; see https://www.cs.toronto.edu/~kriz/cifar.html"
    return "unknown: check the licence of the source dataset before redistributing"


def dataset_card(meta: dict, fmt: str) -> str:
    """The README.md of an export: YAML header (HF dataset card metadata) and what, how and how well."""
    res, p, m = meta["results"], meta["protocol"], meta["method"]
    w2_key = "w2_mass" if m == "ddoq" else "w2_uniform"
    w2 = [r[w2_key] for r in res.get("w2_per_class", []) if w2_key in r]
    acc = (res.get("methods") or {}).get(m)
    head = {"license": "other", "task_categories": ["image-classification"], "tags": ["dataset-distillation", m],
            "pretty_name": f"{meta['config'].get('name', 'run')} {m} IPC {meta['ipc']}"}
    if fmt == "hf":
        head["configs"] = [{"config_name": "default", "data_files": [{"split": "train", "path": HF_FILE}]}]
    lines = ["---", yaml.safe_dump(head, sort_keys=False).strip(), "---", "",
             f"# {head['pretty_name']}", "",
             f"A distilled image-classification set: {meta['ipc']} synthetic images per class for "
             f"{len(meta['classes'])} classes, made by ddoq-ray with **{m}** "
             "(DDOQ, Tan & Slade, ICLR 2026, arXiv 2501.07681: per-class k-means of VAE latents, centroid weight = "
             "Voronoi cell mass; d4m = the same centroids with uniform weights). Images are decoded centroids "
             f"(decode mode `{meta['decode_mode']}`).", "",
             "Columns: `image`, `label` (class index), `weight` (per-image training weight, the weights the "
             "students were trained with), `class_name`, `cell_size` (real images in the centroid's cell), `k` "
             "(centroid index), `method`. Train with a weighted loss (`(w * ce).sum() / w.sum()`) or sample with "
             "`torch.utils.data.WeightedRandomSampler(weights)` (`ddoq_ray.weighted_sampler`).", "",
             "## Source dataset", "", f"- train split: `{meta['source']}`",
             f"- licence: {source_licence(meta['source'])}", "",
             f"- classes: {', '.join(meta['classes'][:20])}{' ...' if len(meta['classes']) > 20 else ''}", "",
             "## Quality", ""]
    if w2:
        lines.append(f"- mean latent W2 to the class's real latents: {np.mean(w2):.4f} (per class in results.json)")
    if acc:
        lines.append(f"- student top-1 on the real test split: {100 * acc['top1_mean']:.2f} ± "
                     f"{100 * acc['top1_std']:.2f} % (n={len(acc['top1'])} seeds)")
    if res.get("teacher"):
        lines.append(f"- teacher (full data) top-1: {100 * res['teacher']['top1']:.2f} %")
    lines += ["", "## Protocol", "", "Students: " + ", ".join(f"{k} {v}" for k, v in p.items()) + ".",
              "Per-sample RandomResizedCrop(scale=(min_crop_scale, 1)) + horizontal flip, then batch "
              "CutMix/Mixup with probability cutmix_prob (ddoq_ray.students).", ""]
    if meta.get("soft_labels"):
        lines += ["## Soft labels", "", "`soft_labels/seed<s>/`: precomputed teacher logits (fp16) with the crop, "
                  "flip and mix parameters of every step (FKD/SRe2L style): `meta.json` and one Parquet file per "
                  "epoch, columns epoch, step, pos, index (row of this dataset), crop_top/left/h/w, flip, mix, lam, "
                  "partner, box_y1/y2/x1/x2, logits. Replay with `ddoq_ray.students.labels.PrecomputedPlan`, or "
                  "read with pyarrow.", ""]
    lines += ["## Run config", "", "```yaml", yaml.safe_dump(meta["config"], sort_keys=False).strip(), "```", ""]
    return "\n".join(lines)


def _copy_tree(src: str, dst: str) -> int:
    n = 0
    for rel, _ in storage.walk_files(src):
        storage.write_bytes(storage.join(dst, rel), storage.read_bytes(storage.join(src, rel)))
        n += 1
    return n


def _soft_label_dirs(run_dir: str, method: str) -> dict[int, str]:
    """``{seed: label dir}`` of the train stage's precomputed soft labels for ``method`` (complete ones only)."""
    if committed(run_dir, "train") is None:
        return {}
    labels = storage.join(stage_path(run_dir, "train"), "labels")
    if not storage.is_dir(labels):
        return {}
    out = {}
    for name in storage.listdir(labels):
        base = storage.basename(name)
        if base.startswith(f"{method}-seed") and storage.is_file(storage.join(labels, base, "meta.json")):
            out[int(base.rsplit("seed", 1)[1])] = storage.join(labels, base)
    return dict(sorted(out.items()))


def export(run_dir: str, out: str, format: str = "hf", method: str | None = None) -> dict:  # noqa: A002 - the CLI name
    """Write a run's distilled set to ``out`` in ``format`` (see module docstring).

    Args:
        run_dir: a finished run directory (local path or URI). out: the export folder (created; local or URI).
        format: ``hf`` | ``imagefolder`` | ``webdataset``. method: ``ddoq`` | ``d4m``.
    Returns:
        ``{"out", "format", "method", "images", "soft_label_seeds"}``.
    Raises:
        ExportError: unknown format or method, or the run has no committed decode stage.
    """
    if format not in FORMATS:
        raise ExportError(f"--format {format!r}: use one of {', '.join(FORMATS)}")
    table, meta = distilled_table(run_dir, method)
    method = meta["method"]
    out = storage.normalize(out)
    storage.makedirs(out)
    {"hf": _write_hf, "imagefolder": _write_imagefolder, "webdataset": _write_webdataset}[format](table, meta, out)
    seeds = []
    for seed, d in _soft_label_dirs(meta["run_dir"], method).items():
        _copy_tree(d, storage.join(out, "soft_labels", f"seed{seed}"))
        seeds.append(seed)
    meta["soft_labels"] = seeds
    storage.write_text(storage.join(out, "README.md"), dataset_card(meta, format))
    storage.write_json(storage.join(out, EXPORT_META), {
        "format": format, "method": method, "classes": meta["classes"], "ipc": meta["ipc"],
        "protocol": meta["protocol"], "soft_label_seeds": seeds, "images": table.num_rows,
        "run_dir": meta["run_dir"]})
    return {"out": out, "format": format, "method": method, "images": table.num_rows, "soft_label_seeds": seeds}


def read_export(path: str) -> tuple[pa.Table, dict]:
    """Read an export back as the table of :func:`distilled_table` (``image`` as PNG bytes) and its
    ``ddoq_export.json``. Plain pyarrow / tarfile / json; no `datasets` or Ray needed.

    Raises:
        ExportError: ``path`` is not an export folder.
    """
    path = storage.normalize(path)
    meta_loc = storage.join(path, EXPORT_META)
    if not storage.is_file(meta_loc):
        raise ExportError(f"{path}: no {EXPORT_META}; not a `ddoq-ray export` folder (or pass a run directory)")
    meta = storage.read_json(meta_loc)
    fmt = meta["format"]
    if fmt == "hf":
        t = storage.read_parquet(storage.join(path, HF_FILE))
        t = t.set_column(0, "image", t.column("image").combine_chunks().field("bytes")).replace_schema_metadata(None)
        return t, meta
    if fmt == "imagefolder":
        rows = [json.loads(s) for s in storage.read_text(storage.join(path, "metadata.jsonl")).splitlines() if s]
        images = [storage.read_bytes(storage.join(path, r.pop("file_name"))) for r in rows]
    else:
        rows, images = [], []
        with storage.open_input(storage.join(path, WDS_FILE)) as f, tarfile.open(fileobj=f, mode="r:") as tf:
            for m in tf.getmembers():
                if m.name.endswith(".json"):
                    rows.append(json.loads(tf.extractfile(m).read()))
                elif m.name.endswith(".png"):
                    images.append(tf.extractfile(m).read())
    types = {"label": pa.int64(), "weight": pa.float32(), "class_name": pa.string(), "cell_size": pa.int64(),
             "k": pa.int32(), "method": pa.string()}
    cols = {"image": pa.array(images, pa.binary())}
    cols.update({c: pa.array([r[c] for r in rows], typ) for c, typ in types.items()})
    return pa.table(cols), meta


def main_export(argv: list[str] | None = None) -> int:
    """``ddoq-ray export RUN OUT --format hf|imagefolder|webdataset [--method ddoq]``; prints the result as JSON."""
    ap = argparse.ArgumentParser(prog="ddoq-ray export", description="Export a run's distilled set.")
    ap.add_argument("run", help="finished run directory (local path or URI)")
    ap.add_argument("out", nargs="?", help="export folder (default: <run>/export/<method>-<format>)")
    ap.add_argument("--format", choices=FORMATS, default="hf")
    ap.add_argument("--method", choices=METHODS, default=None,
                    help="a decoded method of the run (default: its first decoded mass method)")
    a = ap.parse_args(argv)
    require_decoded(storage.normalize(a.run))
    method = a.method or default_method(load_config(storage.join(storage.normalize(a.run), "config.yaml")))
    out = a.out or storage.join(a.run, "export", f"{method}-{a.format}")
    print(json.dumps(export(a.run, out, a.format, method)))
    return 0


def hf_features(path: str) -> dict:
    """The HF features stored in an ``hf`` export's Parquet file (``huggingface`` schema metadata)."""
    return json.loads(pq.read_schema(path).metadata[b"huggingface"])["info"]["features"]
