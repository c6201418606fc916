"""Stage 3, decode: centroids -> synthetic images, as a Ray Data actor pool.

Modes (``decode.mode``; the per-image work is in :mod:`ddoq_ray.diffusion`):
- ``vae``: the encode stage's own VAE decoder, ``x_k = D(c_k)`` (DDOQ §3 with no diffusion refinement).
- ``sd_img2img``: Stable Diffusion img2img from the centroid (D4M / DDOQ-UNet: strength 0.7, guidance 8, 50 steps).
- ``dit``: class-conditional DiT partial denoising from the centroid with classifier-free guidance (DDOQ-DiT).
For the diffusion modes the centroids must live in the decode model's latent space: ``encode.vae`` must be
``decode.model`` (the encoder loads its ``vae/``) or one of ``decode.compatible_vaes``, else
:class:`~ddoq_ray.encode.LatentMismatchError`.

Artifact ``<run>/decode/<attempt>/`` (:func:`ddoq_ray.rundir.stage_path`; any filesystem, written by the driver):
- ``synthetic/<class name>/<label>_<k>.png`` (``<label>_<k>_<copy>.png`` when ``images_per_centroid`` > 1):
  ImageFolder layout, usable by any trainer; when several clusterings are decoded (the configured decoded
  methods', :func:`ddoq_ray.artifacts.method_presets.decoded_algorithms`), one such tree per clustering under
  ``synthetic/<algorithm>/``.
- ``manifest.parquet``: ``path`` (relative to ``synthetic/``), ``algorithm`` (the clustering), ``label`` int64,
  ``class_name``, ``k`` int32,
  ``copy`` int32, ``count`` int64, ``mass`` float64 (the centroid's cell mass), ``weight_mass`` float64
  (= mass / images_per_centroid, the image's weight), ``mode``, ``model`` (decoder id), ``strength``,
  ``guidance_scale``, ``steps`` (scheduler steps), ``denoise_steps`` (steps that ran), ``seed`` int64 (the
  image's own seed). ``vae`` mode records strength/guidance/steps as 0.
- ``grid.png``: one row per class (up to 20 classes), images ordered by mass, heaviest first.
"""

from __future__ import annotations

import io
import json
import logging
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from . import storage
from .artifacts.latents import LatentMismatchError
from .config import ConfigError, DecodeConfig, RunConfig
from .diffusion import DiffusionSettings, image_seed, kept_steps, load_decoder

log = logging.getLogger("ddoq_ray")
# Hub DiT checkpoints whose transformer config is not readable offline: latent side from the id's resolution.
DIT_RES = re.compile(r"DiT-[A-Za-z]+-\d+-(\d+)")


def safe_name(name: str) -> str:
    """A class name usable as a folder name on every OS (spaces and odd characters become ``_``)."""
    s = re.sub(r"[^\w.-]+", "_", name).strip("._")
    return s or "class"


