"""The commands that compare runs: `regress` (the regression gate: accuracy vs the committed baseline, latency
A/B against a base git ref), `baseline` (refresh that committed baseline) and `compare` (two runs side by side).

`load(args)` is the CLI's model-config loader (--model, --sweep, --target, --require-checkpoint applied).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stages.core.errors import PipelineError

Load = Callable[[Any], Any]


def _gate_run(args, load: Load):
    """The pipeline as the regression gate runs it: every stage, with the quick sweep unless told otherwise."""
    from stages.engine.run import run_pipeline, summary_table

    args.sweep = args.sweep or "quick"
    cfg = load(args)
    results = run_pipeline(cfg, args.root.resolve(), args.pipeline)
    print("\n" + summary_table(results))
    return cfg, [r for r in results if r.status in ("failed", "skipped")]


def regress(args, load: Load) -> int:
    from stages.tools.compare import BAD, compare_runs, load_regress_config, load_run
    from stages.tools.regress import REPO, Side, prepare_base, resolve_base, uncommitted

    gate = load_regress_config()
    root = args.root.resolve()
    base_ref = resolve_base(REPO, args.base or gate.base)  # a bad ref fails here, before anything runs
    dirty = uncommitted(REPO)
    new = Side("new", REPO, root)
    name = load(args).name
    if (root / "build" / name / "pipeline.lock.json").exists():
        # seed the base worktree with the build as it is now, before this tree's code re-runs stages: the build
        # a base usually shares most stages with
        prepare_base(REPO, base_ref, new, name)
    cfg, failed = _gate_run(args, load)  # the new side: every stage, the tree as it is
    baseline = args.baseline or root / "reports" / "baselines" / cfg.name
    if not (baseline / "parity.csv").exists():
        raise PipelineError(f"no parity baseline at {baseline / 'parity.csv'}: run `make baseline MODEL={cfg.name}` "
                            f"and commit it")
    if failed:
        print(f"stages that did not finish: {', '.join(r.stage for r in failed)}; no A/B timing")
        return 1
    now = root / "reports" / cfg.name
    base_run, new_run = load_run(str(baseline)), load_run(str(now))
    base_run.latency = new_run.latency = None  # committed latencies are history, never a gate
    accuracy = compare_runs(base_run, new_run, gate)
    print(f"\nregression gate: base {base_ref.sha[:12]} ({base_ref.how}); new: this tree"
          + (f" with uncommitted changes in {len(dirty)} file(s) ({', '.join(dirty[:5])}"
             f"{' ...' if len(dirty) > 5 else ''}), compared as it is" if dirty else ""))
    base = prepare_base(REPO, base_ref, new, cfg.name)  # seeds it now if it was not seeded above
    df, ab = _latency_ab(args, cfg, root, new, base, gate, accuracy)
    rounds = (f"{gate.latency.rounds} rounds per side in the order {' '.join(ab.order)}" if ab.order else
              "no round: every cell's timed inputs are the same on both sides")
    header = (f"{cfg.name}: this tree vs base {base_ref.sha[:12]} ({base_ref.how}); latency A/B on "
              f"{ab.machine_class}, {rounds}; accuracy vs {baseline / 'parity.csv'}"
              + (f". The new side has uncommitted changes ({len(dirty)} files), compared as it is" if dirty else ""))
    return _verdict(df, now, header, BAD)


def _latency_ab(args, cfg, root: Path, new, base, gate, accuracy):
    """The latency A/B rounds, then the report stage again: accuracy and latency rows in one table, and the A/B."""
    import pandas as pd

    from stages.config import load_sweep
    from stages.engine.run import run_pipeline
    from stages.tools.ab_stats import ab_rows
    from stages.tools.regress import ab_latency

    model = str(Path(args.model).resolve()) if Path(args.model).suffix in (".yaml", ".yml") else args.model
    sweep = (str(cfg.bench.sweep), load_sweep(cfg.bench.sweep).source)
    ab = ab_latency(new, base, model, sweep, gate.latency, cfg.name)
    run_pipeline(cfg, root, args.pipeline)  # the report stage catches up with the last bench round
    return pd.concat([accuracy, ab_rows(ab.table, gate.latency)], ignore_index=True), ab


def _verdict(df, now: Path, header: str, bad_verdicts) -> int:
    from stages.tools.compare import regression_table, write_comparison

    csv, md = write_comparison(df, now / "regress", header)
    bad = df[df["verdict"].isin(bad_verdicts)]
    print(f"{len(df)} comparisons ({(df['kind'] == 'latency').sum()} latency A/B, {(df['kind'] == 'parity').sum()} "
          f"accuracy); {len(bad)} regressions; {df['verdict'].isin(['better', 'fixed']).sum()} improvements ({md})")
    if len(bad):
        print(regression_table(df))
    return 1 if len(bad) else 0


def baseline(args, load: Load) -> int:
    from stages.core.artifacts import atomic_output, machine
    from stages.tools.cells import merge_baseline
    from stages.tools.compare import compare_runs, load_regress_config, load_run, markdown

    cfg, failed = _gate_run(args, load)
    if failed:
        raise PipelineError(f"not refreshing the baseline: {', '.join(r.stage for r in failed)} did not finish")
    root = args.root.resolve()
    now, dest = root / "reports" / cfg.name, root / "reports" / "baselines" / cfg.name
    if (dest / "parity.csv").exists():
        old, new = load_run(str(dest)), load_run(str(now))
        old.latency = new.latency = None
        df = compare_runs(old, new, load_regress_config())
        changed = df[df["verdict"] != "same"]
        print(markdown(changed, f"{cfg.name}: what the new baseline changes") if len(changed) else "parity unchanged")
    history = dest / "machines" / str(machine()["machine_class"])
    history.mkdir(parents=True, exist_ok=True)
    import pandas as pd

    old_rows = pd.read_csv(dest / "parity.csv") if (dest / "parity.csv").exists() else None
    new_rows = pd.read_csv(now / "parity.csv")
    merged = merge_baseline(old_rows, new_rows)
    with atomic_output(dest / "parity.csv") as tmp:
        merged.to_csv(tmp, index=False)
    kept = len(merged) - len(new_rows)
    if kept:
        print(f"kept {kept} int8 row(s) of the old baseline computed on other int8 kernels than this machine's")
    for name in ("latency.csv", "latency_samples.csv"):
        if (now / name).exists():
            shutil.copy2(now / name, history / name)
    print(f"baseline written: {dest / 'parity.csv'} (the accuracy gate) and {history} (latency history of this "
          f"machine class, never a gate): commit them")
    return 0


def compare(args) -> int:
    from stages.tools.compare import (
        BAD,
        compare_runs,
        load_regress_config,
        load_run,
        machine_classes,
        markdown,
        write_comparison,
    )

    a, b = load_run(args.a), load_run(args.b)
    df = compare_runs(a, b, load_regress_config())
    ca, cb = machine_classes(a), machine_classes(b)
    title = f"{args.a} (a) vs {args.b} (b)"
    if ca and cb and ca != cb:
        title += (f". Different machine classes (a: {', '.join(ca)}; b: {', '.join(cb)}): latency ratios are "
                  f"normalized within each run, and still depend on the machine; no gate uses them")
    csv, md = write_comparison(df, args.out, title)
    print(markdown(df, title))
    print(f"written: {md}, {csv}")
    return 1 if args.fail_on_regression and df["verdict"].isin(BAD).any() else 0
