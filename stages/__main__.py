"""Command line: `python -m stages run --model vit_t`, `status`, `stages`.

Errors a user can fix print as one paragraph and exit 2; a run with failed stages exits 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from stages.errors import PipelineError

ROOT = Path(__file__).resolve().parent.parent


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="vit_t", help="name under configs/models/ or a path to a model YAML")
    p.add_argument("--root", type=Path, default=ROOT, help="folder for build/ and reports/ (and relative checkpoint paths)")
    p.add_argument("--pipeline", type=Path, default=None, help="pipeline file (default: the repository's pipeline.yaml)")
    p.add_argument("--require-checkpoint", action="store_true", help="fail when the checkpoint is missing")


def _load(args):
    from stages.config import load_model_config

    cfg = load_model_config(args.model)
    if args.require_checkpoint:
        cfg.require_checkpoint = True
    return cfg


def cmd_run(args) -> int:
    from stages.pipeline import run_pipeline, summary_table

    cfg = _load(args)
    results = run_pipeline(cfg, args.root.resolve(), args.pipeline, targets=args.stages, single=args.single,
                           force=args.force)
    print("\n" + summary_table(results))
    failed = [r for r in results if r.status in ("failed", "skipped")]
    if failed:
        print(f"\n{len(failed)} stage(s) did not finish: {', '.join(r.stage for r in failed)}. "
              f"Finished artifacts and report rows are kept; see the logs above and reports/{cfg.name}/.")
        return 1
    return 0


def cmd_status(args) -> int:
    from stages.models import weights_tag
    from stages.pipeline import (
        Lock,
        StageContext,
        build_dir,
        load_pipeline,
        report_path,
        reports_dir,
        stage_state,
        why_stale,
    )

    cfg = _load(args)
    root = args.root.resolve()
    stages = load_pipeline(args.pipeline or ROOT / "pipeline.yaml", cfg, root)
    lock = Lock(build_dir(root, cfg) / "pipeline.lock.json")
    weights = weights_tag(cfg, root)
    for s in stages:
        ctx = StageContext(s, cfg, root, build_dir(root, cfg), reports_dir(root, cfg), weights)
        missing = [d for d in s.deps if not d.exists()]
        if missing:
            print(f"{s.name:<16} needs {missing[0]}")
            continue
        reason = why_stale(s, stage_state(s, ctx, lock, report_path(ctx)), lock)
        print(f"{s.name:<16} {'up to date' if reason is None else 'will run: ' + reason}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the pipeline (stages whose inputs, params or code changed)")
    _model_args(p)
    p.add_argument("stages", nargs="*", help="stages to run, with what they need (default: all)")
    p.add_argument("--single", action="store_true", help="run only the named stages, not their upstream")
    p.add_argument("--force", action="store_true", help="re-run even when up to date")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("status", help="which stages are up to date and why the others would run")
    _model_args(p)
    p.set_defaults(func=cmd_status)
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        return args.func(args)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished stages are kept; the next run resumes at the interrupted stage", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