def to_png(image: np.ndarray, size: int | None = None) -> bytes:
    """uint8 ``[H, W, 3]`` -> PNG bytes, resized (Lanczos) to ``size`` px when given."""
    im = Image.fromarray(image)
    if size and im.size != (size, size):
        im = im.resize((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def settings_of(dcfg: DecodeConfig) -> DiffusionSettings:
    return DiffusionSettings(dcfg.mode, dcfg.strength, dcfg.guidance_scale, dcfg.num_inference_steps, dcfg.scheduler,
                             dcfg.prompt_template, dcfg.negative_prompt, dcfg.guidance_channels)


def model_ref(cfg: RunConfig) -> str:
    """The decoder's id as written in the config (``encode.vae`` for ``vae`` mode)."""
    return cfg.encode.vae if cfg.decode.mode == "vae" else str(cfg.decode.model)


def check_vae_compat(cfg: RunConfig) -> None:
    """The encode stage must use the decode model's own VAE (or a declared compatible one).

    Raises:
        LatentMismatchError: naming both ids and how to fix the config.
    """
    d = cfg.decode
    if d.mode == "vae" or cfg.encode.vae in {d.model, *d.compatible_vaes}:
        return
    allowed = ", ".join(repr(x) for x in [d.model, *d.compatible_vaes])
    raise LatentMismatchError(
        f"decode.mode={d.mode!r} denoises in the latent space of {d.model!r}, but encode.vae={cfg.encode.vae!r}; "
        f"set encode.vae to one of {allowed} (the model id loads its vae/ subfolder), or list "
        f"{cfg.encode.vae!r} in decode.compatible_vaes if it shares that model's encoder, and re-run encode")


def prompt_names(classes: list[str]) -> list[str]:
    """Class names for prompts: ImageNet WNIDs become their synonyms (``n01440764`` -> ``tench, Tinca tinca``; the
    two ``crane`` classes ``crane (bird)`` / ``crane (machine)``, :func:`ddoq_ray.classlists.imagenet_names`)."""
    from .classlists import imagenet_names

    names = imagenet_names()
    return [names.get(c, c) for c in classes]


def check_prompt_names(classes: list[str], allow_numeric: bool = False) -> None:
    """Refuse SD prompts made of bare label numbers (``"a photo of a 3"``): the data had no class names.

    Raises:
        ConfigError: some class names are digits only and ``decode.allow_numeric_prompts`` is off; the message
            names ``data.classes``.
    """
    numeric = [c for c in classes if c.strip().isdigit()]
    if numeric and not allow_numeric:
        raise ConfigError(
            f"decode.mode='sd_img2img' would prompt with bare label numbers ({', '.join(map(repr, numeric[:5]))}"
            f"{' ...' if len(numeric) > 5 else ''}): the data has no class names (no data.classes, no classes.json "
            "beside the split, no Hugging Face ClassLabel names in its Parquet metadata); set data.classes to the "
            "class names (a list in label order, or a classes.json path), or decode.allow_numeric_prompts=true to "
            "prompt with the numbers anyway")


def class_id_map(class_ids: list[int] | str | None, classes: list[str],
                 class_subset: list[int] | None = None) -> list[int] | None:
    """Model label id per run label (DiT), or None for identity.

    ``None``: when every class name is an ImageNet-1K WNID, its ImageNet index; else the class's label in the
    dataset (``class_subset[c]`` when ``data.class_subset`` keeps some classes, identity without one), i.e. the
    dataset's label order is taken to be the model's (an ImageNet Parquet with names such as ``tench``). A list is
    indexed by run label. A JSON file holds such a list, or a dict keyed by run label (``"0"``) or class name (e.g.
    a WNID).

    Args:
        classes: the run's class names in run-label order (after ``class_subset``).
        class_subset: ``data.class_subset``: the dataset label of each run label.
    Raises:
        ValueError: wrong length, or a class missing from a dict.
    """
    from .classlists import imagenet_index, is_wnid

    if class_ids is None:
        index = imagenet_index()
        if classes and all(is_wnid(c) and c in index for c in classes):
            return [index[c] for c in classes]
        if class_subset is not None:
            if len(class_subset) != len(classes):
                raise ValueError(f"data.class_subset keeps {len(class_subset)} labels but there are {len(classes)} "
                                 "run classes")
            return [int(c) for c in class_subset]
        return None
    ids = class_ids
    if isinstance(class_ids, str):
        try:
            ids = storage.read_json(class_ids)  # a local path or a URI
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"decode.class_ids {class_ids!r}: cannot read a JSON list/dict ({e})") from e
        if isinstance(ids, dict):
            missing = [c for i, c in enumerate(classes) if str(i) not in ids and c not in ids]
            if missing:
                raise ValueError(f"decode.class_ids {class_ids!r}: no entry for classes {missing[:5]}")
            ids = [int(ids[str(i)] if str(i) in ids else ids[c]) for i, c in enumerate(classes)]
    if not isinstance(ids, list) or len(ids) != len(classes):
        raise ValueError(f"decode.class_ids: {len(ids) if isinstance(ids, list) else 'no'} ids for "
                         f"{len(classes)} classes; give one model label id per class (run label order)")
    return [int(i) for i in ids]


def _dit_sample_size(model_path: str, ref: str) -> int | None:
    """``transformer.config.sample_size`` (latent side) from a local config, else from a hub id like ``-256``."""
    cfg = Path(model_path) / "transformer" / "config.json"
    if cfg.is_file():
        return int(json.loads(cfg.read_text())["sample_size"])
    m = DIT_RES.search(ref)
    return int(m.group(1)) // 8 if m else None


def check_model_shape(mode: str, model_path: str, ref: str, shape: tuple[int, ...]) -> None:
    """A DiT only accepts latents of its ``sample_size`` (fixed positional embedding); UNets take any multiple.

    Raises:
        LatentMismatchError: the centroids' ``(C, h, w)`` does not fit the model.
    """
    if mode != "dit":
        return
    side = _dit_sample_size(model_path, ref)
    if side is not None and tuple(shape[1:]) != (side, side):
        raise LatentMismatchError(
            f"decode.model {ref!r} takes {side}x{side} latents ({side * 8} px with an f=8 VAE) but the centroids "
            f"are {tuple(shape)}; set data.image_size so that image_size / f = {side} and re-run encode")


class CentroidDecoder:
    """Ray Data callable class: ``{algorithm, label, k, copy, seed, centroid}`` batch -> ``{algorithm, label, k,
    copy, png}``."""

    def __init__(self, settings: dict, model_path: str, class_names: list[str], model_labels: list[int] | None,
                 device: str, precision: str, vae_kind: str, output_size: int | None, num_threads: int | None):
        self.decoder = load_decoder(DiffusionSettings(**settings), model_path, class_names=class_names,
                                    model_labels=model_labels, device=device, precision=precision,
                                    vae_kind=vae_kind, num_threads=num_threads)
        self.output_size = output_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        labels = [int(x) for x in batch["label"]]
        images = self.decoder.decode(np.stack(batch["centroid"]), labels, [int(s) for s in batch["seed"]])
        png = np.array([to_png(im, self.output_size) for im in images], dtype=object)
        return {"algorithm": batch["algorithm"], "label": batch["label"], "k": batch["k"], "copy": batch["copy"],
                "png": png}


def with_algorithm(centroids: pa.Table) -> pa.Table:
    """``centroids`` with an ``algorithm`` column (``lloyd`` for a table written before issue 14)."""
    if "algorithm" in centroids.column_names:
        return centroids
    return centroids.append_column("algorithm", pa.array(["lloyd"] * centroids.num_rows, pa.string()))


def expand_copies(centroids: pa.Table, copies: int, seed: int) -> pa.Table:
    """One row per output image: ``algorithm, label, k, copy, seed, centroid`` (each centroid repeated ``copies``
    times; ``algorithm`` ``lloyd`` when the table has none). Image seeds do not depend on the algorithm."""
    centroids = with_algorithm(centroids)
    t = centroids.select(["algorithm", "label", "k", "centroid"])
    t = t.take(pa.array(np.repeat(np.arange(t.num_rows), copies)))
    copy = np.tile(np.arange(copies, dtype=np.int32), centroids.num_rows)
    seeds = [image_seed(seed, int(lab), int(k), int(c))
             for lab, k, c in zip(t.column("label").to_pylist(), t.column("k").to_pylist(), copy, strict=True)]
    return t.append_column("copy", pa.array(copy)).append_column("seed", pa.array(seeds, pa.int64()))


def make_grid(manifest: pa.Table, root: str, max_classes: int = 20, cell: int = 64) -> Image.Image:
    """Rows = classes, columns = images ordered by mass (heaviest left); ``root`` is the ``synthetic/`` location."""
    rows = manifest.to_pylist()
    labels = sorted({r["label"] for r in rows})[:max_classes]
    k_max = max(sum(r["label"] == c for r in rows) for c in labels)
    grid = Image.new("RGB", (k_max * cell, len(labels) * cell), "white")
    for i, c in enumerate(labels):
        cls = sorted((r for r in rows if r["label"] == c), key=lambda r: -r["mass"])
        for j, r in enumerate(cls):
            with Image.open(io.BytesIO(storage.read_bytes(storage.join(root, r["path"])))) as im:
                grid.paste(im.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST), (j * cell, i * cell))
    return grid


