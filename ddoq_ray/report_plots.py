"""Figures of the run report (matplotlib, Agg backend, PNG bytes): per-class image grids, per-class latent W2
bars, cell-mass histograms and mean latent W2 against IPC. Pure functions of the values passed in; the report
(:mod:`ddoq_ray.report`) and the several-IPC summary (:mod:`ddoq_ray.ipcs`) read the run and call these."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

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
