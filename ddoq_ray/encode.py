"""Stage 1, encode: images -> SD-scaled VAE latents, as one streaming Ray Data pipeline (read -> decode -> VAE actor
pool -> Parquet writer tasks) over every unfinished shard; the driver only counts rows and commits shards.

Artifact ``<run>/encode/<attempt>/`` (:func:`ddoq_ray.rundir.stage_path`; readable with plain pyarrow, no Ray needed):
- ``latents/shard=<s>/status=ok/label=<c>/*.parquet``: columns ``id`` (string), ``error`` (string, empty),
  ``latent`` (``arrow.fixed_shape_tensor<float32>[C,h,w]``). Hive partition keys give ``status`` and ``label``.
- ``latents/shard=<s>/status=skipped/label=<c>/*.parquet``: the same columns for rows that could not be used
  (undecodable image, non-finite latent); ``error`` says why and ``latent`` is zeros.
- ``meta.json``: VAE ref and kind, scaling/shift factor, image size, latent shape and mode.
- ``skipped.parquet``: ``id``, ``label``, ``error`` of every skipped row (also listed in ``results.json``).
- ``index.parquet``: the encoded index (``id``, ``label``, ``file``, ``row``; row groups of 2,048 rows), from which
  each read task takes its rows, so the driver ships row ranges, never the index.
- ``shards.json`` (the shard plan: row ranges of the input index and a hash of their ids) and ``done/<s>.json``
  (one marker per finished shard, written as its last rows are in; a resumed attempt re-encodes only the shards
  without one).
- ``<run>/encode/_SUCCESS.json`` (the commit, beside the attempt folder): counts (``input = encoded + skipped``,
  per class), ``shards``/``resumed_shards``/``encoded_shards``, fingerprint, wall time, live attempt.
"""

from __future__ import annotations

import hashlib
import logging
import time
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import storage
from .artifacts.latents import META, file_rows, scan_shard, shard_dirs, shard_files, to_tensor_array
from .config import RunConfig
from .data_ray import read_index_blocks
from .driver_memory import mark, release
from .id_checks import same_ids
from .images import decode_batch
from .index_file import ROWS_PER_GROUP, IndexFile, copy_columns, id_slice


# torch/diffusers load lazily: quantize tasks import this module only to read latents (saves ~0.6 GB per worker).
def encode_images(*args, **kwargs):
    from .vae import encode_images as impl

    return impl(*args, **kwargs)


def load_vae(*args, **kwargs):
    from .vae import load_vae as impl

    return impl(*args, **kwargs)


def vae_kind(*args, **kwargs):
    from .vae import vae_kind as impl

    return impl(*args, **kwargs)


def latent_shape(*args, **kwargs):
    from .vae import latent_shape as impl

    return impl(*args, **kwargs)

log = logging.getLogger("ddoq_ray")



def row_seed(seed: int, row_id: str) -> int:
    """Stable per-image seed (crc32 of the id), so sampled latents do not depend on batching or order."""
    return (seed * 1_000_003 + zlib.crc32(row_id.encode())) % (2**63)


class VAEEncoder:
    """Ray Data callable class: loads the VAE once per actor, encodes decoded batches.

    Input batch: ``{id, label, image uint8 [n,H,W,3], ok bool, error str}`` (from :func:`ddoq_ray.images.decode_batch`),
    optionally ``pos`` (int64 row of the input index). Output: a pyarrow Table ``{id, label, status ("ok"|"skipped"),
    error, latent}``, plus ``pos`` when given.
    """

    micro_batch: int | None = None  # the VAE's batch when a task holds several (encode.batches_per_task)

    def __init__(self, vae_path: str, kind: str, precision: str, latent: str, seed: int, shape, device: str,
                 num_threads: int | None, micro_batch: int | None = None):
        self.vae = load_vae(vae_path, kind, device, precision, num_threads)
        self.latent, self.seed, self.shape = latent, seed, tuple(shape)
        self.micro_batch = micro_batch

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        n = len(batch["id"])
        ok = np.array(batch["ok"], dtype=bool)
        errors = np.array(batch["error"], dtype=object)
        ids = [str(i) for i in batch["id"]]
        z = np.zeros((n, *self.shape), dtype=np.float32)
        idx = np.flatnonzero(ok)
        if idx.size:
            seeds = [row_seed(self.seed, ids[i]) for i in idx]
            step = self.micro_batch or len(idx)
            zi = np.concatenate([encode_images(self.vae, batch["image"][idx[a:a + step]], self.latent,
                                               seeds[a:a + step]) for a in range(0, len(idx), step)])
            finite = np.isfinite(zi).reshape(len(idx), -1).all(axis=1)
            z[idx[finite]] = zi[finite]
            ok[idx[~finite]] = False
            errors[idx[~finite]] = "non-finite latent (NaN/Inf) from the VAE"
        return pa.table({
            "id": pa.array(ids, pa.string()),
            "label": pa.array(np.asarray(batch["label"], dtype=np.int64)),
            "status": pa.array(np.where(ok, "ok", "skipped").tolist(), pa.string()),
            "error": pa.array([str(e) for e in errors], pa.string()),
            "latent": to_tensor_array(z),
            **({"pos": pa.array(np.asarray(batch["pos"], dtype=np.int64))} if "pos" in batch else {}),
        })


