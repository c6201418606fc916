"""Run report: ``report.html`` (one self-contained file, images embedded as base64) and ``report.md`` (PNGs in
``report_files/``), built from a run directory's committed artifacts and ``results.json``.

Contents: per-class image grids (synthetic images ordered by weight with the weight under each, beside real images
of the class and the random-subset images), per-class latent W2 bars (random / uniform / mass), cell-mass
histograms, W2 against IPC on log-log axes when several runs are given, the accuracy table (each method's
clustering, weights and images), the W2 decomposition (clustering x weights, real-image sets), per-stage timings and
counts, config, versions and the sha256 of every output file.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from . import storage

log = logging.getLogger("ddoq_ray")
MAX_CLASSES = 20  # grids/histograms for the first N classes (an ImageNet report stays readable)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _plt().close(fig)
    return buf.getvalue()


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


def _stage(run_dir: str, stage: str) -> str | None:
    """The committed folder of a stage, or None (the report shows what exists)."""
    from .rundir import StageNotCommittedError, stage_path

    try:
        return stage_path(run_dir, stage)
    except StageNotCommittedError:
        return None



def _first_algorithm(quantize_dir: str) -> str | None:
    """The quantize folder's first clustering (None when its tables predate the column or are missing)."""
    from .artifacts.centroids import algorithms

    try:
        return algorithms(quantize_dir)[0]
    except Exception:  # noqa: BLE001 - a partial or pre-issue-14 folder: use every row
        return None


def _real_images(run_dir: str, per_class: int, index=None) -> tuple[dict, dict]:
    """A few real images per class, and the first student seed's random-subset images (the very images those
    students trained on, from the subsets stage), from the run's own config and data.

    ``index``: the run's train :class:`ddoq_ray.index_file.IndexFile` when the caller has it (else the split is
    listed again); only the chosen rows are read from it. Arrow throughout: Python objects for every assignment
    and id held ~500 bytes per train row in the driver.

    Returns ``({label: uint8 [n,H,W,3]}, {label: uint8 [...]})``; empty dicts when the data is not reachable here.
    """
    import pyarrow.compute as pc
    import yaml

    from .artifacts.centroids import read_assignments, read_class_table
    from .artifacts.methods import subset_ids
    from .config import RunConfig
    from .context import Run
    from .data import load_arrays

    try:
        cfg = RunConfig.model_validate(yaml.safe_load(storage.read_text(storage.join(run_dir, "config.yaml"))))
        index = Run(cfg).train_index_file if index is None else index
        q = _stage(run_dir, "quantize")
        labels = sorted({int(r["label"]) for r in read_class_table(q)})[:MAX_CLASSES]
        asg = read_assignments(q, columns=["id", "label"], algorithm=_first_algorithm(q), labels=labels)
        rand_ids = set(subset_ids(run_dir, cfg.quantize.ipc, cfg.train.seeds[0] if cfg.train.seeds else 0))
    except Exception as e:  # noqa: BLE001 - a report must not fail because the data moved
        log.warning("report: real images unavailable (%s)", e)
        return {}, {}
    real_ids = set()
    for c in labels:
        ids_c = asg.filter(pc.equal(asg.column("label"), c)).column("id")
        real_ids.update(pc.take(ids_c, pc.array_sort_indices(ids_c)).slice(0, per_class).to_pylist())

    def pick(chosen: set[str]) -> dict:
        arr = load_arrays(index.rows_with_ids(chosen), cfg.data.image_column, 64)
        return {c: arr["images"][arr["labels"] == c] for c in labels}

    return pick(real_ids), pick(rand_ids)


def class_grid(label: int, name: str, synthetic: list[tuple[Image.Image, float]], real: np.ndarray | None,
               rand: np.ndarray | None) -> bytes:
    """One class: row 1 synthetic images by decreasing weight (weight under each), row 2 real, row 3 random."""
    plt = _plt()
    rows = [("synthetic (weight = cell mass)", [(im, f"{w:.3f}") for im, w in synthetic])]
    if real is not None and len(real):
        rows.append(("real images", [(Image.fromarray(x), "") for x in real]))
    if rand is not None and len(rand):
        rows.append(("random subset (seed 0)", [(Image.fromarray(x), "") for x in rand]))
    ncol = max(len(r[1]) for r in rows)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(1.3 * ncol, 1.55 * len(rows)), squeeze=False)
    for i, (title, items) in enumerate(rows):
        for j in range(ncol):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(items):
                ax.imshow(items[j][0])
                if items[j][1]:
                    ax.set_title(items[j][1], fontsize=8, y=-0.22)
        axes[i][0].text(-0.1, 0.5, title, transform=axes[i][0].transAxes, ha="right", va="center", fontsize=8)
    fig.suptitle(f"{label}: {name}", fontsize=10)
    return _png(fig)


