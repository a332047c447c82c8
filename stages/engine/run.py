"""The run loop: orders and selects stages, skips the ones whose hashes are unchanged, runs the rest each in its
own process, and goes on past a failed stage with the stages that do not need it.

A stage's hash covers its params (dotted keys of the model config), its input files and its own code (the stage
module and every `stages.*` module it imports; stages/engine/lock.py). What each finished stage was built from is
in build/<model>/pipeline.lock.json; when it finished, how long it took and its peak memory are in
reports/<model>/runs.csv.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stages.config import ModelConfig
from stages.core import artifacts
from stages.core.errors import PipelineError
from stages.core.status import Status, is_failed
from stages.engine.graph import (
    PIPELINE_FILE,
    Stage,
    StageContext,
    build_dir,
    load_pipeline,
    makers,
    optional_input,
    report_path,
    reports_dir,
)
from stages.engine.lock import Lock, stage_state, why_stale
from stages.engine.process import in_own_process
from stages.sam.models import weights_tag

log = logging.getLogger(__name__)

RUNS_CSV = "runs.csv"  # reports/<model>/runs.csv: per stage, its last finished run's time, seconds and peak memory


@contextlib.contextmanager
def run_lock(build: Path) -> Iterator[None]:
    """One run per model at a time: a second one fails at once with a clear message."""
    build.mkdir(parents=True, exist_ok=True)
    path = build / ".run.lock"
    with open(path, "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise PipelineError(
                f"another run on {build} is in progress ({holder}); wait for it to finish or stop it first"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}")
        f.flush()
        try:
            yield
        finally:
            f.seek(0)
            f.truncate()
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass
class StageResult:
    stage: str
    status: str  # ran | cached | failed | skipped
    seconds: float = 0.0
    detail: str = ""
    peak_rss_mb: float = float("nan")  # the largest peak resident memory of the stage's process or a worker
    peak_tree_mb: float = float("nan")  # the peak of their sum, sampled every 0.25 s


def provenance(ctx: StageContext) -> dict[str, Any]:
    return {"model": ctx.cfg.name, "weights": ctx.weights, "stage": ctx.stage.name}


def finish_rows(ctx: StageContext, rows: list[dict]) -> list[dict]:
    prov = provenance(ctx)
    return artifacts.with_machine([{**prov, **r} for r in rows])


def _select(stages: list[Stage], targets: list[str] | None, single: bool, path: Path) -> list[Stage]:
    if not targets:
        return [s for s in stages if not s.on_demand]
    by_name = {s.name: s for s in stages}
    for t in targets:
        if t not in by_name:
            raise PipelineError(f"unknown stage {t!r} in {path}; stages: {', '.join(by_name)}")
    if single:
        return [s for s in stages if s.name in targets]
    made_by = makers(stages)
    want = set(targets)
    for s in reversed(stages):
        if s.name in want:
            want.update(made_by[d] for d in s.deps if d in made_by and not by_name[made_by[d]].on_demand)
    return [s for s in stages if s.name in want]


def _check_writable(*folders: Path) -> None:
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".write-test{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise PipelineError(f"cannot write to output folder {folder}: {e.strerror or e}. "
                                f"Pass --root with a writable folder.") from None


def run_pipeline(
    cfg: ModelConfig,
    root: Path,
    pipeline_file: Path | None = None,
    targets: list[str] | None = None,
    single: bool = False,
    force: bool = False,
    options: dict[str, Any] | None = None,
) -> list[StageResult]:
    """Run the stages (targets and what they need, or all) in order; return one result per stage."""
    from stages.sam.models import warn_if_random

    pipeline_file = pipeline_file or PIPELINE_FILE
    all_stages = load_pipeline(pipeline_file, cfg, root)
    stages = _select(all_stages, targets, single, pipeline_file)
    build, reports = build_dir(root, cfg), reports_dir(root, cfg)
    weights = weights_tag(cfg, root)  # a required checkpoint that is missing stops here, before any folder is made
    _check_writable(build, reports)
    results: list[StageResult] = []
    with run_lock(build):
        warn_if_random(cfg, root)
        lock = Lock(build, root)
        failed: set[str] = set()
        try:
            for stage in stages:
                ctx = StageContext(stage, cfg, root, build, reports, weights, dict(options or {}))
                results.append(_run_or_skip(stage, ctx, lock, all_stages, failed, force))
                if results[-1].status in ("failed", "skipped"):
                    failed.add(stage.name)
        finally:
            lock.hashes.save()  # files hashed for stages that were up to date
    return results


def _run_or_skip(stage: Stage, ctx: StageContext, lock: Lock, all_stages: list[Stage], failed: set[str],
                 force: bool) -> StageResult:
    made_by = makers(all_stages)
    upstream_failed = sorted({made_by[d] for d in stage.deps if d in made_by and made_by[d] in failed})
    # a failed stage leaves either fresh outputs or none: run on what it made if all of it is there
    if upstream_failed and any(not d.exists() for d in stage.deps):
        log.error("[%s] skipped: upstream stage %s failed", stage.name, ", ".join(upstream_failed))
        return StageResult(stage.name, "skipped", detail=f"upstream failed: {', '.join(upstream_failed)}")
    missing = [d for d in stage.deps if not d.exists() and not optional_input(d, made_by, all_stages)]
    if missing:
        d = missing[0]
        who = f"it is made by stage {made_by[d]!r}; run that stage first (drop --single)" if d in made_by else \
            "no stage makes it; create it or fix the deps in pipeline.yaml"
        raise PipelineError(f"stage {stage.name!r} needs input {d}, which is missing: {who}")
    state = stage_state(stage, ctx, lock)
    reason = "forced" if force else why_stale(stage, state, lock)
    if reason is None:
        log.info("[%s] up to date, skipped", stage.name)
        return StageResult(stage.name, "cached")
    for d in {o.parent for o in stage.outs}:
        for p in artifacts.remove_partials(d):
            log.info("[%s] removed partial file %s left by an interrupted run", stage.name, p)
    log.info("[%s] running (%s)", stage.name, reason)
    return _run_stage(stage, ctx, state, lock)


def _run_stage(stage: Stage, ctx: StageContext, state: dict, lock: Lock) -> StageResult:
    t0 = time.perf_counter()
    report = report_path(ctx)
    lock.stages.pop(stage.name, None)  # a stage that starts is not finished until it says so
    lock.save()
    kind, rows, tb, peak, tree = in_own_process(stage, ctx)
    memory = {"stage_peak_rss_mb": peak, "stage_peak_tree_mb": tree}
    if kind == "error":
        log.error("[%s] failed: %s%s", stage.name, rows, f"\n{tb}" if tb else "")
        _write_failure_report(ctx, report, rows, memory)
        return StageResult(stage.name, "failed", time.perf_counter() - t0, rows, peak, tree)
    seconds = time.perf_counter() - t0
    rows = finish_rows(ctx, [{**r, **memory} for r in rows])
    artifacts.write_csv(report, rows, first=["model", "weights", "stage"])
    detail = _failure_detail(stage, ctx, rows)
    if detail:
        log.error("[%s] failed: %s", stage.name, detail)
        return StageResult(stage.name, "failed", seconds, detail, peak, tree)
    lock.stages[stage.name] = {**state, "outs": {o: lock.file_hash(lock.resolve(o)) for o in state["outs"]}}
    lock.save()
    record_run(ctx, {"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": round(seconds, 2),
                     "peak_rss_mb": peak, "peak_tree_mb": tree})
    log.info("[%s] done in %.1f s, peak memory %.0f MB (one process), %.0f MB (stage and workers together) -> %s",
             stage.name, seconds, peak, tree, report)
    return StageResult(stage.name, "ran", seconds, peak_rss_mb=peak, peak_tree_mb=tree)


def _failure_detail(stage: Stage, ctx: StageContext, rows: list[dict]) -> str:
    """Why a stage that returned its rows still failed (failed cells, rows below thresholds, outputs not
    made); empty when it did not."""
    bad = [r for r in rows if is_failed(r.get("status", "ok"))]
    below = [r for r in rows if r.get("pass") is False and r.get("gate", True) and r not in bad]
    missing = [o for o in stage.outs if not o.exists()]
    if not (bad or below or missing):
        return ""
    failed_cells = list(dict.fromkeys(f"{r.get('cell', r.get('path', '?'))}: {r['status']}" for r in bad))
    return "; ".join(failed_cells[:3] + ([f"... {len(failed_cells) - 3} more"] if len(failed_cells) > 3 else [])
                     + ([f"{len(below)} rows fail their thresholds (pass=False in {ctx.rel(report_path(ctx))})"]
                        if below else [])
                     + [f"output {o} was not made" for o in missing if not bad])


def _write_failure_report(ctx: StageContext, report: Path, why: str, memory: dict | None = None) -> None:
    """A stage that raised still leaves a report saying so (its artifacts stay as they were)."""
    rows = finish_rows(ctx, [{"cell": c.key, "status": str(Status.failed(why)), **(memory or {})} for c in ctx.cells])
    artifacts.write_csv(report, rows, first=["model", "weights", "stage"])


def read_runs(reports: Path) -> dict[str, dict[str, str]]:
    """reports/<model>/runs.csv by stage: when its last finished run ended, its seconds and peak memory."""
    try:
        with open(reports / RUNS_CSV, newline="") as f:
            return {r["stage"]: r for r in csv.DictReader(f)}
    except (OSError, KeyError, csv.Error):
        return {}


def record_run(ctx: StageContext, timing: dict[str, Any]) -> None:
    """The stage's row of runs.csv, replaced by this run's."""
    runs = read_runs(ctx.reports)
    runs[ctx.stage.name] = {"model": ctx.cfg.name, "stage": ctx.stage.name, **timing}
    artifacts.write_csv(ctx.reports / RUNS_CSV, list(runs.values()), first=["model", "stage"])


def summary_table(results: list[StageResult]) -> str:
    lines = [f"{'stage':<16} {'status':<8} {'seconds':>8} {'peak MB':>8} {'all MB':>8}  detail"]
    for r in results:
        peak, tree = ("" if v != v else f"{v:.0f}" for v in (r.peak_rss_mb, r.peak_tree_mb))
        lines.append(f"{r.stage:<16} {r.status:<8} {r.seconds:>8.1f} {peak:>8} {tree:>8}  {r.detail[:200]}")
    lines.append("peak MB: the largest process of the stage (kernel's maxrss); all MB: the stage and its workers "
                 "summed (sampled)")
    return "\n".join(lines)
