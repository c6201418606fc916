"""More input formats for the ingest stage: WebDataset shards, CIFAR python batches, HF hub datasets, string labels.

Each lister returns the same index as :func:`ddoq_ray.data.list_split` builds for Parquet and ImageFolder
(``id``, ``orig_label``, ``file``, ``row``), and :func:`read_rows` returns the encoded image bytes of index rows, so
every format goes through the same accounting (``input = encoded + skipped``; an undecodable image is skipped
and counted by :func:`ddoq_ray.images.decode_batch`, never dropped).

- **WebDataset** (``data.format: webdataset``; a ``.tar`` shard or a folder of them): samples are the members
  sharing a key (the member path up to the first ``.`` of its file name, the WebDataset convention); the image is
  the ``.jpg/.jpeg/.png/.webp/...`` member, the label the ``.cls`` member (text: an integer or a class name) or
  the ``.json`` member's ``data.label_column`` key (default ``label``). ``row`` is the member's header offset in
  the shard, so a block reads its images with one pass over the shard's headers. Row id: ``<shard>/<key>``.
  Samples without an image member are ignored and logged (as non-image files in an ImageFolder); a sample with an
  image but no label is an error. Docs: https://github.com/webdataset/webdataset#the-webdataset-format
- **CIFAR python batches** (``data.format: cifar``): the folders of ``cifar-10-python.tar.gz`` and
  ``cifar-100-python.tar.gz`` (https://www.cs.toronto.edu/~kriz/cifar.html). A folder means its training batches
  (``data_batch_1..5`` or ``train``); a batch file means that batch, so ``data.test`` points at ``test_batch`` or
  ``test``. Class names come from ``batches.meta`` ``label_names`` / ``meta`` ``fine_label_names``
  (``data.label_column: coarse_label`` picks CIFAR-100's 20 superclasses). Rows are raw uint8 arrays; they are
  handed on as lossless PNG bytes. The pickles are read with an unpickler that only builds numpy arrays. Row id:
  ``<batch file>:<row>``.
- **HF hub datasets** (``hf://datasets/<owner>/<name>[@<revision>][/<path in repo>][?split=<split>]``): resolved
  with ``huggingface_hub.snapshot_download(repo_id, repo_type="dataset")``, which uses the local HF cache
  (``$HF_HOME``) and works offline (``HF_HUB_OFFLINE=1``) once the dataset is there. The repo's Parquet files (or
  WebDataset shards) are then read as local files. Files named by split (``train-00000-of-00001.parquet``,
  ``data/test/...``) are selected by ``?split=``; a repo with several splits needs it.
- **String labels** (Parquet label column of strings, ``.cls`` names): mapped to labels by ``data.classes``
  when given, else by the sorted set of names.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import tarfile
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pyarrow as pa

from . import storage
from .cifar_batches import cifar_classes, cifar_meta_file, index_table, list_cifar, read_cifar
from .errors import FormatError

log = logging.getLogger("ddoq_ray")
HF_PREFIX = "hf://datasets/"
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_IMAGE_EXTS = ("jpg", "jpeg", "png", "bmp", "webp", "gif", "tif", "tiff", "ppm")


# ---------------------------------------------------------------- HF hub datasets


def is_hf(source: str) -> bool:
    """True for ``hf://datasets/...`` references."""
    return str(source).startswith(HF_PREFIX)


@functools.lru_cache(maxsize=32)
def _hf_snapshot(repo_id: str, revision: str | None) -> str:
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, repo_type="dataset", revision=revision)
    except Exception as e:  # LocalEntryNotFoundError offline, RepositoryNotFoundError / HTTP errors online
        raise FormatError(f"hf://datasets/{repo_id}: cannot get the dataset ({type(e).__name__}: {e}); offline "
                          "(HF_HUB_OFFLINE=1) it must already be in the HF cache ($HF_HOME/hub)") from e


def _split_of(rel: str) -> str | None:
    """The split a repo file belongs to by the hub's naming (``train-0000-of-0001.parquet``, ``test/x.parquet``,
    ``validation.parquet``), or None."""
    parts = rel.split("/")
    for p in parts[:-1]:
        if p in ("train", "test", "validation", "valid", "val"):
            return p
    m = re.match(r"([A-Za-z0-9_]+?)(?:[-.]\d|\.parquet$|\.tar$|-)", parts[-1])
    return m.group(1) if m else None