def plan_shards(index: pa.Table | IndexFile, shard_rows: int) -> list[dict]:
    """Deterministic shards of the index (in memory or on disk): contiguous row ranges of ``shard_rows`` rows
    (the index itself is in a fixed order: files sorted, rows in file order).

    Returns:
        ``[{"id": "00000", "start": int, "stop": int, "sha1": hex of the shard's ids}]``; a resumed attempt is only
        reused shard by shard when this plan is identical (same rows in the same shards).
    """
    out, n = [], index.num_rows
    for i, start in enumerate(range(0, n, shard_rows)):
        # Python strings for one shard at a time, not all 1.28 M
        chunk = id_slice(index, start, min(n, start + shard_rows)).to_pylist()
        out.append({"id": f"{i:05d}", "start": start, "stop": start + len(chunk),
                    "sha1": hashlib.sha1("\n".join(chunk).encode("utf-8", "surrogatepass")).hexdigest()})
    return out


def write_shard_marker(out: str, shard: dict, counts: dict) -> None:
    """The shard's done marker ``done/<id>.json``, written after all its Parquet files (the shard's commit)."""
    storage.write_json(storage.join(out, "done", f"{shard['id']}.json"), {**shard, **counts, "at": time.time()})


def shard_counts(out: str, sid: str, rows: int) -> dict:
    """``{"rows", "encoded", "skipped"}`` of one written shard folder ``out/latents/shard=<sid>``.

    Raises:
        RuntimeError: the shard holds another number of rows than it was given (not marked done, so redone).
    """
    n = ok = 0
    for loc, st, _ in shard_files(out, sid):  # footers only: the folder names give status (artifacts.latents)
        m = file_rows(loc)
        n, ok = n + m, ok + (m if st == "ok" else 0)
    if n != rows:
        raise RuntimeError(f"encode: shard {sid} of {out}/latents has {n} rows, expected {rows}")
    return {"rows": rows, "encoded": ok, "skipped": rows - ok}


ROWS_PER_BLOCK = ROWS_PER_GROUP  # read blocks on the index file's row-group grid (one home: index_file)


def todo_blocks(todo: list[dict], rows_per_block: int = ROWS_PER_BLOCK) -> list[list[tuple[int, int]]]:
    """The rows of the shards ``todo`` as read blocks cut at multiples of ``rows_per_block`` of the whole index,
    each block a list of row ranges ``[start, stop)`` of the index, so a fresh run gets the blocks, hence the
    encoder batches, of a one-shard run whatever ``shard_rows`` is; a block may hold rows of two shards."""
    blocks: dict[int, list[tuple[int, int]]] = {}
    for s in todo:
        a = s["start"]
        while a < s["stop"]:
            grid = a // rows_per_block
            b = min(s["stop"], (grid + 1) * rows_per_block)
            rs = blocks.setdefault(grid, [])
            if rs and rs[-1][1] == a:  # adjacent shards: one range
                rs[-1] = (rs[-1][0], b)
            else:
                rs.append((a, b))
            a = b
    return [blocks[g] for g in sorted(blocks)]