def w2_bars(w2: list[dict], classes: list[str]) -> bytes:
    plt = _plt()
    rows = w2[:MAX_CLASSES]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(rows)), 3.2))
    keys = [("w2_random", "random subset", "#bbbbbb"), ("w2_uniform", "uniform (D4M)", "#4c72b0"),
            ("w2_mass", "cell mass (DDOQ)", "#dd8452")]
    for i, (key, lab, col) in enumerate(keys):
        if all(r.get(key) is not None for r in rows):
            ax.bar(x + (i - 1) * 0.27, [r[key] for r in rows], 0.27, label=lab, color=col)
    ax.set_xticks(x, [classes[r["label"]] if r["label"] < len(classes) else r["label"] for r in rows],
                  rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("latent W2")
    lo = min(r["w2_mass"] for r in rows)
    ax.set_ylim(0.9 * lo, None)
    ax.legend(fontsize=8)
    return _png(fig)


def mass_histograms(cent: list[dict], classes: list[str]) -> bytes:
    plt = _plt()
    labels = sorted({r["label"] for r in cent})[:MAX_CLASSES]
    ncol = min(5, len(labels))
    nrow = -(-len(labels) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.4 * ncol, 1.9 * nrow), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, c in zip(axes.flat, labels, strict=False):
        ax.axis("on")
        m = np.array([r["mass"] for r in cent if r["label"] == c])
        ax.hist(m * len(m), bins=10, color="#dd8452")  # K·mass: 1 = a cell of average size
        ax.axvline(1.0, color="k", lw=0.8, ls="--")
        ax.set_title(f"{classes[c] if c < len(classes) else c} (max/min {m.max() / max(m.min(), 1e-12):.1f})",
                     fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.supxlabel("K × cell mass (1 = uniform)", fontsize=8, y=-0.04)
    return _png(fig)


def w2_series(results: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """Mean latent W2 against IPC from several runs' ``results.json``: one series per clustering x {uniform, mass}
    (``w2_decomposition``) and the random subset (shipped W2); runs without the decomposition give the first
    clustering's ``w2_per_class`` means. Returns ``{label: [(ipc, W2), ...]}``."""
    series: dict[str, list[tuple[int, float]]] = {}
    for r in results:
        dec = r.get("w2_decomposition") or {}
        if dec.get("clusterings"):
            for a, v in dec["clusterings"].items():
                for scheme in ("uniform", "mass"):
                    series.setdefault(f"{a}, {scheme}", []).append((r["ipc"], float(v["mean"][scheme])))
            if "random" in (dec.get("shipped") or {}):
                series.setdefault("random subset", []).append((r["ipc"], float(dec["shipped"]["random"]["mean"])))
        elif r.get("w2_per_class"):
            w2 = r["w2_per_class"]
            series.setdefault("uniform", []).append((r["ipc"], float(np.mean([x["w2_uniform"] for x in w2]))))
            series.setdefault("cell mass", []).append((r["ipc"], float(np.mean([x["w2_mass"] for x in w2]))))
    return series


def w2_vs_ipc(series: dict[str, list[tuple[int, float]]]) -> bytes:
    """Mean latent W2 against IPC, log-log, one line per series of :func:`w2_series` (DDOQ Corollary 1:
    O(K^{-1/d}) consistency); uniform weights dashed, cell-mass weights solid, one colour per clustering."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    colours: dict[str, str] = {}
    for label, pts in series.items():
        pts = sorted(pts)
        base = label.split(",")[0]
        colour = colours.setdefault(base, f"C{len(colours)}")
        style = "o--" if label.endswith("uniform") else "s-"
        ax.loglog([p[0] for p in pts], [p[1] for p in pts], style, color=colour, label=label, markersize=4)
    ax.set_xlabel("IPC (K)")
    ax.set_ylabel("mean latent W2")
    ax.legend(fontsize=7, ncol=2)
    return _png(fig)


def _table(header: list[str], rows: list[list]) -> tuple[str, str]:
    h = "<table><tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in header) + "</tr>"
    h += "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    md = "| " + " | ".join(map(str, header)) + " |\n|" + "---|" * len(header) + "\n"
    md += "".join("| " + " | ".join(map(str, r)) + " |\n" for r in rows)
    return h + "</table>", md


def build_report(run_dir: str | Path, extra_runs: list[str | Path] = (), real_per_class: int = 5,
                 index=None) -> dict:
    """Write ``report.html`` and ``report.md`` (+ ``report_files/*.png``) into ``run_dir``.

    Args:
        run_dir: a run directory (local path or URI) with at least ``results.json`` and the quantize stage.
        extra_runs: more run directories (e.g. other IPCs) for the W2-vs-IPC plot.
        index: the run's train :class:`ddoq_ray.index_file.IndexFile` (``Run.train_index_file``) when the caller
            holds it; else the split is listed again.
    Returns:
        ``{"html": path, "md": path, "figures": [names], "classes": n}``.
    Raises:
        StageNotCommittedError: ``results.json`` is missing (run ``ddoq-ray run`` first).
    """
    from .artifacts.synthetic import read_manifest
    from .results import results_table, w2_table
    from .rundir import StageNotCommittedError

    run_dir = storage.normalize(run_dir)
    res_path = storage.join(run_dir, "results.json")
    if not storage.is_file(res_path):
        raise StageNotCommittedError(f"{res_path} not found: run `ddoq-ray run CONFIG` first")
    res = storage.read_json(res_path)
    classes = res.get("classes") or []
    files_dir = storage.join(run_dir, "report_files")
    figs: list[tuple[str, str, bytes]] = []  # (name, caption, png)

    decode_dir = _stage(run_dir, "decode")
    if decode_dir is not None:
        man = read_manifest(decode_dir).to_pylist()
        man = [r for r in man if r["algorithm"] == man[0]["algorithm"]] if man else man  # the first clustering
        real, rand = _real_images(run_dir, real_per_class, index)
        for c in sorted({r["label"] for r in man})[:MAX_CLASSES]:
            rows = sorted((r for r in man if r["label"] == c), key=lambda r: -r.get("weight_mass", r["mass"]))
            syn = []
            for r in rows:
                png = storage.read_bytes(storage.join(decode_dir, "synthetic", r["path"]))
                with Image.open(io.BytesIO(png)) as im:
                    syn.append((im.convert("RGB"), r.get("weight_mass", r["mass"])))
            name = classes[c] if c < len(classes) else str(c)
            figs.append((f"grid_class_{c}", f"class {c} ({name})", class_grid(c, name, syn, real.get(c), rand.get(c))))
    if res.get("w2_per_class"):
        figs.append(("w2_per_class", "per-class latent W2: random subset vs uniform vs cell-mass weights",
                     w2_bars(res["w2_per_class"], classes)))
        quantize_dir = _stage(run_dir, "quantize")
        if quantize_dir is not None:
            from .artifacts.centroids import read_cell_masses

            cent = read_cell_masses(quantize_dir, _first_algorithm(quantize_dir))
            figs.append(("cell_mass_histograms", "cell masses per class (how unequal the Voronoi cells are)",
                         mass_histograms(cent, classes)))
    series = w2_series([storage.read_json(storage.join(d, "results.json"))
                        for d in [run_dir, *map(storage.normalize, extra_runs)]])
    if any(len({p[0] for p in pts}) > 1 for pts in series.values()):
        figs.append(("w2_vs_ipc", "mean latent W2 against IPC (log-log)", w2_vs_ipc(series)))

    stage_rows = [[s, v.get("wall_s", ""), ", ".join(f"{k}={v[k]}" for k in ("input", "encoded", "skipped",
                                                                                 "classes", "centroids", "images",
                                                                                 "students") if k in v)]
                  for s, v in res.get("stages", {}).items()]
    stage_html, stage_md = _table(["stage", "wall s", "counts"], stage_rows)
    w2 = res.get("w2_per_class") or []
    red = (f"Mean latent W2 reduction of cell-mass over uniform weights: "
           f"{100 * (1 - np.mean([r['w2_mass'] for r in w2]) / np.mean([r['w2_uniform'] for r in w2])):.2f} %"
           if w2 else "")
    matrix_html = matrix_md = ""
    matrix_dir = _stage(run_dir, "matrix")
    if matrix_dir is not None:
        mrows = storage.read_parquet(storage.join(matrix_dir, "matrix.parquet")).to_pylist()
        if mrows:
            matrix_html, matrix_md = _table(list(mrows[0]), [list(r.values()) for r in mrows])
    met_html = met_md = ""
    if res.get("metrics"):
        mm = res["metrics"]
        cols = ["fid_teacher", "precision", "recall", "density", "coverage", "fid_inception"]
        met_html, met_md = _table(["method"] + cols, [[k] + [("—" if v.get(c) is None else f"{v[c]:.4f}")
                                                            for c in cols] for k, v in mm["methods"].items()])
        met_html = f"<p>{html.escape(mm.get('label', ''))}; features: {html.escape(mm['features'])}</p>" + met_html
    skipped = (res.get("stages", {}).get("encode", {}) or {}).get("skipped_rows", [])
    skip_html, skip_md = _table(["id", "label", "reason"], [[r["id"], r["label"], r["error"]] for r in skipped])
    sums = sha256_files(run_dir)
    sum_html, sum_md = _table(["file", "sha256", "bytes"], [list(s) for s in sums])
    cfg_loc = storage.join(run_dir, "config.yaml")
    config = storage.read_text(cfg_loc) if storage.is_file(cfg_loc) else ""
    versions = res.get("versions", {})
    acc_md = results_table(res)
    w2_md = w2_table(res)

    for name, _, png in figs:
        storage.write_bytes(storage.join(files_dir, f"{name}.png"), png)
    title = f"ddoq-ray report: {res.get('name', storage.basename(run_dir))}"
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>Run directory: <code>{html.escape(str(run_dir))}</code>; "
            f"IPC {res.get('ipc')}; {len(classes)} classes.</p>", "<h2>Accuracy and latent W2</h2>",
            _md_table_to_html(acc_md), f"<p>{html.escape(red)}</p>"]
    if w2_md:
        body += ["<h2>Latent W2 by clustering and weights</h2>", _md_table_to_html(w2_md)]
    if matrix_html:
        body += ["<h2>Cross-architecture accuracy</h2>", matrix_html]
    if met_html:
        body += ["<h2>Image-space distribution metrics (vs the real test split)</h2>", met_html]
    body.append("<h2>Figures</h2>")
    for name, cap, png in figs:
        b64 = base64.b64encode(png).decode()
        body.append(f'<figure id="{name}"><img alt="{html.escape(cap)}" src="data:image/png;base64,{b64}">'
                    f"<figcaption>{html.escape(cap)}</figcaption></figure>")
    body += ["<h2>Stages</h2>", stage_html, f"<h2>Skipped inputs ({len(skipped)})</h2>", skip_html,
             "<h2>Config</h2>", f"<pre>{html.escape(config)}</pre>", "<h2>Versions</h2>",
             f"<pre>{html.escape(json.dumps(versions, indent=1))}</pre>",
             f"<h2>Output files ({len(sums)})</h2><details><summary>sha256</summary>{sum_html}</details>"]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}table{border-collapse:"
             "collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}img{max-width:100%}"
             "figure{margin:1em 0}pre{background:#f6f6f6;padding:.5em;overflow:auto;font-size:12px}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
    storage.write_text(storage.join(run_dir, "report.html"), page)
    md = [f"# {title}\n", f"IPC {res.get('ipc')}, {len(classes)} classes.\n", "## Accuracy and latent W2\n", acc_md,
          f"\n{red}\n"]
    if w2_md:
        md += ["## Latent W2 by clustering and weights\n", w2_md]
    if matrix_md:
        md += ["## Cross-architecture accuracy\n", matrix_md]
    if met_md:
        md += ["## Image-space distribution metrics (vs the real test split)\n", met_md]
    md += ["## Figures\n"] + [f"![{cap}](report_files/{name}.png)\n" for name, cap, _ in figs]
    md += ["## Stages\n", stage_md, f"## Skipped inputs ({len(skipped)})\n", skip_md, "## Output files\n", sum_md]
    storage.write_text(storage.join(run_dir, "report.md"), "\n".join(md))
    log.info("report: %s", storage.join(run_dir, "report.html"))
    return {"html": storage.join(run_dir, "report.html"), "md": storage.join(run_dir, "report.md"),
            "figures": [f[0] for f in figs], "classes": len(classes)}


def _md_table_to_html(md: str) -> str:
    lines = [ln.strip().strip("|").split("|") for ln in md.strip().splitlines() if ln.strip()]
    if len(lines) < 2:
        return ""
    header, rows = lines[0], lines[2:]
    return _table([c.strip() for c in header], [[c.strip() for c in r] for r in rows])[0]