def hf_files(source: str) -> list[str]:
    """Local files (Parquet, else WebDataset shards) of an ``hf://datasets/...`` reference, sorted.

    Raises:
        FormatError: the dataset is not in the cache offline, has no Parquet/tar files, or has several splits and
            no ``?split=`` (or the split does not exist).
    """
    u = urlsplit(source)
    parts = (u.netloc + u.path).split("/")[1:]  # netloc is "datasets"
    if len(parts) < 2 or not all(parts[:2]):
        raise FormatError(f"{source}: expected hf://datasets/<owner>/<name>[@revision][/path][?split=...]")
    name, _, revision = parts[1].partition("@")
    repo_id, sub = f"{parts[0]}/{name}", "/".join(parts[2:])
    split = parse_qs(u.query).get("split", [None])[0]
    root = Path(_hf_snapshot(repo_id, revision or None))
    base = root / sub if sub else root
    if base.is_file():
        return [str(base)]
    rels = sorted(str(p.relative_to(root)) for p in base.rglob("*") if p.is_file() and ".cache" not in p.parts)
    for suffixes in ((".parquet",), TAR_SUFFIXES):
        files = [r for r in rels if r.endswith(suffixes)]
        if files:
            break
    else:
        raise FormatError(f"{source}: no *.parquet or WebDataset *.tar files in the dataset snapshot {base}")
    splits = sorted({s for s in map(_split_of, files) if s})
    if split is not None:
        files = [r for r in files if _split_of(r) == split]
        if not files:
            raise FormatError(f"{source}: no files of split {split!r}; splits: {splits}")
    elif len(splits) > 1:
        raise FormatError(f"{source}: the dataset has splits {splits}; add ?split=<split> "
                          f"(e.g. data.train: {source.split('?')[0]}?split={splits[-1]})")
    return [str(root / r) for r in files]


def local_source(source: str) -> str:
    """A local location for ``source``: an HF reference becomes its split's single file or common folder."""
    if not is_hf(source):
        return source
    files = hf_files(source)
    return files[0] if len(files) == 1 else os.path.commonpath(files)


# ---------------------------------------------------------------- detection and string labels


def detect(source: str) -> str | None:
    """``webdataset`` or ``cifar`` when ``source`` looks like one, else None.

    WebDataset: a ``.tar`` shard, or a folder of shards with no sub-folders (so an ImageFolder root with a stray
    tar stays an ImageFolder). CIFAR: a folder with ``batches.meta`` + ``data_batch_1`` or ``meta`` + ``train``,
    or a batch file beside such a meta file.
    """
    if is_hf(source):
        return "webdataset" if hf_files(source)[0].endswith(TAR_SUFFIXES) else None
    if storage.is_uri(source):
        return "webdataset" if source.endswith(TAR_SUFFIXES) else None
    p = Path(source)
    if p.name.endswith(TAR_SUFFIXES):
        return "webdataset"
    if p.is_dir() and any(f.name.endswith(TAR_SUFFIXES) for f in p.iterdir()) and not any(
            d.is_dir() for d in p.iterdir() if not d.name.startswith(".")):
        return "webdataset"
    return "cifar" if cifar_meta_file(p) is not None else None


def string_labels(index: pa.Table, classes: list[str] | None, source: str) -> tuple[pa.Table, list[str] | None]:
    """Map a string ``orig_label`` column to int64 labels (``classes`` order, else sorted names); ints pass.

    Raises:
        FormatError: a name that is not in ``classes``.
    """
    col = index.column("orig_label")
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        return index, classes
    names = [str(v) for v in col.to_pylist()]
    classes = list(classes) if classes else sorted(set(names))
    pos = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(names) - set(pos))
    if unknown:
        raise FormatError(f"{source}: labels {unknown[:10]} are not in the class list (data.classes: "
                          f"{classes[:10]}...); add them to data.classes")
    labels = pa.array([pos[n] for n in names], pa.int64())
    return index.set_column(index.schema.get_field_index("orig_label"), "orig_label", labels), classes


def list_index(fmt: str, source: str, label_column: str) -> pa.Table:
    """The raw index (``id``, ``orig_label`` int64 or string, ``file``, ``row``) of a WebDataset or CIFAR split."""
    if fmt == "webdataset":
        return list_webdataset(source, label_column)
    if fmt == "cifar":
        return list_cifar(source, label_column)
    raise FormatError(f"{source}: unknown format {fmt!r}")


def classes_of(fmt: str, source: str, label_column: str) -> list[str] | None:
    """Class names stored with the data (CIFAR meta files), or None."""
    return cifar_classes(source, label_column) if fmt == "cifar" else None


# ---------------------------------------------------------------- WebDataset