def write_index(out: str, index: pa.Table | IndexFile) -> str:
    """``<attempt>/index.parquet``: the encoded index (``id, label, file, row``; row groups on the read-block grid),
    which the read tasks take their rows from (:func:`ddoq_ray.data_ray.read_index_blocks`); also the record of what
    this attempt encoded. An :class:`IndexFile` is copied a row group at a time. Returns its location."""
    loc = storage.join(out, "index.parquet")
    cols = ["id", "label", "file", "row"]
    if isinstance(index, IndexFile):
        copy_columns(index, loc, cols)
    else:
        storage.write_parquet(index.select(cols), loc, row_group_size=ROWS_PER_BLOCK)
    return loc


def decode_rows(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """:func:`ddoq_ray.images.decode_batch`, keeping the index position ``pos`` for the writer."""
    return {**decode_batch(batch, size), "pos": batch["pos"]}


def write_rows(batch: pa.Table, out: str, starts: list[int], ids: list[str]) -> pa.Table:
    """Write one block of encoded rows into ``out/latents/shard=<s>/status=<st>/label=<c>/<key>.parquet``.

    The shard of a row is the plan shard whose row range holds its ``pos`` (``starts``: each shard's first row,
    ascending; ``ids``: their ids). The file name is a hash of the group's ids, so a retried task (a lost node)
    overwrites its own files instead of adding duplicates. Files hold ``id``, ``error``, ``latent``; ``status``
    and ``label`` are hive partition keys, as Ray Data's partitioned ``write_parquet`` wrote them.

    Returns:
        ``{shard: string, rows: int64, encoded: int64}``: one row per shard in the block, for the driver's count.
    """
    shard = np.searchsorted(np.asarray(starts), batch.column("pos").to_numpy(), side="right") - 1
    status = batch.column("status").to_numpy(zero_copy_only=False)
    labels = batch.column("label").to_numpy()
    body = batch.select(["id", "error", "latent"])
    keys = np.unique(np.stack([shard, labels, status == "ok"], axis=1), axis=0)
    for s, c, ok in keys.tolist():
        rows = np.flatnonzero((shard == s) & (labels == c) & ((status == "ok") == bool(ok)))
        part = body.take(pa.array(rows))
        key = hashlib.sha1("\n".join(part.column("id").to_pylist()).encode("utf-8", "surrogatepass")).hexdigest()
        st = "ok" if ok else "skipped"
        storage.write_parquet(part, storage.join(out, "latents", f"shard={ids[s]}", f"status={st}", f"label={c}",
                                                 f"{key[:20]}.parquet"))
    present = np.unique(shard)
    return pa.table({"shard": pa.array([ids[s] for s in present], pa.string()),
                     "rows": pa.array([int((shard == s).sum()) for s in present], pa.int64()),
                     "encoded": pa.array([int(((shard == s) & (status == "ok")).sum()) for s in present],
                                         pa.int64())})


def encode_stream(cfg: RunConfig, index_loc: str, todo: list[dict], vae_path: str, shape, device: str,
                  out: str):
    """One Ray Data pipeline over the rows of every shard in ``todo``: read -> decode -> encoder actor pool (started
    once for the whole run) -> :func:`write_rows` tasks; the read tasks take their rows from the attempt's index
    file ``index_loc`` (:func:`write_index`). Yields the per-block counts of :func:`write_rows` as
    their files are written (pyarrow Tables), so the driver holds counts only, never latents."""
    import ray

    ecfg = cfg.encode
    threads = None if device == "cuda" else (ecfg.num_threads or max(1, round(ecfg.num_cpus_per_actor)))
    # Tasks of several encoder batches: Ray Data keeps a stats record per task output block in the driver for the
    # whole run (ray-project/ray#66016), ~35 bytes per row at 128 rows per task (docs/benchmarks.md, stand-in).
    rows_per_task = ecfg.batch_size * ecfg.batches_per_task
    ds = read_index_blocks(index_loc, todo_blocks(todo), cfg.data.image_column)
    ds = ds.map_batches(decode_rows, fn_kwargs={"size": cfg.data.image_size}, batch_size=rows_per_task,
                        batch_format="numpy", num_cpus=0.5)
    ds = ds.map_batches(
        VAEEncoder,
        fn_constructor_kwargs={"vae_path": vae_path, "kind": ecfg.vae_kind, "precision": ecfg.precision,
                               "latent": ecfg.latent, "seed": ecfg.seed, "shape": shape, "device": device,
                               "num_threads": threads, "micro_batch": ecfg.batch_size},
        compute=ray.data.ActorPoolStrategy(min_size=ecfg.min_actors, max_size=ecfg.max_actors),
        batch_size=rows_per_task, batch_format="numpy",
        num_cpus=ecfg.num_cpus_per_actor, num_gpus=ecfg.num_gpus_per_actor if device == "cuda" else None,
    )
    # Writer batches of a shard's size: the files are one per (shard, label, status) and batch, so 128-row
    # encoder blocks of a shuffled 1,000-class split made ~1 file per row (docs/benchmarks.md, stand-in run).
    ds = ds.map_batches(write_rows, fn_kwargs={"out": out, "starts": [s["start"] for s in todo],
                                               "ids": [s["id"] for s in todo]},
                        batch_size=ecfg.shard_rows, batch_format="pyarrow", num_cpus=0.25)
    yield from ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0)