def run_decode(cfg: RunConfig, centroids: pa.Table, classes: list[str], vae_path: str, out: str,
               summary: dict) -> None:
    """Decode every centroid (``images_per_centroid`` times) through an actor pool; the driver writes PNGs and the
    manifest.

    Args:
        vae_path: the resolved ``encode.vae`` (the decoder in ``vae`` mode).
    Raises:
        LatentMismatchError: encode VAE or latent shape does not fit the decode model.
        ConfigError: ``sd_img2img`` with bare label numbers as class names (:func:`check_prompt_names`).
    """
    import ray
    from tqdm.auto import tqdm

    from .assets import assets_root, resolve
    from .runtime import actor_device, configure_data

    dcfg = cfg.decode
    check_vae_compat(cfg)
    if dcfg.mode == "sd_img2img":
        check_prompt_names(classes, dcfg.allow_numeric_prompts)
    model_path = vae_path if dcfg.mode == "vae" else resolve(str(dcfg.model), assets_root(cfg.assets_root), "model")
    shape = tuple(centroids.schema.field("centroid").type.shape)
    check_model_shape(dcfg.mode, model_path, model_ref(cfg), shape)
    device = actor_device(cfg.ray, dcfg.num_gpus_per_actor, "decode")
    configure_data(cfg.ray)  # before the Dataset is built
    threads = None if device == "cuda" else max(1, round(dcfg.num_cpus_per_actor))
    n_copy = dcfg.images_per_centroid
    table = expand_copies(centroids, n_copy, dcfg.seed)
    labels_map = class_id_map(dcfg.class_ids, classes, cfg.data.class_subset) if dcfg.mode == "dit" else None
    log.info("decode: %d centroids x %d -> images, mode %s with %s on %s", centroids.num_rows, n_copy, dcfg.mode,
             model_path, device)
    ds = ray.data.from_arrow(table).map_batches(
        CentroidDecoder,
        fn_constructor_kwargs={"settings": asdict(settings_of(dcfg)), "model_path": model_path,
                               "class_names": prompt_names(classes), "model_labels": labels_map, "device": device,
                               "precision": cfg.encode.precision, "vae_kind": cfg.encode.vae_kind,
                               "output_size": dcfg.output_size, "num_threads": threads},
        compute=ray.data.ActorPoolStrategy(size=dcfg.num_actors), batch_size=dcfg.batch_size, batch_format="numpy",
        num_cpus=dcfg.num_cpus_per_actor, num_gpus=dcfg.num_gpus_per_actor if device == "cuda" else None,
    )
    root = storage.join(out, "synthetic")
    centroids = with_algorithm(centroids)
    meta = {(r["algorithm"], int(r["label"]), int(r["k"])): r
            for r in centroids.select(["algorithm", "label", "k", "count", "mass"]).to_pylist()}
    seeds = {(r["algorithm"], r["label"], r["k"], r["copy"]): r["seed"]
             for r in table.select(["algorithm", "label", "k", "copy", "seed"]).to_pylist()}
    several = len({a for a, _, _ in meta}) > 1
    diffusion = dcfg.mode != "vae"
    fixed = {"mode": dcfg.mode, "model": model_ref(cfg), "strength": dcfg.strength if diffusion else 0.0,
             "guidance_scale": dcfg.guidance_scale if diffusion else 0.0,
             "steps": dcfg.num_inference_steps if diffusion else 0,
             "denoise_steps": kept_steps(dcfg.num_inference_steps, dcfg.strength) if diffusion else 0}
    rows = []
    with tqdm(total=table.num_rows, desc=f"decode ({dcfg.mode})", unit="img") as bar:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for a, label, k, c, png in zip(batch["algorithm"], batch["label"], batch["k"], batch["copy"],
                                           batch["png"], strict=True):
                a, label, k, c = str(a), int(label), int(k), int(c)
                rel = (f"{a}/" if several else "") + f"{safe_name(classes[label])}/{label}_{k}" + (
                    f"_{c}.png" if n_copy > 1 else ".png")
                storage.write_bytes(storage.join(root, rel), png)
                m = meta[(a, label, k)]
                rows.append({"path": rel, "algorithm": a, "label": label, "class_name": classes[label], "k": k,
                             "copy": c, "count": int(m["count"]), "mass": float(m["mass"]),
                             "weight_mass": float(m["mass"]) / n_copy, **fixed,
                             "seed": int(seeds[(a, label, k, c)])})
            bar.update(len(batch["label"]))
    if len(rows) != table.num_rows:
        raise RuntimeError(f"decode: {table.num_rows} images expected, {len(rows)} written")
    manifest = pa.Table.from_pylist(sorted(rows, key=lambda r: (r["algorithm"], r["label"], r["k"], r["copy"])))
    manifest = manifest.set_column(manifest.schema.get_field_index("k"), "k", manifest.column("k").cast(pa.int32()))
    manifest = manifest.set_column(manifest.schema.get_field_index("copy"), "copy",
                                   manifest.column("copy").cast(pa.int32()))
    storage.write_parquet(manifest, storage.join(out, "manifest.parquet"))
    buf = io.BytesIO()
    first = manifest.filter(pc.equal(manifest.column("algorithm"), manifest.column("algorithm")[0]))
    make_grid(first, root).save(buf, format="PNG")
    storage.write_bytes(storage.join(out, "grid.png"), buf.getvalue())
    summary.update({"images": len(rows), "algorithms": sorted({r["algorithm"] for r in rows}), "mode": dcfg.mode,
                    "model": model_ref(cfg), "images_per_centroid": n_copy})


