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
import html
import io
import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image

from . import storage
from .checksums import sha256_files
from .report_plots import MAX_CLASSES, class_grid, mass_histograms, w2_bars, w2_series, w2_vs_ipc

log = logging.getLogger("ddoq_ray")


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
