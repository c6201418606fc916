"""ImageFolder trees (``root/<class name>/**/*.jpg``, the ImageNet layout), local or under a URI prefix."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pyarrow as pa

from . import storage
from .errors import DataError

log = logging.getLogger("ddoq_ray")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def display_name(name: str) -> str:
    """A printable, UTF-8-safe form of a file name (non-UTF-8 bytes become ``\\xNN`` escapes)."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def class_folders(root: Path) -> list[str]:
    return sorted(display_name(d.name) for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def uri_class_folders(root: str) -> list[str]:
    return sorted({r.split("/", 1)[0] for r, _ in storage.walk_files(root) if "/" in r and not r.startswith(".")})


def list_imagefolder(source: str, classes: list[str] | None) -> tuple[pa.Table, list[str]]:
    """ImageFolder index of a local root: one row per image file under ``<root>/<class>/**`` (sorted), other files
    ignored and listed in the schema metadata ``ignored_files``.

    Raises:
        DataError: class folders that are not in ``classes``.
    """
    root = Path(source)
    dirs = {display_name(d.name): d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")}
    names = sorted(dirs)
    if classes is not None and classes != names and set(names) - set(classes):
        raise DataError(f"{source}: class folders {sorted(set(names) - set(classes))} are not in classes")
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
    if ignored or stray:
        log.warning("%s: ignored %d files that are not images (%s)", source, len(ignored) + len(stray),
                    ", ".join((ignored + stray)[:5]))
    index = pa.table({"id": pa.array(ids, pa.string()), "orig_label": pa.array(labels, pa.int64()),
                      "file": pa.array(files, pa.binary()), "row": pa.array([-1] * len(ids), pa.int64())})
    index = index.replace_schema_metadata({"ignored_files": json.dumps(ignored + stray)})
    return index, classes


def list_uri_imagefolder(source: str, classes: list[str] | None) -> tuple[pa.Table, list[str]]:
    """ImageFolder index of a URI root (object stores: listing one prefix), in the same order as a local tree."""
    files = [r for r, _ in storage.walk_files(source) if not any(p.startswith(".") for p in r.split("/"))]
    names = sorted({r.split("/", 1)[0] for r in files if "/" in r})
    if classes is not None and classes != names and set(names) - set(classes):
        raise DataError(f"{source}: class folders {sorted(set(names) - set(classes))} are not in classes")
    classes = classes or names
    ids, labels, locs, ignored = [], [], [], []
    for rel in sorted(files, key=lambda r: r.split("/")):  # the order of sorted(Path.rglob(...)) per class
        if "/" not in rel or os.path.splitext(rel)[1].lower() not in IMAGE_EXTENSIONS:
            ignored.append(rel)
            continue
        ids.append(rel)
        labels.append(classes.index(rel.split("/", 1)[0]))
        locs.append(storage.join(source, rel).encode())
    if ignored:
        log.warning("%s: ignored %d files that are not images (%s)", source, len(ignored), ", ".join(ignored[:5]))
    index = pa.table({"id": pa.array(ids, pa.string()), "orig_label": pa.array(labels, pa.int64()),
                      "file": pa.array(locs, pa.binary()), "row": pa.array([-1] * len(ids), pa.int64())})
    return index.replace_schema_metadata({"ignored_files": json.dumps(ignored)}), classes
