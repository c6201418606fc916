"""Several IPCs in one run (``quantize.ipc: [1, 10, 50]``): one run directory per IPC sharing one encode.

Layout: ``<output_dir>/ipc<K>/`` is a complete run at IPC K (its own quantize, subsets, decode, train, results.json
and report). The first IPC's run computes the IPC-independent stages (``SHARED``: encode, teacher); every other
IPC's run commits them as references to it (:func:`ddoq_ray.rundir.share_stage`), so the images are encoded once.
``<output_dir>/ipcs.json`` collects per IPC the mean latent W2 of every clustering x weight scheme, the shipped W2
of the real-image selections and each method's top-1, and ``<output_dir>/w2_vs_ipc.png`` plots mean latent W2
against IPC (log-log, per clustering x {uniform, mass} and the random subset); every IPC's report shows it too.
"""

from __future__ import annotations

import copy
import logging

from . import storage
from .config import RunConfig, validate_doc
from .errors import ConfigError
from .overrides import read_doc

log = logging.getLogger("ddoq_ray")

SHARED = ("encode", "teacher")  # stages whose fingerprint does not depend on quantize.ipc


def load_configs(path: str, overrides: list[str] | None = None) -> list[RunConfig]:
    """The run configs of a config file: one, or one per IPC when ``quantize.ipc`` is a list.

    Each IPC's config is the document with ``quantize.ipc = K`` and ``output_dir = <output_dir>/ipc<K>``,
    validated on its own, so IPC-dependent protocol presets (``train.protocol``) resolve per IPC.

    Raises:
        ConfigError: as :func:`ddoq_ray.config.load_config`; an IPC list that is empty, repeats a value or holds
            a non-positive or non-integer entry.
    """
    doc = read_doc(path, overrides)
    ipcs = (doc.get("quantize") or {}).get("ipc")
    if not isinstance(ipcs, list):
        return [validate_doc(doc, str(path))]
    if not ipcs or len(set(ipcs)) != len(ipcs) or not all(isinstance(k, int) and k > 0 for k in ipcs):
        raise ConfigError(f"{path}: quantize.ipc: {ipcs!r} must be distinct positive integers, e.g. [1, 10, 50]")
    out = doc.get("output_dir") or RunConfig.model_fields["output_dir"].default
    cfgs = []
    for k in ipcs:
        d = copy.deepcopy(doc)
        d["quantize"]["ipc"] = k
        d["output_dir"] = f"{str(out).rstrip('/')}/ipc{k}"
        cfgs.append(validate_doc(d, f"{path} (quantize.ipc={k})"))
    return cfgs


def run_ipcs(cfgs: list[RunConfig], stages: tuple[str, ...], force: bool = False) -> list[dict]:
    """Run ``stages`` for every IPC's config (:func:`load_configs`), the first one computing the shared stages
    and the others referring to them; then write ``ipcs.json``, the W2-vs-IPC plot and every report with it.

    Returns:
        the ``results.json`` of every IPC, in the configs' order.
    """
    from .pipeline import run_all
    from .rundir import share_stage
    from .stages import fingerprint

    owner = storage.normalize(cfgs[0].output_dir)
    results = []
    for i, cfg in enumerate(cfgs):
        shared: list[str] = []
        if i:
            shared = [s for s in SHARED if share_stage(owner, storage.normalize(cfg.output_dir), s,
                                                       fingerprint(cfg, s))]
            log.info("IPC %d: %s shared from %s", cfg.quantize.ipc, ", ".join(shared) or "nothing", owner)
        log.info("IPC %d of %s: %s", cfg.quantize.ipc, [c.quantize.ipc for c in cfgs], cfg.output_dir)
        own = tuple(s for s in stages if s not in shared)  # --force recomputes a shared stage in its owner only
        results.append(run_all(cfg, own or stages, force=force and bool(own), report=False))
    write_summary(cfgs, results)
    return results


def write_summary(cfgs: list[RunConfig], results: list[dict]) -> dict:
    """``<output_dir>/ipcs.json`` (per IPC: run directory, mean latent W2 per clustering and weight scheme,
    per-method top-1 mean/std) and ``w2_vs_ipc.png``; each IPC's report, written here (not by
    :func:`~ddoq_ray.pipeline.run_all`) with the other IPCs so it shows the plot. Returns the summary."""
    from .report import build_report
    from .report_plots import w2_series, w2_vs_ipc

    parent = storage.normalize(cfgs[0].output_dir).rsplit("/", 1)[0]
    rows = []
    for cfg, res in zip(cfgs, results, strict=True):
        dec = res.get("w2_decomposition") or {}
        rows.append({"ipc": cfg.quantize.ipc, "run_dir": res["run_dir"],
                     "w2": {a: v["mean"] for a, v in (dec.get("clusterings") or {}).items()},
                     "w2_shipped": {m: v["mean"] for m, v in (dec.get("shipped") or {}).items()},
                     "top1": {m: {"mean": v.get("top1_mean"), "std": v.get("top1_std")}
                              for m, v in (res.get("methods") or {}).items()}})
    summary = {"ipcs": [c.quantize.ipc for c in cfgs], "runs": rows}
    storage.write_json(storage.join(parent, "ipcs.json"), summary)
    series = w2_series(results)
    if any(len(pts) > 1 for pts in series.values()):
        storage.write_bytes(storage.join(parent, "w2_vs_ipc.png"), w2_vs_ipc(series))
    dirs = [r["run_dir"] for r in rows]
    for d, res in zip(dirs, results, strict=True):  # each report once, with the W2-vs-IPC plot of all IPCs
        if "quantize" in (res.get("stages") or {}):
            build_report(d, [o for o in dirs if o != d])
    log.info("several IPCs: %s (W2 against IPC: %s)", storage.join(parent, "ipcs.json"),
             storage.join(parent, "w2_vs_ipc.png"))
    return summary
