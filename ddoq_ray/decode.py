"""Stage 3, decode: centroids -> synthetic images, as a Ray Data actor pool.

Mode ``vae``: the encode stage's own VAE decoder, ``x_k = D(c_k)`` (DDOQ §3 with no diffusion refinement).

Artifact ``<run>/decode/``:
- ``synthetic/<class name>/<label>_<k>.png``: one image per centroid (ImageFolder layout, usable by any trainer).
- ``manifest.parquet``: ``path`` (relative to ``synthetic/``), ``label`` int64, ``class_name``, ``k`` int32,
  ``count`` int64, ``mass`` float64 (the centroid's cell mass), ``mode``, ``model`` (decoder id).
- ``grid.png``: one row per class (up to 20 classes), centroids ordered by mass, heaviest first.
"""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from .config import RunConfig
from .vae import decode_latents, load_vae

log = logging.getLogger("ddoq_ray")


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


class VAEDecoder:
    """Ray Data callable class: ``{label, k, centroid}`` batch -> ``{label, k, png}``."""

    def __init__(self, vae_path: str, kind: str, precision: str, device: str, output_size: int | None,
                 num_threads: int | None):
        self.vae = load_vae(vae_path, kind, device, precision, num_threads)
        self.output_size = output_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = decode_latents(self.vae, np.stack(batch["centroid"]))
        png = np.array([to_png(im, self.output_size) for im in images], dtype=object)
        return {"label": batch["label"], "k": batch["k"], "png": png}


def make_grid(manifest: pa.Table, root: Path, max_classes: int = 20, cell: int = 64) -> Image.Image:
    """Rows = classes, columns = centroids ordered by mass (heaviest left)."""
    rows = manifest.to_pylist()
    labels = sorted({r["label"] for r in rows})[:max_classes]
    k_max = max(sum(r["label"] == c for r in rows) for c in labels)
    grid = Image.new("RGB", (k_max * cell, len(labels) * cell), "white")
    for i, c in enumerate(labels):
        cls = sorted((r for r in rows if r["label"] == c), key=lambda r: -r["mass"])
        for j, r in enumerate(cls):
            with Image.open(root / r["path"]) as im:
                grid.paste(im.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST), (j * cell, i * cell))
    return grid


def run_decode(cfg: RunConfig, centroids: pa.Table, classes: list[str], vae_path: str, out: Path,
               summary: dict) -> None:
    """Decode every centroid through an actor pool; the driver writes PNGs and the manifest."""
    import ray
    from tqdm.auto import tqdm

    from .runtime import cluster_gpus

    dcfg = cfg.decode
    device = "cuda" if cluster_gpus() and dcfg.num_gpus_per_actor > 0 else "cpu"
    threads = None if device == "cuda" else max(1, round(dcfg.num_cpus_per_actor))
    table = centroids.select(["label", "k", "centroid"])
    ds = ray.data.from_arrow(table).map_batches(
        VAEDecoder,
        fn_constructor_kwargs={"vae_path": vae_path, "kind": cfg.encode.vae_kind, "precision": cfg.encode.precision,
                               "device": device, "output_size": dcfg.output_size, "num_threads": threads},
        compute=ray.data.ActorPoolStrategy(size=dcfg.num_actors), batch_size=dcfg.batch_size, batch_format="numpy",
        num_cpus=dcfg.num_cpus_per_actor, num_gpus=dcfg.num_gpus_per_actor if device == "cuda" else None,
    )
    root = out / "synthetic"
    meta = {(int(r["label"]), int(r["k"])): r for r in centroids.select(["label", "k", "count", "mass"]).to_pylist()}
    rows = []
    with tqdm(total=table.num_rows, desc="decode (centroids)", unit="img") as bar:
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for label, k, png in zip(batch["label"], batch["k"], batch["png"], strict=True):
                label, k = int(label), int(k)
                rel = f"{safe_name(classes[label])}/{label}_{k}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes(png)
                m = meta[(label, k)]
                rows.append({"path": rel, "label": label, "class_name": classes[label], "k": k,
                             "count": int(m["count"]), "mass": float(m["mass"]), "mode": dcfg.mode,
                             "model": cfg.encode.vae})
            bar.update(len(batch["label"]))
    if len(rows) != table.num_rows:
        raise RuntimeError(f"decode: {table.num_rows} centroids in, {len(rows)} images out")
    manifest = pa.Table.from_pylist(sorted(rows, key=lambda r: (r["label"], r["k"])))
    pq.write_table(manifest, out / "manifest.parquet")
    make_grid(manifest, root).save(out / "grid.png")
    summary.update({"images": len(rows), "mode": dcfg.mode})


def load_synthetic(decode_dir: Path, size: int) -> dict[str, np.ndarray]:
    """The decoded set in memory for training: ``images`` uint8 [n,size,size,3], ``labels`` int64, ``mass``."""
    from .data import decode_image

    manifest = pq.read_table(Path(decode_dir) / "manifest.parquet").to_pylist()
    root = Path(decode_dir) / "synthetic"
    images = np.stack([decode_image((root / r["path"]).read_bytes(), size) for r in manifest])
    return {"images": images, "labels": np.array([r["label"] for r in manifest], dtype=np.int64),
            "mass": np.array([r["mass"] for r in manifest], dtype=np.float64),
            "k": np.array([r["k"] for r in manifest], dtype=np.int64)}
