"""Where runs and data live: local paths or URIs, all through ``pyarrow.fs``.

A *location* is a plain string: a local path (made absolute) or a URI that ``pyarrow.fs.FileSystem.from_uri``
understands: ``s3://bucket/prefix``, ``gs://bucket/prefix``, ``file:///abs/path``, ``hdfs://...``. S3 options go
in the query string (``?endpoint_override=host:port&scheme=http&region=...``), credentials come from the usual
``AWS_*`` / ``GOOGLE_APPLICATION_CREDENTIALS`` environment (or ``s3://KEY:SECRET@bucket/...``). Locations are
joined as strings (:func:`join` keeps the query string at the end), so they can be passed to Ray tasks and
resolved again on any node: nothing here assumes a disk shared between the driver and the workers.

Object stores have no directories and no atomic rename; the helpers below only use operations that mean the same
on every filesystem (write a whole object, list a prefix, delete a prefix). See :mod:`ddoq_ray.rundir` for the
commit protocol built on them.
"""

from __future__ import annotations

import functools
import json
import os
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from .errors import DdoqError

# URI schemes whose path is ``bucket/key`` and whose filesystem can be shared by every key of a bucket.
BUCKET_SCHEMES = ("s3", "gs", "gcs")


class StorageError(DdoqError, OSError):
    """A location cannot be used: unsupported URI scheme, unreachable bucket, or missing object.

    The message names the config field when the caller passed one.
    """


def is_uri(loc: str) -> bool:
    """True for ``scheme://...`` locations (anything pyarrow must resolve); False for plain local paths."""
    return "://" in str(loc)


def normalize(loc: str | os.PathLike) -> str:
    """A location string: local paths become absolute (``~`` expanded); URIs are returned unchanged."""
    s = os.fspath(loc)
    return s if is_uri(s) else os.path.abspath(os.path.expanduser(s))


def _split(loc: str) -> tuple[str, str]:
    """``(location without query, "?query" or "")``."""
    if is_uri(loc) and "?" in loc:
        base, q = loc.split("?", 1)
        return base, "?" + q
    return loc, ""


def join(loc: str, *parts: str) -> str:
    """``loc/part/...`` for paths and URIs (a URI's ``?query`` stays at the end)."""
    base, q = _split(normalize(loc))
    for p in parts:
        p = str(p).strip("/")
        if p:
            base = base.rstrip("/") + "/" + p
    return base + q


def basename(loc: str) -> str:
    return _split(loc)[0].rstrip("/").rsplit("/", 1)[-1]


def parent(loc: str) -> str:
    base, q = _split(normalize(loc))
    return base.rstrip("/").rsplit("/", 1)[0] + q


@functools.lru_cache(maxsize=64)
def _bucket_fs(root_uri: str) -> pafs.FileSystem:
    return pafs.FileSystem.from_uri(root_uri)[0]


def resolve(loc: str | os.PathLike, field: str | None = None) -> tuple[pafs.FileSystem, str]:
    """``(FileSystem, path inside it)`` for a location (S3/GCS filesystems are cached per bucket and options).

    Args:
        loc: a local path or a URI (see module docstring).
        field: the config field the location came from, for error messages (e.g. ``"output_dir"``).
    Raises:
        StorageError: the URI's scheme is not supported by this pyarrow build, or its options are invalid.
    """
    s = normalize(loc)
    if not is_uri(s):
        return pafs.LocalFileSystem(), s
    u = urlsplit(s)
    where = f"{field}={s!r}" if field else repr(s)
    try:
        if u.scheme in BUCKET_SCHEMES:
            bucket = u.netloc.rsplit("@", 1)[-1]
            fs = _bucket_fs(f"{u.scheme}://{u.netloc}" + (f"?{u.query}" if u.query else ""))
            return fs, (bucket + u.path).rstrip("/")
        fs, path = pafs.FileSystem.from_uri(s)
        return fs, path.rstrip("/") or "/"
    except Exception as e:  # ArrowInvalid / ArrowNotImplementedError / OSError, depending on the scheme
        raise StorageError(f"{where}: cannot use this location ({e}); supported: local paths, file://, s3://, "
                           "gs:// (options as URI query parameters, e.g. ?endpoint_override=host:port&scheme=http)"
                           ) from e


def _is_local(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, pafs.LocalFileSystem)


def info(loc: str) -> pafs.FileInfo:
    fs, p = resolve(loc)
    return fs.get_file_info(p)


def exists(loc: str) -> bool:
    """True when a file or a directory (a non-empty prefix on object stores) is at ``loc``."""
    return info(loc).type != pafs.FileType.NotFound


