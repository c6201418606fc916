"""The canonical CIFAR-10/100 python batches (``cifar-10-batches-py/``, ``cifar-100-python/``) as a split.

A folder means its training batches (``data_batch_1..5`` or ``train``); a batch file means that batch (point
``data.test`` at ``test_batch`` / ``test``). Class names come from ``batches.meta`` / ``meta`` (fine labels by
default, ``data.label_column: coarse_label`` for CIFAR-100's superclasses). Rows are served as lossless PNG bytes;
the pickles go through an unpickler that only builds numpy arrays (Krizhevsky 2009, the dataset's own page).
"""

from __future__ import annotations

import io
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa

from . import storage
from .errors import FormatError

CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))


def index_table(ids: list[str], labels: list, files: list[str], rows: list[int], ignored: list[str]) -> pa.Table:
    """The raw index of a listed split: ``id``, ``orig_label`` (int64, or string labels), ``file``, ``row``."""
    typ = pa.int64() if all(isinstance(v, (int, np.integer)) for v in labels) else pa.string()
    t = pa.table({"id": pa.array(ids, pa.string()), "orig_label": pa.array(labels, typ),
                  "file": pa.array([os.fsencode(f) for f in files], pa.binary()),
                  "row": pa.array(rows, pa.int64())})
    return t.replace_schema_metadata({"ignored_files": json.dumps(ignored)})


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches (dicts of lists and numpy arrays) and nothing that could run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        return super().find_class(module, name)


def _unpickle(loc: str) -> dict:
    try:
        with storage.open_input(loc) as f:
            doc = _ArrayUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError) as e:
        raise FormatError(f"{loc}: not a readable CIFAR python batch ({type(e).__name__}: {e})") from e
    if not isinstance(doc, dict):
        raise FormatError(f"{loc}: a CIFAR batch is a dict, found {type(doc).__name__}")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in doc.items()}


def cifar_meta_file(p: Path) -> Path | None:
    """``batches.meta`` (CIFAR-10) or ``meta`` (CIFAR-100) of a CIFAR folder or batch file, else None."""
    folder = p if p.is_dir() else p.parent
    for meta, batch in (("batches.meta", "data_batch_1"), ("meta", "train")):
        if (folder / meta).is_file() and (folder / batch).is_file() and (p.is_dir() or p.name != meta):
            return folder / meta
    return None


def _cifar_batches(source: str) -> list[Path]:
    p = Path(source)
    if p.is_file():
        return [p]
    for names in (CIFAR_TRAIN_BATCHES, ("train",)):
        found = [p / n for n in names if (p / n).is_file()]
        if found:
            return found
    raise FormatError(f"{source}: no CIFAR training batches (data_batch_1..5 or train); point data.test at "
                      "test_batch / test")


def _label_key(doc: dict, label_column: str) -> str:
    for key in ((label_column,) if label_column in doc else ()) + ("labels", "fine_labels"):
        if key in doc:
            return key
    if label_column == "coarse_label" and "coarse_labels" in doc:
        return "coarse_labels"
    raise FormatError(f"CIFAR batch has no labels/fine_labels (keys: {sorted(doc)})")


def list_cifar(source: str, label_column: str = "label") -> pa.Table:
    """Index CIFAR-10/100 python batches (one row per image; ``row`` = row in its batch)."""
    ids, labels, files, rows = [], [], [], []
    for batch in _cifar_batches(source):
        doc = _unpickle(str(batch))
        key = "coarse_labels" if label_column == "coarse_label" else _label_key(doc, label_column)
        lab = [int(v) for v in doc[key]]
        if "data" not in doc or len(doc["data"]) != len(lab):
            raise FormatError(f"{batch}: {len(lab)} labels but {len(doc.get('data', []))} rows of data")
        ids += [f"{batch.name}:{i}" for i in range(len(lab))]
        labels += lab
        files += [str(batch)] * len(lab)
        rows += list(range(len(lab)))
    return index_table(ids, labels, files, rows, [])


def cifar_classes(source: str, label_column: str = "label") -> list[str] | None:
    """Class names from ``batches.meta`` / ``meta`` beside the batches (index = label)."""
    meta = cifar_meta_file(Path(source))
    if meta is None:
        return None
    doc = _unpickle(str(meta))
    for key in (("coarse_label_names",) if label_column == "coarse_label" else ()) + ("label_names",
                                                                                      "fine_label_names"):
        if key in doc:
            return [n.decode() if isinstance(n, bytes) else str(n) for n in doc[key]]
    return None


def read_cifar(batch: str, rows: np.ndarray) -> list[bytes | None]:
    from PIL import Image

    data = _unpickle(batch)["data"]
    out: list[bytes | None] = []
    for r in rows:
        px = np.asarray(data[int(r)])
        if px.dtype != np.uint8 or px.size != 3072:  # a damaged row: skipped and counted downstream
            out.append(None)
            continue
        buf = io.BytesIO()
        Image.fromarray(px.reshape(3, 32, 32).transpose(1, 2, 0)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out