def _shards(source: str) -> list[str]:
    if is_hf(source):
        return hf_files(source)
    if storage.is_uri(source):
        if source.endswith(TAR_SUFFIXES):
            return [source]
        return [storage.join(source, r) for r, _ in storage.walk_files(source) if r.endswith(TAR_SUFFIXES)]
    p = Path(source)
    if p.is_file():
        return [str(p)]
    shards = sorted(str(f) for f in p.rglob("*") if f.name.endswith(TAR_SUFFIXES))
    if not shards:
        raise FormatError(f"{source}: no WebDataset shards (*.tar) found")
    return shards


def _members(shard: str) -> list[tarfile.TarInfo]:
    try:
        with storage.open_input(shard) as f, tarfile.open(fileobj=f, mode="r:*") as tf:
            return [m for m in tf.getmembers() if m.isfile()]
    except (tarfile.TarError, OSError, EOFError) as e:
        raise FormatError(f"{shard}: not a readable tar shard ({type(e).__name__}: {e}); re-create or remove it") from e


def _key_ext(name: str) -> tuple[str, str]:
    """WebDataset's split of a member path: key = path up to the first dot of the file name, ext = the rest."""
    d, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{d}/{stem}" if d else stem), ext.lower()


def _parse_label(raw: bytes, ext: str, key: str, shard: str, label_column: str):
    text = raw.decode("utf-8", "replace").strip()
    if ext == "json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise FormatError(f"{shard}: {key}.json is not JSON ({e})") from e
        if not isinstance(doc, dict) or label_column not in doc:
            raise FormatError(f"{shard}: {key}.json has no {label_column!r} key (set data.label_column)")
        value = doc[label_column]
    else:
        value = text
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise FormatError(f"{shard}: {key}.{ext}: label {value!r} is neither an integer nor a class name")
    return int(value) if isinstance(value, int) or re.fullmatch(r"-?\d+", value) else value


def list_webdataset(source: str, label_column: str = "label") -> pa.Table:
    """Index WebDataset shards: one row per sample with an image member (see module docstring).

    Raises:
        FormatError: unreadable shard, a sample with an image but no ``.cls``/``.json`` label, a bad label.
    """
    ids, labels, files, rows, ignored = [], [], [], [], []
    for shard in _shards(source):
        samples: dict[str, dict[str, tarfile.TarInfo]] = {}
        for m in _members(shard):
            key, ext = _key_ext(m.name)
            samples.setdefault(key, {})[ext] = m
        with storage.open_input(shard) as f, tarfile.open(fileobj=f, mode="r:*") as tf:
            for key, parts in samples.items():
                img = next((parts[e] for e in _IMAGE_EXTS if e in parts), None)
                if img is None:
                    ignored += [f"{storage.basename(shard)}/{key}.{e}" for e in parts]
                    continue
                lab = next((e for e in ("cls", "json") if e in parts), None)
                if lab is None:
                    raise FormatError(f"{shard}: sample {key!r} has no .cls or .json label member")
                raw = tf.extractfile(parts[lab]).read()
                labels.append(_parse_label(raw, lab, key, shard, label_column))
                ids.append(f"{storage.basename(shard)}/{key}")
                files.append(shard)
                rows.append(img.offset)
    if ignored:
        log.warning("%s: ignored %d members of samples without an image (%s)", source, len(ignored),
                    ", ".join(ignored[:5]))
    if labels and any(isinstance(v, str) for v in labels):
        labels = [str(v) for v in labels]
    return index_table(ids, labels, files, rows, ignored)


def _read_tar(shard: str, offsets: np.ndarray) -> list[bytes | None]:
    with storage.open_input(shard) as f, tarfile.open(fileobj=f, mode="r:*") as tf:
        by_offset = {m.offset: m for m in tf.getmembers()}
        out = []
        for off in offsets:
            m = by_offset.get(int(off))
            fh = tf.extractfile(m) if m is not None else None
            out.append(fh.read() if fh is not None else None)
        return out


# ---------------------------------------------------------------- reading rows


def row_reader(loc: str):
    """The reader ``f(loc, rows) -> [bytes | None]`` for a file of this module's formats, or None (Parquet)."""
    if loc.endswith(".parquet"):
        return None
    if loc.endswith(TAR_SUFFIXES):
        return _read_tar
    try:
        with storage.open_input(loc) as f:
            head = f.read(262)
    except OSError:
        return None
    if head[:1] == b"\x80":  # pickle protocol >= 2: a CIFAR batch
        return read_cifar
    if head[257:262] == b"ustar" or head[:2] == b"\x1f\x8b":
        return _read_tar
    return None


def read_rows(loc: str, rows: np.ndarray) -> list[bytes | None] | None:
    """Encoded image bytes of ``rows`` of ``loc`` (None for a row that cannot be read), or None when ``loc``
    is not a WebDataset shard or CIFAR batch."""
    reader = row_reader(loc)
    return None if reader is None else reader(loc, rows)