def commit_shards(counts, out: str, todo: list[dict]) -> None:
    """Write each shard's done marker as soon as the per-block ``counts`` (from :func:`encode_stream`) add up to
    its rows, after checking the shard's files hold exactly them (:func:`shard_counts`).

    Raises:
        RuntimeError: a shard got more rows than it has, or the stream ended with shards short of rows.
    """
    by_id = {s["id"]: s for s in todo}
    seen = dict.fromkeys(by_id, 0)
    total, done, t0 = sum(s["stop"] - s["start"] for s in todo), 0, time.perf_counter()
    for block in counts:
        for sid, n in zip(block.column("shard").to_pylist(), block.column("rows").to_pylist(), strict=True):
            seen[sid] += n
            s = by_id[sid]
            rows = s["stop"] - s["start"]
            if seen[sid] > rows:
                raise RuntimeError(f"encode: shard {sid} got {seen[sid]} rows, expected {rows}")
            if seen[sid] == rows:
                write_shard_marker(out, s, shard_counts(out, sid, rows))
                release()  # the footers of the shard's ~1,000 files
                done += rows
                log.info("encode: shard %s done (%d/%d images of this run, %.0f img/s)", sid, done, total,
                         done / max(time.perf_counter() - t0, 1e-9))
                mark("encode: shard done", shard=sid)
    short = {sid: n for sid, n in seen.items() if n != by_id[sid]["stop"] - by_id[sid]["start"]}
    if short:
        raise RuntimeError(f"encode: the stream ended with shards short of rows: {dict(list(short.items())[:5])}")


def run_encode(cfg: RunConfig, index: pa.Table | IndexFile, vae_path: str, out: str, summary: dict) -> None:
    """Encode every row of ``index`` into the attempt folder ``out`` (see module docstring), shard by shard.

    ``index`` is copied to ``<out>/index.parquet`` first, and the shard plan, the read tasks and the accounting
    all read that one copy, so the driver holds one shard's ids at a time, never the index.

    Shards that already have a done marker in ``out`` (an attempt resumed after a crash) are kept; the others are
    (re-)encoded in one streaming pipeline (:func:`encode_stream`: the actors start and load the model once per
    run), each marked done as its last rows are written (:func:`commit_shards`). Fills ``summary`` with counts,
    ``shards``, ``resumed_shards`` and ``encoded_shards``.
    """
    from .runtime import actor_device, configure_data

    ecfg, size = cfg.encode, cfg.data.image_size
    shape = latent_shape(vae_path, ecfg.vae_kind, size)
    device = actor_device(cfg.ray, ecfg.num_gpus_per_actor, "encode")
    configure_data(cfg.ray)  # before the Datasets are built
    index_loc = write_index(out, index)
    index = IndexFile(index_loc)
    plan = plan_shards(index, ecfg.shard_rows)
    plan_loc = storage.join(out, "shards.json")
    if storage.is_file(plan_loc) and storage.read_json(plan_loc) != plan:  # other rows or shard size: start over
        log.info("encode: the shard plan changed since the interrupted attempt; re-encoding every shard")
        for sub in ("latents", "done"):
            storage.delete_dir(storage.join(out, sub))
    storage.write_json(plan_loc, plan)
    done = set(storage.listdir(storage.join(out, "done")))
    todo = [s for s in plan if f"{s['id']}.json" not in done]
    log.info("encode: %d images in %d shards (%d done before) -> latents %s with %s on %s (%d-%d actors)",
             index.num_rows, len(plan), len(plan) - len(todo), shape, vae_path, device, ecfg.min_actors,
             ecfg.max_actors)
    for s in todo:
        storage.delete_dir(storage.join(out, "latents", f"shard={s['id']}"))  # partial files of a killed attempt
    if todo:
        stream = encode_stream(cfg, index_loc, todo, vae_path, shape, device, out)
        try:
            commit_shards(stream, out, todo)
        finally:
            stream.close()  # stops the pipeline (and its actors) when a marker fails or the driver is interrupted
    meta = {"vae": cfg.encode.vae, "vae_path": vae_path, "vae_kind": vae_kind(vae_path, ecfg.vae_kind),
            "image_size": size, "latent_shape": list(shape), "latent": ecfg.latent}
    storage.write_json(storage.join(out, META), meta)
    mark("encode: stream done")
    summary.update(account(out, index, plan))
    mark("encode: accounted")
    summary.update({"shards": len(plan), "resumed_shards": len(plan) - len(todo), "encoded_shards": len(todo)})


