"""ImageFolder trees (``root/<class name>/**/*.jpg``, the ImageNet layout), local or under a URI prefix."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
from pathlib import Path

import pyarrow as pa

from . import storage
from .errors import DataError

log = logging.getLogger("ddoq_ray")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
_LISTINGS: contextvars.ContextVar[dict | None] = contextvars.ContextVar("ddoq_listings", default=None)


@contextlib.contextmanager
def one_listing():
    """Within the block every URI tree is listed once by :func:`walk_uri`: indexing a split asks for the same
    tree up to five times (format detection, class names, the index); on an object store each is a full
    recursive listing (1,282 requests for ImageNet's 1.28 M objects). Nested blocks share the outer memo."""
    if _LISTINGS.get() is not None:
        yield
        return
    token = _LISTINGS.set({})
    try:
        yield
    finally:
        _LISTINGS.reset(token)


def walk_uri(loc: str) -> list[tuple[str, int]]:
    """:func:`ddoq_ray.storage.walk_files` (``(relative path, size)``, sorted), memoised inside
    :func:`one_listing`."""
    memo = _LISTINGS.get()
    if memo is None:
        return storage.walk_files(loc)
    if loc not in memo:
        memo[loc] = storage.walk_files(loc)
    return memo[loc]


def display_name(name: str) -> str:
    """A printable, UTF-8-safe form of a file name (non-UTF-8 bytes become ``\\xNN`` escapes)."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def class_folders(root: Path) -> list[str]:
    return sorted(display_name(d.name) for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def uri_class_folders(root: str) -> list[str]:
    return sorted({r.split("/", 1)[0] for r, _ in walk_uri(root) if "/" in r and not r.startswith(".")})


def _walk_files(top: str) -> list[str]:
    """Paths (``os.fsdecode`` form) of the files under ``top``, recursively, as ``Path.rglob("*")`` + ``is_file()``
    would give them: symlinks to files count, symlinked folders are not entered, unreadable folders are skipped.
    ``os.scandir`` reads the file type from the directory entry, so no ``stat`` per file (1.28 M files: see
    benchmarks/bench_index.py)."""
    out, todo = [], [top]
    while todo:
        d = todo.pop()
        try:
            with os.scandir(d) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        todo.append(e.path)
                    elif e.is_file():
                        out.append(e.path)
        except PermissionError:
            continue
    return out


def _index_table(ids: list[str], label: int, files: list[bytes]) -> pa.Table:
    return pa.table({"id": pa.array(ids, pa.string()), "orig_label": pa.array([label] * len(ids), pa.int64()),
                     "file": pa.array(files, pa.binary()), "row": pa.array([-1] * len(ids), pa.int64())})


def list_imagefolder(source: str, classes: list[str] | None) -> tuple[pa.Table, list[str]]:
    """ImageFolder index of a local root: one row per image file under ``<root>/<class>/**`` (sorted by path
    components within a class, the order of ``sorted(Path.rglob("*"))``), other files ignored and listed in the
    schema metadata ``ignored_files``.

    The driver holds the Arrow index and the Python strings of one class at a time (1.28 M files: time and peak
    memory in docs/benchmarks.md, ``benchmarks/bench_index.py``).

    Raises:
        DataError: class folders that are not in ``classes``.
    """
    root = Path(source)
    dirs = {display_name(d.name): d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")}
    names = sorted(dirs)
    if classes is not None and classes != names and set(names) - set(classes):
        raise DataError(f"{source}: class folders {sorted(set(names) - set(classes))} are not in classes")
    classes = classes or names
    label_of = {c: i for i, c in enumerate(classes)}
    top = os.fsdecode(root)
    cut = len(top.rstrip("/")) + 1
    parts, ignored = [], []
    for c in names:
        ids, files = [], []
        for p in sorted(_walk_files(os.fsdecode(dirs[c])), key=lambda p: p[cut:].split("/")):
            rel = display_name(p[cut:])
            if os.path.splitext(p)[1].lower() in IMAGE_EXTENSIONS:
                ids.append(rel)
                files.append(os.fsencode(p))
            else:
                ignored.append(rel)
        parts.append(_index_table(ids, label_of[c], files))  # Arrow buffers; the Python strings are freed
    stray = [display_name(p.name) for p in root.iterdir() if p.is_file()]
    if ignored or stray:
        log.warning("%s: ignored %d files that are not images (%s)", source, len(ignored) + len(stray),
                    ", ".join((ignored + stray)[:5]))
    index = pa.concat_tables(parts) if parts else _index_table([], 0, [])
    index = index.replace_schema_metadata({"ignored_files": json.dumps(ignored + stray)})
    return index, classes


def list_uri_imagefolder(source: str, classes: list[str] | None) -> tuple[pa.Table, list[str]]:
    """ImageFolder index of a URI root (object stores: listing one prefix), in the same order as a local tree."""
    files = [r for r, _ in walk_uri(source) if not any(p.startswith(".") for p in r.split("/"))]
    names = sorted({r.split("/", 1)[0] for r in files if "/" in r})
    if classes is not None and classes != names and set(names) - set(classes):
        raise DataError(f"{source}: class folders {sorted(set(names) - set(classes))} are not in classes")
    classes = classes or names
    label_of = {c: i for i, c in enumerate(classes)}
    ids, labels, locs, ignored = [], [], [], []
    for rel in sorted(files, key=lambda r: r.split("/")):  # the order of sorted(Path.rglob(...)) per class
        if "/" not in rel or os.path.splitext(rel)[1].lower() not in IMAGE_EXTENSIONS:
            ignored.append(rel)
            continue
        ids.append(rel)
        labels.append(label_of[rel.split("/", 1)[0]])
        locs.append(storage.join(source, rel).encode())
    if ignored:
        log.warning("%s: ignored %d files that are not images (%s)", source, len(ignored), ", ".join(ignored[:5]))
    index = pa.table({"id": pa.array(ids, pa.string()), "orig_label": pa.array(labels, pa.int64()),
                      "file": pa.array(locs, pa.binary()), "row": pa.array([-1] * len(ids), pa.int64())})
    return index.replace_schema_metadata({"ignored_files": json.dumps(ignored)}), classes
