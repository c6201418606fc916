"""Ingest: labelled images from HF-style Parquet or ImageFolder trees.

Pure core (no Ray): :func:`list_split` builds a cheap index ``(id, label, file, row)`` of a split
(:mod:`ddoq_ray.index_file` writes it to disk instead, file by file, for the driver),
:func:`load_arrays` decodes a selection into memory (test split, random baseline) with
:func:`ddoq_ray.images.decode_batch`. Ray layer (:mod:`ddoq_ray.data_ray`): :func:`read_split` streams a split as a
Ray Dataset with columns ``id`` (string), ``label`` (int64, remapped to 0..C-1), ``bytes`` (encoded image).

Supported inputs
- Parquet (file, folder of files, or URI): a binary/struct ``image`` column (raw bytes, or HF ``{"bytes": ...}``),
  an integer ``label`` column, and optionally ``id``/``filename`` for stable row ids.
- ImageFolder: ``root/<class name>/**/*.{jpg,jpeg,png,bmp,webp,gif}``; classes = sorted folder names
  (:mod:`ddoq_ray.folders`).
- WebDataset shards, CIFAR-10/100 python batches, ``hf://datasets/<owner>/<name>`` and string labels:
  :mod:`ddoq_ray.formats` (dispatched from :func:`detect_format`, :func:`list_split` and :func:`read_bytes`).
Class names (:func:`load_classes`): ``data.classes``, else ImageFolder folder names, else ``classes.json`` beside
the split, else the Hugging Face ``ClassLabel`` names in the Parquet schema metadata, else none (labels only).
A test split (``list_split(..., train=...)``) is matched to the train split by class name, so its labels are the
train split's indices even when a class folder is missing, extra or ordered differently.
Row ids default to the ``filename`` column (Parquet) or the path relative to the root (ImageFolder); without
either, ``<file name>:<row>`` is used.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import folders, formats, storage
from .config import DataConfig
from .errors import DataError
from .id_checks import duplicate_ids
from .images import decode_batch
from .parquet_rows import read_parquet_rows

log = logging.getLogger("ddoq_ray")


def detect_format(source: str, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    if formats.is_hf(source):  # hf://datasets/...: Parquet unless the snapshot holds WebDataset shards
        return formats.detect(source) or "parquet"
    if storage.is_uri(source):
        if source.split("?", 1)[0].endswith(".parquet"):
            return "parquet"
        if source.split("?", 1)[0].endswith(formats.TAR_SUFFIXES):
            return "webdataset"
        if not storage.exists(source):
            raise DataError(f"{source}: not found")
        if storage.is_file(source) or any(r.endswith(".parquet") for r, _ in folders.walk_uri(source)):
            return "parquet"
        return "imagefolder"
    p = Path(source)
    if p.suffix == ".parquet" or (p.is_dir() and any(p.glob("*.parquet"))):
        return "parquet"
    other = formats.detect(source)  # WebDataset shards, CIFAR python batches
    if other:
        return other
    if p.is_dir():
        return "imagefolder"
    raise DataError(f"{source}: not a Parquet file/folder or an ImageFolder root (set data.format explicitly)")


def parquet_files(source: str) -> list[str]:
    """The Parquet files of a split (locations: local paths or URIs), sorted."""
    if formats.is_hf(source):
        return formats.hf_files(source)
    if storage.is_uri(source):
        if storage.is_file(source):
            return [source]
        files = [storage.join(source, r) for r, _ in folders.walk_uri(source) if r.endswith(".parquet")]
        if not files:
            raise DataError(f"{source}: no *.parquet files (or the location does not exist)")
        return files
    p = Path(source)
    if p.is_dir():
        files = sorted(str(f) for f in p.rglob("*.parquet"))
        if not files:
            raise DataError(f"{source}: folder has no *.parquet files")
        return files
    if not p.exists():
        raise DataError(f"{source}: file not found")
    return [source]


def _hf_class_names(source: str, label_column: str) -> list[str] | None:
    """``ClassLabel`` names of ``label_column`` from the ``huggingface`` schema metadata that the HF ``datasets``
    library writes into Parquet files (``{"info": {"features": {<col>: {"_type": "ClassLabel", "names": [...]}}}}``,
    datasets ``Features.to_dict``); None when absent."""
    try:
        fs, path = storage.resolve(parquet_files(source)[0], field="data")
        meta = pq.read_schema(path, filesystem=fs).metadata or {}
    except (DataError, OSError, pa.ArrowException):  # not there (yet): list_split reports it with its columns
        return None
    if b"huggingface" not in meta:
        return None
    try:
        feature = json.loads(meta[b"huggingface"])["info"]["features"][label_column]
    except (json.JSONDecodeError, KeyError, TypeError):
        return None
    names = feature.get("names") if isinstance(feature, dict) and feature.get("_type") == "ClassLabel" else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None
    return names


def load_classes(dcfg: DataConfig, source: str) -> list[str] | None:
    """Class names (index = label) of a split, or None when it only has label numbers.

    In order: ``data.classes`` (a list, or a JSON file), ImageFolder folder names, ``classes.json`` beside the split
    (a list, ``{"0": name}`` or ``{name: 0}``), the Hugging Face ``ClassLabel`` names in the Parquet schema metadata
    of ``data.label_column``. ``source`` and a ``data.classes`` file may be local paths or URIs.

    Raises:
        DataError: a class-names file that cannot be read or is not a list of strings.
    """
    if isinstance(dcfg.classes, list):
        return list(dcfg.classes)
    path = dcfg.classes if isinstance(dcfg.classes, str) else None
    if path is None and detect_format(source, dcfg.format) == "cifar":
        return formats.cifar_classes(source, dcfg.label_column)
    source = formats.local_source(source)
    if path is None:
        if detect_format(source, dcfg.format) == "imagefolder":
            return folders.uri_class_folders(source) if storage.is_uri(source) else folders.class_folders(Path(source))
        if storage.is_uri(source):
            guess = storage.join(source if storage.is_dir(source) else storage.parent(source), "classes.json")
        else:
            src = Path(source)
            guess = str((src if src.is_dir() else src.parent) / "classes.json")
        path = guess if storage.is_file(guess) else None
    if path is None:
        return _hf_class_names(source, dcfg.label_column)
    try:
        names = storage.read_json(path)
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: cannot read class names ({e}); expected a JSON list of strings") from e
    if isinstance(names, dict):  # {"0": "airplane", ...} or {"airplane": 0, ...}
        if all(isinstance(v, int) for v in names.values()):
            names = [k for k, _ in sorted(names.items(), key=lambda kv: kv[1])]
        else:
            names = [names[k] for k in sorted(names, key=int)]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DataError(f"{path}: expected a JSON list of class names")
    return names


def split_classes(source: str, dcfg: DataConfig) -> list[str]:
    """All class names of a split in label order (before ``class_subset``): :func:`load_classes`, or ``"0"``,
    ``"1"``, ... up to the largest label of a Parquet split without names."""
    classes = load_classes(dcfg, source)
    if classes is not None:
        return classes
    fmt = detect_format(source, dcfg.format)
    if fmt in ("webdataset", "cifar"):  # as list_split names them: sorted string labels, else 0..max
        index, names = formats.string_labels(formats.list_index(fmt, source, dcfg.label_column), None, source)
        return names or [str(i) for i in range(int(pc.max(index.column("orig_label")).as_py()) + 1)]
    top, names = -1, set()
    for f in parquet_files(source):
        fs, path = storage.resolve(f, field="data")
        labels = pq.read_table(path, filesystem=fs, columns=[dcfg.label_column]).column(dcfg.label_column)
        if pa.types.is_string(labels.type) or pa.types.is_large_string(labels.type):  # HF string labels
            names.update(str(v) for v in pc.unique(labels).to_pylist())
        else:
            top = max(top, pc.max(labels).as_py() if len(labels) else -1)
    return sorted(names) if names else [str(i) for i in range(int(top) + 1)]


def to_train_labels(orig: np.ndarray, classes: list[str], named: bool, train_classes: list[str], source: str,
                    train: str) -> np.ndarray:
    """A test split's labels as the train split's label indices, matched by class name.

    Args:
        orig: int64 ``[n]`` labels in the split's own class order (index into ``classes``).
        classes: the split's own class names; ``named``: whether they are real names (False: the split has labels
            only, which are then taken to be the train split's labels).
        train_classes: :func:`split_classes` of the train split at ``train``.
    Returns:
        int64 ``[n]`` labels indexing ``train_classes``.
    Raises:
        DataError: a test class whose name is not a train class (naming it and both locations), labels beyond the
            train classes, or duplicate train class names.
    """
    if not named:  # labels only: nothing to match by name, so the label numbers are the train split's
        if len(orig) and orig.max() >= len(train_classes):
            raise DataError(f"{source}: labels up to {orig.max()} but the train split {train} has "
                            f"{len(train_classes)} classes; give this split its own classes.json (names), or fix "
                            "its labels")
        return orig
    if classes == train_classes:
        return orig
    extra = [c for c in classes if c not in train_classes]
    if extra:
        raise DataError(f"{source}: classes {extra[:10]} are not classes of the train split {train}; remove them "
                        "from this split or rename them to the train split's class names")
    if len(set(train_classes)) != len(train_classes):
        raise DataError(f"{train}: duplicate class names; test labels cannot be matched to train labels by name")
    pos = {c: i for i, c in enumerate(train_classes)}
    return np.array([pos[c] for c in classes], dtype=np.int64)[orig]


def list_split(source: str, dcfg: DataConfig, max_per_class: int | None = None,
               train: str | None = None) -> tuple[pa.Table, list[str]]:
    """Index a split without decoding images (a URI tree is listed once per call: :func:`folders.one_listing`).

    Args:
        train: for a test split, the train split's location: the split's classes are matched to the train split's
            by name (:func:`to_train_labels`), so ``orig_label`` / ``label`` are train label indices and
            ``classes`` are train class names. A train class missing from this split is an error (its accuracy
            would be undefined and top-1 silently over fewer classes), unless ``class_subset`` leaves it out.
    Returns:
        ``(index, classes)``: ``index`` has columns ``id`` (string), ``label`` (int64, remapped to
        0..C-1 when ``class_subset`` is set), ``orig_label`` (int64), ``file`` (binary path or URI; dictionary-encoded,
        one entry per file, for Parquet sources), ``row`` (int64; -1 for ImageFolder); ``classes`` lists the kept
        class names in label order.
    Raises:
        DataError: missing columns, null/out-of-range labels, duplicate ids, empty split, a class with no images;
            with ``train``: a class not in the train split, a train class missing here.
    """
    with folders.one_listing():
        return _list_split(source, dcfg, max_per_class, train)


def _list_split(source: str, dcfg: DataConfig, max_per_class: int | None, train: str | None
                ) -> tuple[pa.Table, list[str]]:
    fmt = detect_format(source, dcfg.format)
    classes = load_classes(dcfg, source)
    if fmt in ("webdataset", "cifar"):
        index = formats.list_index(fmt, source, dcfg.label_column)
    elif fmt == "parquet":
        index = pa.concat_tables([parquet_part(f, dcfg) for f in parquet_files(source)])
    elif storage.is_uri(source):
        index, classes = folders.list_uri_imagefolder(source, classes)
    else:
        index, classes = folders.list_imagefolder(source, classes)
    index, classes = formats.string_labels(index, classes, source)
    if index.num_rows == 0:
        raise DataError(f"{source}: split has no images")
    orig, mask, new, classes = label_plan(index.column("orig_label").to_numpy(), classes, dcfg, max_per_class,
                                          train, source)
    if train is not None:
        index = index.set_column(index.schema.get_field_index("orig_label"), "orig_label", pa.array(orig))
    meta = index.schema.metadata
    if not mask.all():  # a full split (all of ImageNet) keeps its buffers: no copy of the index
        index = index.filter(pa.array(mask))
    index = index.append_column("label", pa.array(new))
    check_unique_ids(index.column("id"), source)
    return index.select(INDEX_COLUMNS).replace_schema_metadata(meta), classes


INDEX_COLUMNS = ["id", "label", "orig_label", "file", "row"]


def check_unique_ids(ids: pa.ChunkedArray | pa.Array, source: str) -> None:
    """Raises DataError when an id occurs twice (8 bytes per row, not a hash table of the strings)."""
    n_dup, dup = duplicate_ids(ids)
    if n_dup:
        raise DataError(f"{source}: {n_dup} duplicate ids, e.g. {dup[0]}; set data.id_column")


def parquet_part(f: str, dcfg: DataConfig) -> pa.Table:
    """The raw index ``{id, orig_label, file, row}`` of one Parquet file (its label and id columns only).

    Raises:
        DataError: the image, label or configured id column is missing, or a label is null.
    """
    fs, fpath = storage.resolve(f, field="data")
    schema = pq.read_schema(fpath, filesystem=fs)
    for col in (dcfg.image_column, dcfg.label_column):
        if col not in schema.names:
            raise DataError(f"{f}: no column {col!r} (columns: {schema.names}); "
                            f"set data.image_column / data.label_column")
    id_col = dcfg.id_column or ("id" if "id" in schema.names else
                                "filename" if "filename" in schema.names else None)
    if dcfg.id_column and dcfg.id_column not in schema.names:
        raise DataError(f"{f}: no id column {dcfg.id_column!r} (columns: {schema.names})")
    t = pq.read_table(fpath, filesystem=fs, columns=[dcfg.label_column] + ([id_col] if id_col else []))
    n = t.num_rows
    labels = t.column(dcfg.label_column)
    if labels.null_count:
        raise DataError(f"{f}: {labels.null_count} rows have a null {dcfg.label_column!r}")
    ids = (pc.cast(t.column(id_col), pa.string()) if id_col
           else pa.array([f"{storage.basename(f)}:{i}" for i in range(n)], pa.string()))  # typed: an empty file too
    if not (pa.types.is_string(labels.type) or pa.types.is_large_string(labels.type)):  # mapped later
        labels = pc.cast(labels, pa.int64())
    # One dictionary entry per Parquet file, 4 bytes per row (a repeated path was ~60 bytes per row,
    # half the index of a 1.28 M-row split: docs/benchmarks.md, stand-in run).
    file_col = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)),
                                              pa.array([os.fsencode(f)], pa.binary()))
    return pa.table({"id": ids, "orig_label": labels, "file": file_col,
                     "row": pa.array(np.arange(n, dtype=np.int64))})


def label_plan(orig: np.ndarray, classes: list[str] | None, dcfg: DataConfig, max_per_class: int | None,
               train: str | None, source: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Which rows of a split are kept and their labels, from its original labels alone.

    Args:
        orig: int64 ``[n]`` original labels in index order; ``classes``: their names (None: labels only).
    Returns:
        ``(orig, mask, label, classes)``: ``orig`` mapped to the train split's classes when ``train`` is given
        (else as given), bool ``mask [n]`` of kept rows (``class_subset``, the first ``max_per_class`` of each
        class in index order), int64 ``label [mask.sum()]`` in 0..C-1, the kept class names in label order.
    Raises:
        DataError: labels out of range, ``class_subset`` out of range, a class with no images (see
        :func:`list_split`).
    """
    n_classes = len(classes) if classes else int(orig.max()) + 1
    if orig.min() < 0 or orig.max() >= n_classes:
        raise DataError(f"{source}: labels span [{orig.min()}, {orig.max()}] but there are {n_classes} classes")
    named = classes is not None
    classes = classes or [str(i) for i in range(n_classes)]
    if train is not None:
        train_classes = split_classes(train, dcfg)
        orig = to_train_labels(orig, classes, named, train_classes, source, train)
        classes, n_classes = train_classes, len(train_classes)
    keep_labels = dcfg.class_subset if dcfg.class_subset is not None else list(range(n_classes))
    bad = [c for c in keep_labels if not 0 <= c < n_classes]
    if bad:
        raise DataError(f"data.class_subset: labels {bad} are outside 0..{n_classes - 1}")
    remap = np.full(n_classes, -1, dtype=np.int64)
    remap[keep_labels] = np.arange(len(keep_labels))
    new = remap[orig]
    mask = new >= 0
    if max_per_class is not None:  # first N of each class, in file order (deterministic), without a Python loop
        kept = np.flatnonzero(mask)
        by_class = np.argsort(new[kept], kind="stable")  # file order within each class
        first = np.searchsorted(new[kept][by_class], new[kept][by_class], side="left")
        rank = np.empty(len(kept), dtype=np.int64)
        rank[by_class] = np.arange(len(kept)) - first
        mask[kept[rank >= max_per_class]] = False
    counts = np.bincount(new[mask], minlength=len(keep_labels))
    if (counts == 0).any():
        empty = [f"{classes[keep_labels[c]]!r} (label {keep_labels[c]})" for c in np.flatnonzero(counts == 0)]
        what = f"train classes missing from this split (train: {train})" if train else "classes with no images"
        raise DataError(f"{source}: {what}: {', '.join(empty[:10])}; add images or leave them out "
                        "with data.class_subset")
    return orig, mask, (new if mask.all() else new[mask]), [classes[c] for c in keep_labels]