def account(out: str, index: pa.Table | IndexFile, plan: list[dict]) -> dict:
    """Check ``input = encoded + skipped`` shard by shard: each shard's files hold exactly the ids of its plan rows
    (no id missing, none twice; the index's ids are unique, checked when it was listed, so no id is in two
    shards). Write ``skipped.parquet``; return the counts.

    One shard's rows are read at a time, so the driver holds a shard's ids, never a second copy (or a hash table)
    of all of them (docs/benchmarks.md, stand-in run).

    Raises:
        RuntimeError: rows were lost or duplicated (a bug or a partial write: the stage is not committed).
    """
    stray = sorted(set(shard_dirs(storage.join(out, "latents"))) - {f"shard={s['id']}" for s in plan})
    if stray:
        raise RuntimeError(f"encode: {out}/latents holds shards that are not in the plan: {stray[:3]}")
    encoded, per_class, seen, skipped = 0, {}, set(), []
    for s in plan:
        t = scan_shard(out, s["id"], columns=["id", "label", "status", "error"])
        missing, extra = same_ids(t.column("id"), id_slice(index, s["start"], s["stop"]))
        if missing or extra:
            raise RuntimeError(f"encode: shard {s['id']} of {out}/latents holds {t.num_rows} rows for "
                               f"{s['stop'] - s['start']} inputs: missing e.g. {missing[:3]}, unexpected or "
                               f"duplicate e.g. {extra[:3]}")
        labels = t.column("label").to_numpy()
        ok = pc.equal(t.column("status"), "ok").to_numpy(zero_copy_only=False)
        seen.update(np.unique(labels).tolist())
        for c, n in zip(*np.unique(labels[ok], return_counts=True), strict=True):
            per_class[int(c)] = per_class.get(int(c), 0) + int(n)
        encoded += int(ok.sum())
        if not ok.all():
            skipped.append(t.filter(pa.array(~ok)).select(["id", "label", "error"]))
        del t
        release()  # one shard's files read: without this the driver kept ~280 bytes per latent file
    skipped_t = (pa.concat_tables(skipped) if skipped else
                 pa.table({"id": pa.array([], pa.string()), "label": pa.array([], pa.int64()),
                           "error": pa.array([], pa.string())}))
    storage.write_parquet(skipped_t, storage.join(out, "skipped.parquet"))
    return {"input": index.num_rows, "encoded": encoded, "skipped": int(skipped_t.num_rows),
            "encoded_per_class": {c: per_class.get(c, 0) for c in sorted(seen)},
            "skipped_rows": [{"id": r["id"], "label": r["label"], "error": r["error"]}
                             for r in skipped_t.slice(0, 1000).to_pylist()]}


def encode_stage(run, out: str, summary: dict) -> None:
    """The registered ``encode`` stage (:mod:`ddoq_ray.stages`): the run's whole train index."""
    run_encode(run.cfg, run.train_index_file, run.vae_path, out, summary)