def validate_decode(cfg: RunConfig, model_path: str | None, encode_shape: tuple[int, int, int] | None,
                    classes: list[str] | None) -> list[str]:
    """Check the decode section without loading weights (for ``ddoq-ray validate``); returns notes to print.

    Args:
        model_path: ``decode.model`` resolved (None when not available offline).
        encode_shape: the encode stage's latent ``(C, h, w)``.
        classes: the run's class names when known (for ``class_ids``).
    Raises:
        LatentMismatchError, ValueError: an invalid combination, with a message naming the fields.
        ConfigError: ``sd_img2img`` prompts from bare label numbers (:func:`check_prompt_names`)."""
    d, notes = cfg.decode, []
    check_vae_compat(cfg)
    if d.mode == "vae":
        return [f"decode: vae mode with {cfg.encode.vae!r}"]
    if d.scheduler:
        import diffusers

        if not (d.scheduler.endswith("Scheduler") and hasattr(diffusers, d.scheduler)):
            raise ValueError(f"decode.scheduler={d.scheduler!r} is not a diffusers scheduler class")
    if encode_shape is not None:
        check_model_shape(d.mode, model_path or "", str(d.model), encode_shape)
    notes.append(f"decode: {d.mode} with {d.model!r}: {kept_steps(d.num_inference_steps, d.strength)} of "
                 f"{d.num_inference_steps} steps at strength {d.strength}, guidance {d.guidance_scale}, "
                 f"{d.images_per_centroid} image(s) per centroid, output {d.output_size or 'native'} px")
    if d.mode == "sd_img2img" and classes is not None:
        check_prompt_names(classes, d.allow_numeric_prompts)
    if d.mode == "dit" and classes is not None:
        ids = class_id_map(d.class_ids, classes, cfg.data.class_subset)
        more = " ..." if ids and len(ids) > 10 else ""
        notes.append(f"decode: model class ids {'identity' if ids is None else ids[:10]}{more}")
    elif d.mode == "dit" and isinstance(d.class_ids, list):
        notes.append(f"decode: {len(d.class_ids)} class ids given; class count unknown until the data is present")
    elif d.mode == "dit":
        notes.append("decode: class ids from the data's class names (ImageNet WNIDs -> ImageNet index; else the "
                     "dataset label, data.class_subset[c] with a subset)")
    return notes


def decode_stage(run, out: str, summary: dict) -> None:
    """The registered ``decode`` stage: the quantize stage's centroids of every clustering a decoded method needs
    (:func:`ddoq_ray.artifacts.method_presets.decoded_algorithms`), after checking they were made by this
    decoder's VAE at its shape (:class:`~ddoq_ray.artifacts.latents.LatentMismatchError` otherwise)."""
    from .artifacts.centroids import read_centroids
    from .artifacts.latents import check_meta, read_meta
    from .artifacts.method_presets import decoded_algorithms
    from .rundir import stage_path
    from .vae import latent_shape

    cfg = run.cfg
    check_meta(read_meta(stage_path(run.dir, "encode")), cfg.encode.vae,
               latent_shape(run.vae_path, cfg.encode.vae_kind, cfg.data.image_size))
    quantize_dir = stage_path(run.dir, "quantize")
    centroids = pa.concat_tables([read_centroids(quantize_dir, a) for a in decoded_algorithms(cfg)])
    run_decode(cfg, centroids, run.classes, run.vae_path, out, summary)
