"""The sha256 of every output file of a run directory (the report's "Output files" table), on any filesystem
:mod:`ddoq_ray.storage` reads; the encode stage's latent shards are hashed by their listing, not re-read."""

from __future__ import annotations

import hashlib

from . import storage


def sha256_files(run_dir: str, skip: tuple[str, ...] = ("report", "train/ray")) -> list[tuple[str, str, int]]:
    """``(relative path, sha256 hex, bytes)`` of every file in the run (any filesystem), except the report and
    Ray Train scratch (``train/<attempt>/ray/``).

    The encode stage's latents (``encode/<attempt>/latents/shard=<s>/``: one file per shard, class and status,
    252,364 files for the ImageNet-shaped stand-in and tens of GB of SD-VAE latents at ImageNet size) are one row
    per shard whose digest is the sha256 of its files' ``path<TAB>bytes`` lines: their contents are not re-read at
    every report (each shard's ids are hashed in ``shards.json`` and its rows counted at the encode commit), and
    the driver lists one shard at a time (a listing of every latent file held ~1 KB per file, docs/benchmarks.md).
    """
    out = []
    for top in storage.listdir(run_dir):
        if top.startswith(".") or top.startswith(skip):
            continue
        if storage.is_file(storage.join(run_dir, top)):
            out.append(_sha256_row(run_dir, top, None))
            continue
        for rel, size in _walk_outside_latents(run_dir, top, out):
            parts = rel.split("/")
            scratch = parts[0] in ("train", "matrix") and "ray" in parts[1:3]
            if rel.startswith(skip) or scratch or any(p.startswith(".") for p in parts):
                continue
            out.append(_sha256_row(run_dir, rel, size))
    return sorted(out)


def _sha256_row(run_dir: str, rel: str, size: int | None) -> tuple[str, str, int]:
    h, n = hashlib.sha256(), 0
    with storage.open_input(storage.join(run_dir, rel)) as f:
        for chunk in iter(lambda f=f: f.read(1 << 20), b""):
            h.update(chunk)
            n += len(chunk)
    return rel, h.hexdigest(), size if size is not None else n


def _walk_outside_latents(run_dir: str, top: str, rows: list) -> list[tuple[str, int]]:
    """``(relative path, bytes)`` of the files under ``run_dir/top``; for ``encode``, each attempt's
    ``latents/shard=<s>/`` is instead appended to ``rows`` as one ``(folder/ (n files), digest, bytes)`` row."""
    if top != "encode":
        return [(f"{top}/{rel}", size) for rel, size in storage.walk_files(storage.join(run_dir, top))]
    files = []
    for att in storage.listdir(storage.join(run_dir, top)):
        base = f"{top}/{att}"
        if storage.is_file(storage.join(run_dir, base)):
            files.append((base, None))
            continue
        for name in storage.listdir(storage.join(run_dir, base)):
            loc = storage.join(run_dir, base, name)
            if name != "latents":
                files += ([(f"{base}/{name}", None)] if storage.is_file(loc) else
                          [(f"{base}/{name}/{rel}", size) for rel, size in storage.walk_files(loc)])
                continue
            for shard in storage.listdir(loc):
                listed = storage.walk_files(storage.join(loc, shard))
                digest = hashlib.sha256("".join(f"{r}\t{b}\n" for r, b in listed).encode()).hexdigest()
                rows.append((f"{base}/latents/{shard}/ ({len(listed)} files: names and sizes hashed)", digest,
                             sum(b for _, b in listed)))
    return files
