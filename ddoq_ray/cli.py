"""``ddoq-ray`` command line: parse, load the config, call the pipeline. No logic lives here."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from . import storage
from .errors import DdoqError, UserValueError
from .stages import REGISTRY, STAGES


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ddoq-ray", description="DDOQ dataset distillation on Ray.")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("config", help="YAML run config (see configs/), or a run directory (uses its config.yaml)")
        sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set output_dir=runs/x --set train.seeds=[0]")
        sp.add_argument("--force", action="store_true", help="recompute even if the stage is complete")
        sp.add_argument("--verbose", action="store_true",
                        help="Ray's INFO logs and Ray Data's per-operator progress (default: one line per stage, "
                             "warnings, the results table)")
        sp.add_argument("--json", action="store_true",
                        help="print the main numbers of results.json as one JSON object on stdout (logs: stderr)")
        return sp

    add("run", f"run (or resume) every stage: {', '.join(STAGES)}")
    stage_parsers = {s: add(s, f"run the {s} stage: {REGISTRY[s].doc} (and any stage it reads that is not "
                               "complete)") for s in STAGES}
    stage_parsers["metrics"].add_argument(
        "--features", default=None, metavar="teacher|ARCH:CHECKPOINT",
        help="feature extractor for FID/precision/recall (default: the run's teacher)")
    ev = add("evaluate", "train students on each distilled set and test them (= `train`); with --archs: the "
                         "method x architecture accuracy matrix")
    ev.add_argument("--archs", default=None, metavar="A,B,...",
                    help="student architectures (convnet3, resnet20_cifar, or timm names, e.g. "
                         "resnet18,mobilenetv2_100): writes <run>/train/matrix.parquet")
    add("tune", "Ray Tune sweep over train hyperparameters (config section `tune:`) on the decoded set; runs "
                "encode/quantize/decode first if needed")
    v = sub.add_parser("validate", help="check a config and resolve its assets without loading data or models")
    v.add_argument("config")
    v.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    r = sub.add_parser("report", help="write report.html and report.md for a finished run directory")
    r.add_argument("run_dir")
    r.add_argument("--compare", nargs="*", default=[], metavar="RUN_DIR",
                   help="runs at other IPCs for the W2-vs-IPC plot")
    # Parsed by ddoq_ray.export.main_export (its own --help); listed here so `ddoq-ray --help` shows it.
    sub.add_parser("export", add_help=False,
                   help="RUN [OUT] --format hf|imagefolder|webdataset [--method ddoq|d4m]: write a finished run's "
                        "distilled set (image, label, weight, provenance; dataset card) for other training code")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["export"]:
        return _export(argv[1:])
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s ddoq-ray %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    from .runtime import set_verbose

    set_verbose(getattr(args, "verbose", False))
    try:
        if args.command == "report":
            from .report import build_report

            out = build_report(args.run_dir, args.compare)
            print(f"report: {out['html']} (and {out['md']})")
            return 0
        src = args.config
        if storage.is_dir(src):  # a run directory (local or s3://, gs://): re-use its resolved config
            src = storage.join(src, "config.yaml")
        overrides = list(args.overrides)
        if getattr(args, "features", None):
            overrides.append(f"metrics.features={args.features}")
        from .ipcs import load_configs, run_ipcs

        cfgs = load_configs(src, overrides)
        if args.command == "validate":
            return max(_validate(c, args.config) for c in cfgs)
        if len(cfgs) > 1 and (args.command == "tune" or getattr(args, "archs", None)):
            raise UserValueError(f"{args.config}: quantize.ipc is a list; `ddoq-ray {args.command}` needs one IPC "
                                 "(--set quantize.ipc=10)")
        if len(cfgs) > 1:
            stages = STAGES if args.command == "run" else ("train",) if args.command == "evaluate" else (args.command,)
            all_res = run_ipcs(cfgs, stages, force=args.force)
            return _print_ipcs(all_res, args.json)
        cfg = cfgs[0]
        if args.command == "tune":
            return _tune(cfg)
        if args.command == "evaluate" and args.archs:
            return _matrix(cfg, [a.strip() for a in args.archs.split(",") if a.strip()])
        from .pipeline import results_table, run_all

        stages = STAGES if args.command == "run" else ("train",) if args.command == "evaluate" else (args.command,)
        res = run_all(cfg, stages, force=args.force)
    except DdoqError as e:  # the user can fix it: one clear message; anything else is a bug and shows a traceback
        print(f"ddoq-ray: error: {e}", file=sys.stderr)
        return 2
    report = storage.join(res["run_dir"], "report.html")
    report = report if storage.is_file(report) else None
    if args.json:
        print(json.dumps(main_numbers(res, report)))
        return 0
    print()
    print(results_table(res))
    print(f"\nresults: {storage.join(res['run_dir'], 'results.json')}")
    print(f"report: {report}" if report else "report: not written (see the warnings above)")
    return 0


def _print_ipcs(all_res: list[dict], as_json: bool) -> int:
    """Output of a run with several IPCs: per IPC what a single run prints (``--json``: a list of them)."""
    from .pipeline import results_table

    reports = [storage.join(r["run_dir"], "report.html") for r in all_res]
    reports = [p if storage.is_file(p) else None for p in reports]
    if as_json:
        print(json.dumps([main_numbers(r, p) for r, p in zip(all_res, reports, strict=True)]))
        return 0
    for res, report in zip(all_res, reports, strict=True):
        print(f"\nIPC {res.get('ipc')}:\n")
        print(results_table(res))
        print(f"\nresults: {storage.join(res['run_dir'], 'results.json')}\nreport: {report}")
    parent = storage.normalize(all_res[0]["run_dir"]).rsplit("/", 1)[0]
    print(f"\nall IPCs: {storage.join(parent, 'ipcs.json')}")
    return 0


def main_numbers(res: dict, report: str | None) -> dict:
    """What ``--json`` prints: run name and directory, IPC, classes, the results/report paths, per-method top-1
    (mean, std, per seed) and mean latent W2, the teacher's top-1 and each stage's wall time (s)."""
    from .tracking import summary_metrics

    m = summary_metrics(res)
    methods = {k: {**v, "w2_mean": m.get(f"{k}/w2_mean")} for k, v in (res.get("methods") or {}).items()}
    return {"name": res.get("name"), "run_dir": res["run_dir"], "ipc": res.get("ipc"),
            "classes": len(res.get("classes") or []), "results": storage.join(res["run_dir"], "results.json"),
            "report": report, "methods": methods, "teacher_top1": m.get("teacher/top1"),
            "wall_s": {k: v.get("wall_s") for k, v in (res.get("stages") or {}).items()}}


def _export(argv: list[str]) -> int:
    """``ddoq-ray export``: :func:`ddoq_ray.export.main_export` (prints the result as JSON); a
    :class:`~ddoq_ray.errors.DdoqError` (no decode stage, unknown method) is one line and exit 2."""
    from .export import main_export

    try:
        return main_export(argv)
    except DdoqError as e:
        print(f"ddoq-ray: error: {e}", file=sys.stderr)
        return 2


def _tune(cfg) -> int:
    from .tracking import session
    from .tune import run_tune

    with session(cfg, storage.normalize(cfg.output_dir)):  # Tune trials log to the tracking: backends
        res = run_tune(cfg)
    print()
    print(res["table"])
    best = res["best"]
    print(f"\n{res['trials']} trials ({res['finished']} finished, {res['errors']} errors) in {res['wall_s']:.0f} s; "
          f"validation: {res['validation']}")
    if best:
        test = f", test top-1 {100 * best['test_top1']:.2f} %" if best.get("test_top1") is not None else ""
        print(f"best: {res['best_config']} -> val top-1 {100 * best['val_top1']:.2f} %{test}")
    print(f"results: {res['results']} (best: best.json beside it)")
    return 0


def _matrix(cfg, archs: list[str]) -> int:
    from .evaluate import matrix_markdown
    from .pipeline import Run, run_stage
    from .rundir import stage_path
    from .stages import closure

    run = Run(cfg)
    run.prepare()
    for name in closure(["matrix"])[:-1]:
        run_stage(run, name)
    run_stage(run, "matrix", extra={"archs": archs})
    loc = storage.join(stage_path(run.dir, "matrix"), "matrix.parquet")
    print()
    print(matrix_markdown(storage.read_parquet(loc)))
    print(f"\nmatrix: {loc}")
    return 0


def _where(ref: str, root, kind: str) -> tuple[str | None, str]:
    """Where ``ref`` would be loaded from: ``(resolved or None, description)``; never raises."""

    from .assets import AssetNotFoundError, is_named_teacher, is_uri, resolve

    if kind == "data" and is_named_teacher(ref):
        return None, "library model, pretrained weights from its cache or downloaded on first use"
    try:
        p = resolve(ref, root, kind)
    except AssetNotFoundError as e:
        return None, f"WARNING: NOT FOUND offline/here ({e})"
    if is_uri(p):
        return p, "remote URI"
    return (p, f"local copy at {p}") if Path(p).exists() else (p, "hub id, downloaded on first use")


def _validate(cfg, source: str) -> int:
    """Resolve every stage of ``cfg`` without loading weights or data; print where each asset comes from.

    Missing data or models are warnings (a config for a cluster is valid here); wrong types, ranges, VAE/latent
    mismatches and bad class-id maps raise (exit 2 in :func:`main`).
    """
    from .assets import assets_root
    from .data import load_classes
    from .decode import validate_decode
    from .vae import latent_shape

    root = assets_root(cfg.assets_root)
    refs = [("data.train", cfg.data.train, "data"), ("data.test", cfg.data.test, "data"),
            ("encode.vae", cfg.encode.vae, "model"), ("decode.model", cfg.decode.model, "model"),
            ("train.teacher", cfg.train.teacher, "data")]
    found, where = {}, {}
    print(f"{source}: assets (assets root: {root})")
    for name, ref, kind in refs:
        if ref:
            found[name], where[name] = _where(ref, root, kind)
            print(f"  {name}: {ref} -> {where[name]}")
    size = cfg.data.image_size
    if where.get("encode.vae", "").startswith("local copy"):
        shape = latent_shape(found["encode.vae"], cfg.encode.vae_kind, size)
        how = "from the VAE config"
    else:
        if size % 8:
            raise UserValueError(f"data.image_size={size} is not a multiple of 8 (SD-family VAEs downsample by 8)")
        shape, how = (4, size // 8, size // 8), "assumed: SD-family VAE, f=8, 4 channels"
    print(f"  encode: {size} px -> latents {'x'.join(map(str, shape))} ({how})")
    classes = None
    if isinstance(cfg.data.classes, list) or found.get("data.train"):
        classes = load_classes(cfg.data, found.get("data.train") or "")
        if classes is not None and cfg.data.class_subset is not None:
            classes = [classes[i] for i in cfg.data.class_subset]
    print(f"  classes: {len(classes) if classes else 'unknown until the data is present'}"
          + (f" ({len(cfg.data.class_subset)} kept by data.class_subset)" if cfg.data.class_subset else ""))
    for note in validate_decode(cfg, found.get("decode.model"), shape, classes):
        print(f"  {note}")
    print(f"{source}: valid; output_dir={cfg.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