def is_file(loc: str) -> bool:
    return info(loc).type == pafs.FileType.File


def is_dir(loc: str) -> bool:
    return info(loc).type == pafs.FileType.Directory


def makedirs(loc: str) -> None:
    """Create a folder and its parents on local disks; a no-op on object stores (prefixes need no folder)."""
    fs, p = resolve(loc)
    if _is_local(fs):
        fs.create_dir(p, recursive=True)


def listdir(loc: str) -> list[str]:
    """Names (not paths) of the entries directly under ``loc``, sorted; ``[]`` when it does not exist."""
    fs, p = resolve(loc)
    infos = fs.get_file_info(pafs.FileSelector(p, allow_not_found=True, recursive=False))
    return sorted(i.base_name for i in infos)


def walk_files(loc: str) -> list[tuple[str, int]]:
    """``(relative path, size in bytes)`` of every file under ``loc`` (recursive), sorted by path."""
    fs, p = resolve(loc)
    infos = fs.get_file_info(pafs.FileSelector(p, allow_not_found=True, recursive=True))
    return sorted((i.path[len(p):].lstrip("/"), i.size) for i in infos if i.type == pafs.FileType.File)


def open_input(loc: str):
    """A readable binary stream (``with open_input(loc) as f: f.read()``).

    Raises:
        FileNotFoundError: nothing at ``loc``.
    """
    fs, p = resolve(loc)
    return fs.open_input_file(p)


def open_output(loc: str):
    """A writable binary stream that replaces ``loc`` when closed (parents are created on local disks).

    Raises:
        StorageError: the bucket does not exist or is not writable (pyarrow's message included).
    """
    fs, p = resolve(loc)
    if _is_local(fs):
        fs.create_dir(p.rsplit("/", 1)[0] or "/", recursive=True)
    try:
        return fs.open_output_stream(p)
    except OSError as e:
        raise StorageError(f"cannot write {loc}: {e}") from e


def read_bytes(loc: str) -> bytes:
    with open_input(loc) as f:
        return f.read()


def write_bytes(loc: str, data: bytes) -> None:
    with open_output(loc) as f:
        f.write(data)


def read_text(loc: str) -> str:
    return read_bytes(loc).decode("utf-8")


def write_text(loc: str, text: str) -> None:
    write_bytes(loc, text.encode("utf-8"))


def read_json(loc: str):
    return json.loads(read_bytes(loc))


def write_json(loc: str, obj, indent: int | None = 2) -> None:
    write_text(loc, json.dumps(obj, indent=indent, default=str))


def read_parquet(loc: str, **kwargs) -> pa.Table:
    """``pyarrow.parquet.read_table`` of one file (``columns=`` etc. pass through).

    Raises:
        FileNotFoundError: nothing at ``loc``.
    """
    fs, p = resolve(loc)
    return pq.read_table(p, filesystem=fs, **kwargs)


def write_parquet(table: pa.Table, loc: str, **kwargs) -> None:
    """``pyarrow.parquet.write_table`` into one object / file (parents are created on local disks)."""
    with open_output(loc) as f:
        pq.write_table(table, f, **kwargs)


def move(src: str, dst: str) -> None:
    """Rename a file (atomic on local disks; a server-side copy then delete on object stores, and the copy
    itself is atomic there: readers see the old object or the whole new one)."""
    fs, p = resolve(src)
    _, q = resolve(dst)
    fs.move(p, q)


def delete_file(loc: str, missing_ok: bool = True) -> None:
    fs, p = resolve(loc)
    try:
        fs.delete_file(p)
    except FileNotFoundError:
        if not missing_ok:
            raise


def delete_dir(loc: str, missing_ok: bool = True) -> None:
    """Delete a folder / prefix and everything under it.

    Raises:
        FileNotFoundError: it does not exist and ``missing_ok`` is False.
    """
    fs, p = resolve(loc)
    if fs.get_file_info(p).type == pafs.FileType.NotFound:
        if missing_ok:
            return
        raise FileNotFoundError(loc)
    fs.delete_dir(p)


def check_writable(loc: str, field: str) -> None:
    """Write and delete a probe object under ``loc``.

    Raises:
        StorageError: naming ``field``, when the bucket is missing or unreachable, or the folder is read-only.
    """
    probe = join(loc, ".write-test")
    try:
        makedirs(loc)
        write_bytes(probe, b"ok")
        delete_file(probe)
    except OSError as e:
        raise StorageError(f"{field} {loc} is not writable ({e}); pass --set {field}=... (a local folder, or "
                           "s3://bucket/prefix, gs://bucket/prefix with credentials in the environment)") from e