def _read_file(loc: str) -> bytes | None:
    try:
        return storage.read_bytes(loc) if storage.is_uri(loc) else Path(loc).read_bytes()
    except OSError:  # vanished or unreadable: the row is skipped with a reason, not dropped
        return None


def read_bytes(index: pa.Table, image_column: str) -> list[bytes | None]:
    """Encoded bytes for each index row (Parquet rows grouped per file, only their row groups read; ImageFolder
    files read directly). Files are local paths (non-UTF-8 names allowed) or URIs read through pyarrow's
    filesystems, on whichever node runs this."""
    out: list[bytes | None] = [None] * index.num_rows
    files = [os.fsdecode(f) for f in index.column("file").to_pylist()]
    rows = index.column("row").to_numpy()
    by_file: dict[str, list[int]] = {}
    for i, f in enumerate(files):
        by_file.setdefault(f, []).append(i)
    for f, idx in by_file.items():
        if rows[idx[0]] < 0:
            for i in idx:
                out[i] = _read_file(files[i])
        elif (got := formats.read_rows(f, rows[idx])) is not None:  # WebDataset shard / CIFAR batch
            for i, v in zip(idx, got, strict=True):
                out[i] = v
        else:
            for i, v in zip(idx, read_parquet_rows(f, image_column, rows[idx]), strict=True):
                out[i] = v["bytes"] if isinstance(v, dict) else v
    return out


def load_arrays(index: pa.Table, image_column: str, size: int) -> dict[str, np.ndarray]:
    """Decode the rows of an index into memory (test split, random baseline). Undecodable rows are dropped
    and counted in ``n_skipped``.

    Returns:
        ``{"images": uint8 [n,size,size,3], "labels": int64 [n], "ids": str [n], "n_skipped": int}``.
    """
    raw = read_bytes(index, image_column)
    batch = decode_batch({"id": np.array(index.column("id").to_pylist(), dtype=object),
                          "label": index.column("label").to_numpy(), "bytes": raw}, size)
    ok = batch["ok"]
    return {"images": batch["image"][ok], "labels": batch["label"][ok].astype(np.int64),
            "ids": batch["id"][ok], "n_skipped": int((~ok).sum())}
