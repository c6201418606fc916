"""``ddoq-ray`` command line: parse, load the config, call the pipeline. No logic lives here."""

from __future__ import annotations

import argparse
import logging
import sys

from .config import STAGES, ConfigError, load_config


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ddoq-ray", description="DDOQ dataset distillation on Ray.")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("config", help="YAML run config (see configs/)")
        sp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set output_dir=runs/x --set train.seeds=[0]")
        sp.add_argument("--force", action="store_true", help="recompute even if the stage is complete")
        return sp

    add("run", "run (or resume) every stage: encode, quantize, decode, train")
    for s in STAGES:
        add(s, f"run only the {s} stage (its inputs must be complete)")
    add("evaluate", "alias of `train`: train students on each distilled set and test them")
    v = sub.add_parser("validate", help="check a config and resolve its assets without loading data or models")
    v.add_argument("config")
    v.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s ddoq-ray %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    try:
        cfg = load_config(args.config, args.overrides)
        if args.command == "validate":
            from .pipeline import Run

            run = Run(cfg)
            print(f"{args.config}: valid; train={run.train_src} vae={run.vae_path} output_dir={run.dir}")
            return 0
        from .pipeline import results_table, run_all

        stages = STAGES if args.command == "run" else ("train",) if args.command == "evaluate" else (args.command,)
        res = run_all(cfg, stages, force=args.force)
    except (ConfigError, FileNotFoundError, ValueError, OSError) as e:
        print(f"ddoq-ray: error: {e}", file=sys.stderr)
        return 2
    print()
    print(results_table(res))
    print(f"\nresults: {res['run_dir']}/results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
