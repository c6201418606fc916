"""Stage 1, encode: images -> SD-scaled VAE latents, as a Ray Data actor pool writing Parquet.

Artifact ``<run>/encode/`` (readable with plain pyarrow, no Ray needed):
- ``latents/status=ok/label=<c>/*.parquet``: columns ``id`` (string), ``error`` (string, empty),
  ``latent`` (``arrow.fixed_shape_tensor<float32>[C,h,w]``). Hive partition keys give ``status`` and ``label``.
- ``latents/status=skipped/label=<c>/*.parquet``: the same columns for rows that could not be used (undecodable
  image, non-finite latent); ``error`` says why and ``latent`` is zeros.
- ``meta.json``: VAE ref and kind, scaling/shift factor, image size, latent shape and mode.
- ``skipped.parquet``: ``id``, ``label``, ``error`` of every skipped row (also listed in ``results.json``).
- ``_SUCCESS.json``: counts (``input = encoded + skipped``, per class), fingerprint, wall time.
"""

from __future__ import annotations

import json
import logging
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from .config import RunConfig
from .data import decode_batch, read_split


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

log = logging.getLogger("ddoq_ray")
META = "meta.json"


class LatentMismatchError(ValueError):
    """Latents on disk were made by another VAE or at another shape than the run asks for."""


def latent_shape(vae_path: str, kind: str, image_size: int) -> tuple[int, int, int]:
    """``(C, h, w)`` of the latents for square images of ``image_size`` px, from the VAE config alone."""
    from diffusers import AutoencoderKL, AutoencoderTiny

    kind = vae_kind(vae_path, kind)
    cls = AutoencoderTiny if kind == "tiny" else AutoencoderKL
    sub = {"subfolder": "vae"} if (Path(vae_path) / "vae" / "config.json").is_file() else {}
    cfg = cls.load_config(vae_path, **sub)
    blocks = cfg.get("encoder_block_out_channels" if kind == "tiny" else "block_out_channels", [64] * 4)
    f = 2 ** (len(blocks) - 1)
    if image_size % f:
        raise ValueError(f"data.image_size={image_size} is not a multiple of the VAE's downsampling factor {f}")
    return (int(cfg.get("latent_channels", 4)), image_size // f, image_size // f)


def row_seed(seed: int, row_id: str) -> int:
    """Stable per-image seed (crc32 of the id), so sampled latents do not depend on batching or order."""
    return (seed * 1_000_003 + zlib.crc32(row_id.encode())) % (2**63)


def to_tensor_array(x: np.ndarray) -> pa.Array:
    """float32 ``[n, *shape]`` -> Arrow-native ``fixed_shape_tensor`` (shape kept in the Parquet schema)."""
    return pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(x, dtype=np.float32))


class VAEEncoder:
    """Ray Data callable class: loads the VAE once per actor, encodes decoded batches.

    Input batch: ``{id, label, image uint8 [n,H,W,3], ok bool, error str}`` (from :func:`data.decode_batch`).
    Output: a pyarrow Table ``{id, label, status ("ok"|"skipped"), error, latent}``.
    """

    def __init__(self, vae_path: str, kind: str, precision: str, latent: str, seed: int, shape, device: str,
                 num_threads: int | None):
        self.vae = load_vae(vae_path, kind, device, precision, num_threads)
        self.latent, self.seed, self.shape = latent, seed, tuple(shape)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        n = len(batch["id"])
        ok = np.array(batch["ok"], dtype=bool)
        errors = np.array(batch["error"], dtype=object)
        ids = [str(i) for i in batch["id"]]
        z = np.zeros((n, *self.shape), dtype=np.float32)
        idx = np.flatnonzero(ok)
        if idx.size:
            seeds = [row_seed(self.seed, ids[i]) for i in idx]
            zi = encode_images(self.vae, batch["image"][idx], self.latent, seeds)
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
        })


