"""Indexing at scale: the os.scandir ImageFolder listing gives exactly the old ``sorted(rglob)`` index, a URI tree
is listed once per ``list_split`` (not five times), and the vectorised ``max_per_class`` keeps the same rows.
Timings at 1.28 M files are in benchmarks/bench_index.py (docs/benchmarks.md)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ddoq_ray import storage
from ddoq_ray.config import DataConfig
from ddoq_ray.data import list_split
from ddoq_ray.folders import IMAGE_EXTENSIONS, display_name, list_imagefolder


def _rglob_reference(source: str, classes: list[str] | None):
    """The listing before os.scandir (ddoq_ray/folders.py at main, 2026-12-01), kept as the reference."""
    root = Path(source)
    dirs = {display_name(d.name): d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")}
    names = sorted(dirs)
    classes = classes or names
    ids, labels, files, ignored = [], [], [], []
    for c in names:
        for p in sorted(dirs[c].rglob("*")):
            if not p.is_file():
                continue
            rel = display_name(str(p.relative_to(root)))
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                ids.append(rel)
                labels.append(classes.index(c))
                files.append(os.fsencode(p))
            else:
                ignored.append(rel)
    stray = [display_name(p.name) for p in root.iterdir() if p.is_file()]
    return ids, labels, files, ignored + stray


def _tricky_tree(root: Path) -> None:
    """Nested folders whose string order differs from path-component order ("a-b" < "a/b" as strings), hidden
    files and folders, upper-case and missing extensions, a symlinked file and folder, a non-UTF-8 name."""
    for rel in ("cat/a-b.jpg", "cat/a/b.jpg", "cat/a/c/d.PNG", "cat/a.jpg", "cat/.hidden.jpg", "cat/.dot/x.jpg",
                "cat/notes.txt", "cat/noext", "dog/z.jpeg", "dog/A.JPG", "dog/sub/sub/deep.webp", "eel/e.bmp",
                "README.md", ".git/config"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    (root / "dog" / "link.jpg").symlink_to(root / "cat" / "a.jpg")
    (root / "dog" / "linkdir").symlink_to(root / "cat" / "a", target_is_directory=True)
    (root / "eel").joinpath(os.fsdecode(b"caf\xe9.jpg")).write_bytes(b"")


def test_scandir_listing_equals_the_rglob_listing(tmp_path):
    _tricky_tree(tmp_path)
    for classes in (None, ["eel", "dog", "cat", "fox"]):
        index, got_classes = list_imagefolder(str(tmp_path), classes)
        ids, labels, files, ignored = _rglob_reference(str(tmp_path), classes)
        assert index.column("id").to_pylist() == ids
        assert index.column("orig_label").to_pylist() == labels
        assert index.column("file").to_pylist() == files
        assert index.column("row").to_pylist() == [-1] * len(ids)
        assert json.loads(index.schema.metadata[b"ignored_files"]) == ignored
        assert got_classes == (classes or ["cat", "dog", "eel"])
    assert ids[:6] == ["cat/.dot/x.jpg", "cat/.hidden.jpg", "cat/a/b.jpg", "cat/a/c/d.PNG", "cat/a-b.jpg",
                       "cat/a.jpg"]  # path-component order (as strings "a-b" < "a/b"); hidden files inside kept
    assert "dog/link.jpg" in ids and not any(i.startswith("dog/linkdir") for i in ids)
    assert "eel/caf\\xe9.jpg" in ids and len(ids) == 12


def test_uri_tree_is_listed_once_per_list_split(tmp_path, monkeypatch):
    """A file:// URI takes the object-store path: format detection, class names and the index share one listing
    (today's main lists the whole tree five times, i.e. 5 x 1,282 requests for ImageNet on S3)."""
    for c in ("ant", "bee"):
        for i in range(3):
            (tmp_path / c).mkdir(exist_ok=True)
            (tmp_path / c / f"{i}.jpg").write_bytes(b"")
    calls = []
    real = storage.walk_files
    monkeypatch.setattr(storage, "walk_files", lambda loc: calls.append(loc) or real(loc))
    uri = f"file://{tmp_path}"
    index, classes = list_split(uri, DataConfig(train=uri))
    assert len(calls) == 1
    assert classes == ["ant", "bee"] and index.num_rows == 6
    assert index.column("id").to_pylist() == [f"{c}/{i}.jpg" for c in ("ant", "bee") for i in range(3)]
    assert index.column("label").to_pylist() == [0, 0, 0, 1, 1, 1]
    list_split(uri, DataConfig(train=uri))
    assert len(calls) == 2  # the memo lives for one call only: a changed tree is seen by the next


def test_max_per_class_keeps_the_first_n_of_each_class_in_file_order(tmp_path):
    labels = np.array([2, 0, 2, 1, 0, 2, 2, 0, 1, 2, 0], dtype=np.int64)
    pq.write_table(pa.table({"image": pa.array([b"x"] * len(labels)), "label": labels,
                             "id": [f"r{i}" for i in range(len(labels))]}), tmp_path / "s.parquet")
    cfg = DataConfig(train=str(tmp_path))
    index, _ = list_split(str(tmp_path), cfg, max_per_class=2)
    assert index.column("id").to_pylist() == ["r0", "r1", "r2", "r3", "r4", "r8"]
    sub, _ = list_split(str(tmp_path), DataConfig(train=str(tmp_path), class_subset=[2, 1]), max_per_class=3)
    assert sub.column("id").to_pylist() == ["r0", "r2", "r3", "r5", "r8"]
    assert sub.column("label").to_pylist() == [0, 0, 1, 0, 1]