def run_encode(cfg: RunConfig, index: pa.Table, vae_path: str, out: Path, summary: dict) -> None:
    """Encode every row of ``index`` into ``out`` (see module docstring). Fills ``summary`` with counts."""
    import ray

    from .runtime import actor_device, configure_data

    ecfg, size = cfg.encode, cfg.data.image_size
    shape = latent_shape(vae_path, ecfg.vae_kind, size)
    device = actor_device(cfg.ray, ecfg.num_gpus_per_actor, "encode")
    configure_data(cfg.ray)  # before the Dataset is built
    threads = None if device == "cuda" else (ecfg.num_threads or max(1, round(ecfg.num_cpus_per_actor)))
    log.info("encode: %d images -> latents %s with %s on %s (%d-%d actors)", index.num_rows, shape, vae_path,
             device, ecfg.min_actors, ecfg.max_actors)
    ds = read_split(index, cfg.data.image_column)
    ds = ds.map_batches(decode_batch, fn_kwargs={"size": size}, batch_size=256, batch_format="numpy",
                        num_cpus=0.5)
    ds = ds.map_batches(
        VAEEncoder,
        fn_constructor_kwargs={"vae_path": vae_path, "kind": ecfg.vae_kind, "precision": ecfg.precision,
                               "latent": ecfg.latent, "seed": ecfg.seed, "shape": shape, "device": device,
                               "num_threads": threads},
        compute=ray.data.ActorPoolStrategy(min_size=ecfg.min_actors, max_size=ecfg.max_actors),
        batch_size=ecfg.batch_size, batch_format="numpy",
        num_cpus=ecfg.num_cpus_per_actor, num_gpus=ecfg.num_gpus_per_actor if device == "cuda" else None,
    )
    ds.write_parquet(str(out / "latents"), partition_cols=["status", "label"])
    meta = {"vae": cfg.encode.vae, "vae_path": vae_path, "vae_kind": vae_kind(vae_path, ecfg.vae_kind),
            "image_size": size, "latent_shape": list(shape), "latent": ecfg.latent}
    (out / META).write_text(json.dumps(meta, indent=2))
    summary.update(account(out, index))


def account(out: Path, index: pa.Table) -> dict:
    """Check ``input = encoded + skipped`` and unique ids; write ``skipped.parquet``; return the counts.

    Raises:
        RuntimeError: rows were lost or duplicated (a bug or a partial write: the stage is not committed).
    """
    t = scan(out, columns=["id", "label", "status", "error"])
    ids = t.column("id").to_numpy(zero_copy_only=False)
    if len(np.unique(ids)) != len(ids):
        raise RuntimeError(f"encode: {len(ids) - len(np.unique(ids))} duplicate ids in {out / 'latents'}")
    missing = set(index.column("id").to_pylist()) - set(ids.tolist())
    if missing or len(ids) != index.num_rows:
        raise RuntimeError(f"encode: input {index.num_rows} rows, wrote {len(ids)}; missing e.g. "
                           f"{sorted(missing)[:3]}")
    status = t.column("status").to_numpy(zero_copy_only=False)
    skipped = t.filter(pa.array(status == "skipped")).select(["id", "label", "error"])
    pq.write_table(skipped, out / "skipped.parquet")
    labels = t.column("label").to_numpy()
    per_class = {int(c): int(((labels == c) & (status == "ok")).sum()) for c in np.unique(labels)}
    return {"input": index.num_rows, "encoded": int((status == "ok").sum()), "skipped": int(len(skipped)),
            "encoded_per_class": per_class,
            "skipped_rows": [{"id": r["id"], "label": r["label"], "error": r["error"]}
                             for r in skipped.to_pylist()[:1000]]}


def scan(out: Path, columns: list[str] | None = None, status: str | None = None,
         label: int | None = None) -> pa.Table:
    """Read the latents table with plain pyarrow (hive partitions ``status``/``label`` become columns)."""
    part = pads.partitioning(pa.schema([("status", pa.string()), ("label", pa.int64())]), flavor="hive")
    ds = pads.dataset(str(Path(out) / "latents"), format="parquet", partitioning=part)
    flt = None
    if status is not None:
        flt = pads.field("status") == status
    if label is not None:
        f2 = pads.field("label") == label
        flt = f2 if flt is None else flt & f2
    return ds.to_table(columns=columns, filter=flt)


def read_class_latents(out: Path, label: int) -> tuple[list[str], np.ndarray]:
    """All usable latents of one class, sorted by id (deterministic regardless of write order).

    Returns:
        ``(ids, latents float32 [n, C, h, w])``.
    """
    t = scan(out, columns=["id", "latent"], status="ok", label=label)
    if t.num_rows == 0:
        return [], np.zeros((0,), dtype=np.float32)
    t = t.sort_by("id")
    col = t.column("latent").combine_chunks()
    return t.column("id").to_pylist(), col.to_numpy_ndarray().astype(np.float32, copy=False)


def read_meta(out: Path) -> dict:
    return json.loads((Path(out) / META).read_text())


def check_meta(meta: dict, vae: str, shape: tuple[int, ...]) -> None:
    """Refuse latents made by a different VAE or at a different shape than the decoder expects.

    Raises:
        LatentMismatchError: naming both values and how to fix it.
    """
    if meta["vae"] != vae or tuple(meta["latent_shape"]) != tuple(shape):
        raise LatentMismatchError(
            f"latents were made with VAE {meta['vae']!r} at shape {tuple(meta['latent_shape'])}, but the decoder is "
            f"{vae!r} at {tuple(shape)}; re-run the encode stage with the decoder's VAE (encode.vae) and image size")
